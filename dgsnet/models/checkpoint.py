"""Finished-run files: safetensors + a JSON sidecar, written atomically; strict, explained loading.

A run directory holds
  model.safetensors + model.json     the finished stage (LoRA tensors and heads): what eval, predict,
                                     export and a stage-2 run's --teacher read (`load_model`)
  resume/                            the latest resumable state (dgsnet.train.resume)
No pickles anywhere: checkpoints from strangers are safe to open.
"""
from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import save

from dgsnet.fileio import atomic_write, read_json, read_tensors
from dgsnet.version import __version__

MODEL_FILE, META_FILE, RESUME_DIR = "model.safetensors", "model.json", "resume"
FORMAT = "dgsnet-checkpoint/1"


def model_metadata(model, stage: int, config: dict, step: int) -> dict:
    return {
        "format": FORMAT,
        "dgsnet_version": __version__,
        "stage": stage,
        "step": step,
        "backbone": {**model.spec.to_dict(), "resolved_activation": model.activation,
                     "visual_fingerprint": model.visual_fingerprint,
                     "text_fingerprint": model.text_fingerprint, "embed_dim": model.dim},
        "lora": model.lora_config.to_dict(),
        "heads": ["student_head", "teacher_head", "text_head"],
        "norm": config.get("norm", "imagenet"),
        "config": config,
    }


def contiguous_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def write_model(directory: str, model, stage: int, config: dict, step: int,
                state: dict[str, torch.Tensor] | None = None, extra: dict | None = None) -> None:
    """`state` replaces model.trained_state_dict() (a sharded model passes its gathered tensors);
    `extra` adds keys to model.json (a best checkpoint's validation result)."""
    os.makedirs(directory, exist_ok=True)
    state = state if state is not None else model.trained_state_dict()
    atomic_write(os.path.join(directory, MODEL_FILE), save(contiguous_tensors(state)))
    meta = {**model_metadata(model, stage, config, step), **(extra or {})}
    atomic_write(os.path.join(directory, META_FILE), json.dumps(meta, indent=2, default=float))


def replace_folder(staged: str, final: str) -> None:
    """Swaps a fully written `staged` folder in for `final` by renames: a reader finds the old
    folder, or `final`.old during the swap, never a half-written one."""
    old = final + ".old"
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def read_metadata(directory: str) -> dict:
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        hint = " (this looks like a run that has not finished; use --resume)" if os.path.isdir(
            os.path.join(directory, RESUME_DIR)) else ""
        raise FileNotFoundError(f"{path} not found: {directory} is not a dgsnet checkpoint directory{hint}")
    meta = read_json(path, "the metadata of a dgsnet checkpoint")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}; "
                         "re-export it with this dgsnet version")
    _check_schema(meta, path)
    return meta


# key -> the types a finished model.json must hold there (nested keys as "a.b")
_SCHEMA = {"stage": (int,), "step": (int,), "backbone": (dict,), "backbone.model": (str,),
           "backbone.pretrained": (str, type(None)), "backbone.init_seed": (int,), "lora": (dict,),
           "lora.rank": (int,), "config": (dict,)}


def _check_schema(meta: dict, path: str) -> None:
    for key, types in _SCHEMA.items():
        value, where = meta, key.split(".")
        for part in where:
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING or isinstance(value, bool) or not isinstance(value, types):
            got = "missing" if value is _MISSING else f"{type(value).__name__} {value!r:.40}"
            raise ValueError(f"{path}: {key} is {got}, expected {' or '.join(t.__name__ for t in types)}; "
                             "the file is damaged or not from dgsnet (re-train or re-convert the run)")
    if meta["stage"] not in (1, 2):
        raise ValueError(f"{path}: stage {meta['stage']} is not 1 or 2; the file is damaged")


_MISSING = object()


