"""Resume state of a training run: RUN/resume/ holds the model, optimiser, scheduler, RNG streams and
the data position of the last checkpoint, written as a whole (a staging folder swapped in by renames),
so a run cut at any moment continues bit-identically with --resume.
"""
from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import save

from dgsnet.fileio import atomic_write, read_json, read_tensors
from dgsnet.models.checkpoint import RESUME_DIR, contiguous_tensors, read_metadata, read_model_tensors, write_model

def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return rng


def write_resume(run_dir: str, model, optimizer, scheduler, stage: int, config: dict,
                 position: dict, rng: dict[str, torch.Tensor] | None = None,
                 extra: dict[str, torch.Tensor] | None = None,
                 model_state: dict[str, torch.Tensor] | None = None,
                 optimizer_state: dict | None = None, validation: dict | None = None) -> None:
    """Writes resume/ as a whole: into a temporary directory, then swapped in by renames.

    model_state / optimizer_state replace the model's and optimizer's own state
    dicts (a sharded run passes full tensors gathered from every rank); `validation` is the
    best-checkpoint tracker's state (dgsnet.train.validation), kept in state.json."""
    final = os.path.join(run_dir, RESUME_DIR)
    tmp, old = final + ".tmp", final + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_model(tmp, model, stage, config, position["step"], state=model_state)
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state or optimizer.state_dict())
        rng = rng if rng is not None else rng_state()
        atomic_write(os.path.join(tmp, "optimizer.safetensors"), save(contiguous_tensors({
            **opt_tensors, **{f"rng.{k}": v for k, v in rng.items()},
            **{f"extra.{k}": v for k, v in (extra or {}).items()}})))
        state = {"stage": stage, "position": position, "optimizer": opt_meta,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None}
        if validation is not None:
            state["validation"] = validation
        atomic_write(os.path.join(tmp, "state.json"), json.dumps(state, indent=2, default=float))
    except BaseException:  # cut short (Ctrl-C, a full disk): resume/ still holds the last whole state
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_resume(run_dir: str) -> str | None:
    """The newest complete resume state (resume/, or resume.old if a swap was interrupted)."""
    for name in (RESUME_DIR, RESUME_DIR + ".old"):
        path = os.path.join(run_dir, name)
        if os.path.isfile(os.path.join(path, "state.json")):
            return path
    return None


def remove_resume(run_dir: str) -> None:
    """Drops the resume state once the finished model is written (it is superseded)."""
    for name in (RESUME_DIR, RESUME_DIR + ".old", RESUME_DIR + ".tmp"):
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def read_resume(path: str) -> tuple[dict, dict[str, torch.Tensor], dict, dict, dict[str, torch.Tensor]]:
    """(metadata, model tensors, optimizer state dict, training state, extra tensors) of a resume dir."""
    meta = read_metadata(path)
    state = read_json(os.path.join(path, "state.json"), "the training state of a resume checkpoint")
    for key in ("stage", "position", "optimizer", "scheduler"):
        if key not in state:
            raise ValueError(f"{os.path.join(path, 'state.json')}: no {key!r}; the resume state is damaged: "
                             "delete the resume/ folder to start over, or restore it")
    blob = read_tensors(os.path.join(path, "optimizer.safetensors"))
    rng = {k[4:]: v for k, v in blob.items() if k.startswith("rng.")}
    extra = {k[6:]: v for k, v in blob.items() if k.startswith("extra.")}
    opt = _unflatten_optimizer({k: v for k, v in blob.items() if not k.startswith(("rng.", "extra."))},
                               state["optimizer"])
    state["rng"] = rng
    return meta, read_model_tensors(path), opt, state, extra


def restore_rng(rng: dict[str, torch.Tensor], rank: int = 0) -> None:
    """Restores this rank's RNG (a multi-process checkpoint keys them `<name>.rank<r>`)."""
    suffix = f".rank{rank}"
    if any(k.endswith(suffix) for k in rng):
        rng = {k[:-len(suffix)]: v for k, v in rng.items() if k.endswith(suffix)}
    elif any(".rank" in k for k in rng):
        raise ValueError(f"the checkpoint has no RNG state for rank {rank}: it was written by fewer "
                         "processes; resume with the same --nproc-per-node")
    torch.set_rng_state(rng["torch_cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
