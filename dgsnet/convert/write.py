"""The run directory of a converted checkpoint, written whole or not at all (into <out>.tmp, renamed
at the end), that `dgsnet.models.checkpoint.load_model` reads:

  backbone.json          the open_clip model config inferred from the shapes (QuickGELU)
  backbone.safetensors   the CLIP weights in OpenAI / open_clip naming (packed in_proj), float32
  model.safetensors      LoRA tensors + student/teacher/text heads
  model.json             metadata, with "converted_from" (source, sha256, merged, mismatches)
"""
from __future__ import annotations

import json
import os
import shutil

import torch

from dgsnet.convert.architecture import Architecture


def published_config(lora_cfg: dict, stage: int, source: str) -> dict:
    """The training config recorded for a converted run: what the published code trains with."""
    return {
        "converted_from": os.path.basename(source), "source_code": "HorizonTEL/DGS-Net",
        "norm": "imagenet", "model": "backbone.json", "pretrained": "backbone.safetensors",
        "activation": "quick_gelu", "init_seed": 0,
        "lora_rank": lora_cfg["rank"], "lora_alpha": lora_cfg["alpha"], "lora_scaling": lora_cfg["scaling"],
        "lora_dropout": lora_cfg["dropout"], "lora_dropout_masks": lora_cfg["dropout_masks"],
        "lora_targets": list(lora_cfg["targets"]),
        "lora_blocks": lora_cfg["blocks"] if lora_cfg["blocks"] == "all" else
        ",".join(str(b) for b in lora_cfg["blocks"]),
        "batch_size": 32, "lr": 1e-4, "betas": [0.9, 0.999], "variant": "published", "stage": stage,
    }


def prepare_out(out: str) -> tuple[str, str]:
    """(out, out.tmp) as absolute paths; an error if out is taken or out.tmp is left over."""
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"--out {out} exists and is not an empty directory; choose a new run directory")
    tmp = out + ".tmp"
    if os.path.exists(tmp):
        raise FileExistsError(f"{tmp} exists (left by an interrupted conversion?); remove it and run again")
    return out, tmp


def write_run(out: str, clip_state: dict[str, torch.Tensor], arch: Architecture, lora_cfg, stage: int,
              trained: dict[str, torch.Tensor], converted_from: dict, source: str) -> None:
    """backbone.json + backbone.safetensors + model.safetensors + model.json, into out.tmp, renamed at the end."""
    from safetensors.torch import save

    from dgsnet.fileio import atomic_write
    from dgsnet.models import BackboneSpec, DGSNetModel
    from dgsnet.models.checkpoint import META_FILE, load_model, write_model

    out, tmp = prepare_out(out)
    os.makedirs(tmp)
    try:
        atomic_write(os.path.join(tmp, "backbone.json"), json.dumps(arch.model_config(), indent=2))
        weights = {k: v.detach().to(torch.float32).contiguous() for k, v in clip_state.items()}
        atomic_write(os.path.join(tmp, "backbone.safetensors"), save(weights))
        del weights
        spec = BackboneSpec(model=os.path.join(tmp, "backbone.json"),
                            pretrained=os.path.join(tmp, "backbone.safetensors"), activation="quick_gelu")
        model = DGSNetModel(spec, lora_cfg)
        model.load_trained_state_dict(trained, only=tuple({k.split(".")[0] + "." for k in trained}), source=source)
        config = published_config(lora_cfg.to_dict(), stage, source)
        write_model(tmp, model, stage=stage, config=config, step=0)
        del model
        meta_path = os.path.join(tmp, META_FILE)
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
        meta["backbone"]["model"], meta["backbone"]["pretrained"] = "backbone.json", "backbone.safetensors"
        meta["converted_from"] = converted_from
        atomic_write(meta_path, json.dumps(meta, indent=2))
        load_model(tmp)  # the run directory loads (strictly) as `dgsnet eval/export/predict` will load it
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