def read_model_tensors(directory: str) -> dict[str, torch.Tensor]:
    path = os.path.join(directory, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found next to {META_FILE}; the checkpoint is incomplete")
    return read_tensors(path)


def check_backbone(meta: dict, model, source: str) -> None:
    """Refuses weights trained on another backbone, with what differs and the fix."""
    got = {**meta["backbone"], "resolved_activation": recorded_activation(meta["backbone"])}
    if os.path.isdir(source):  # a converted run records its backbone files relative to itself
        got["model"], got["pretrained"] = _in_run(source, got["model"]), _in_run(source, got.get("pretrained"))
    want = {**model.spec.to_dict(), "visual_fingerprint": model.visual_fingerprint,
            "resolved_activation": model.activation}
    diffs = [f"{k}: checkpoint {got.get(k)!r} vs this run {want[k]!r}"
             for k in ("model", "pretrained", "visual_fingerprint", "resolved_activation")
             if got.get(k) is not None and got.get(k) != want[k]]
    if diffs:
        raise ValueError(f"{source} was trained on another backbone ({'; '.join(diffs)}). "
                         f"Use a checkpoint trained with --model {model.spec.model} --pretrained "
                         f"{model.spec.pretrained or 'none'}, or train one with `dgsnet train-teacher`.")


# -- resumable training state ---------------------------------------------------------------

def recorded_activation(backbone: dict) -> str | None:
    """The activation a run's backbone ran (None: a file from before it was recorded)."""
    return backbone.get("resolved_activation")


def _in_run(run_dir: str, value: str | None) -> str | None:
    """A backbone file recorded relative to its run directory (converted runs) resolves against it."""
    if value and not os.path.isabs(value) and os.path.isfile(os.path.join(run_dir, value)):
        return os.path.join(run_dir, value)
    return value


def backbone_spec(meta: dict, run_dir: str, trusted_weights: str | None = None):
    """The BackboneSpec a checkpoint was trained with (files older than `activation` mean `config`).

    A checkpoint's paths are data, not instructions: a weights file it names is used only inside
    its run directory (converted runs), or when the user names the same file (`trusted_weights`,
    the --pretrained flag of eval / predict / export). open_clip tags are used as they are."""
    from dgsnet.models import BackboneSpec
    from dgsnet.models.backbone import is_weights_file

    bb = meta["backbone"]
    pretrained = _in_run(run_dir, bb["pretrained"])
    if is_weights_file(pretrained) and not _inside(run_dir, pretrained):
        if trusted_weights is None or not os.path.exists(trusted_weights) or \
                os.path.realpath(trusted_weights) != os.path.realpath(pretrained):
            raise ValueError(f"{os.path.join(run_dir, META_FILE)} names the backbone weights file {pretrained}, "
                             "outside the run directory; a checkpoint's paths are not followed on their own: "
                             f"pass --pretrained {pretrained} to confirm that file")
    return BackboneSpec(model=_in_run(run_dir, bb["model"]), pretrained=pretrained,
                        init_seed=bb["init_seed"], activation=bb.get("activation", "config"))


def _inside(folder: str, path: str) -> bool:
    folder, path = os.path.realpath(folder), os.path.realpath(path)
    return os.path.commonpath([folder, path]) == folder


def load_model(run_dir: str, device: str | torch.device = "cpu", trusted_weights: str | None = None):
    """(DGSNetModel, metadata) of a finished run directory, checked against its recorded backbone.
    `trusted_weights`: the user's confirmation of a weights file outside the run (see backbone_spec)."""
    from dgsnet.models import DGSNetModel, LoRAConfig

    meta = read_metadata(run_dir)
    spec = backbone_spec(meta, run_dir, trusted_weights)
    meta["backbone"] = {**meta["backbone"], "model": spec.model, "pretrained": spec.pretrained}
    model = DGSNetModel(spec, LoRAConfig.from_metadata(meta["lora"]))
    check_backbone(meta, model, run_dir)
    model.load_trained_state_dict(read_model_tensors(run_dir), source=run_dir)
    return model.to(device).eval(), meta
