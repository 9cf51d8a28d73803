"""Reading a published checkpoint, and telling its layout (stage 1 or stage 2) from its keys.

The published code (HorizonTEL/DGS-Net) saves `torch.save(model.state_dict())`
of its `CLIPModel`, in OpenAI-CLIP naming:

  clip_model.*                          the student CLIP; in its image tower every LoRA block
                                        has separate attn.{q,k,v}_proj.{weight,bias} (the
                                        slices of OpenAI's packed in_proj), LoRA tensors
                                        attn.{q,k,v}_proj.w_lora_{A,B} and attn.proj (= out_proj)
  clip_model_frozen.clip_model_frozen.* the pretrained CLIP, untouched (packed in_proj)
  clip_model_frozen.img_frozen_fc.*     the stage-1 teacher head
  img_fc.*, text_fc.*                   the student and text heads

and the stage-1 file holds clip_model_frozen.* + img_frozen_fc.*.

Nothing here runs code from the file: it is read with torch.load(weights_only=True).
"""
from __future__ import annotations

import os

import torch

from dgsnet.fileio import read_torch_state_dict, sha256_file

STUDENT = "clip_model."
FROZEN = "clip_model_frozen.clip_model_frozen."
TEACHER2 = "clip_model_frozen.img_frozen_fc."
STAGE1_CLIP = "clip_model_frozen."
STAGE1_HEAD = "img_frozen_fc."
HEAD_PARAMS = ("weight", "bias")

STAGE2_LAYOUT = ("the published stage-2 layout (model_epoch_step2.pth): clip_model.* (student CLIP with "
                 "LoRA q/k/v_proj), clip_model_frozen.clip_model_frozen.* (pretrained CLIP), "
                 "clip_model_frozen.img_frozen_fc.*, img_fc.*, text_fc.*")
STAGE1_LAYOUT = ("the published stage-1 layout (model_epoch_step1.pth): clip_model_frozen.* (pretrained "
                 "CLIP) and img_frozen_fc.*")


sha256_of = sha256_file  # the converters' name for it


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The flat state dict of a published file ({"state_dict": ...} and "module." prefixes undone)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    state = read_torch_state_dict(path, "the .pth file the published code saved")
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:5]}; expected a flat model state dict")
    return state


def with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def first_keys(keys, n: int = 5) -> str:
    """The first n keys (sorted) for an error message, and how many there are in all."""
    keys = sorted(keys)
    return f"{keys[:n]}{' ... (%d in all)' % len(keys) if len(keys) > n else ''}"


def detect_layout(state: dict[str, torch.Tensor], source: str) -> str:
    """'stage2' or 'stage1' from the keys; any other file is an error naming what is missing."""
    keys = set(state)
    stage2_marks = [STUDENT + "visual.conv1.weight", FROZEN + "visual.conv1.weight", TEACHER2 + "weight",
                    "img_fc.weight", "text_fc.weight"]
    stage1_marks = [STAGE1_CLIP + "visual.conv1.weight", STAGE1_HEAD + "weight"]
    if all(k in keys for k in stage2_marks):
        return "stage2"
    if all(k in keys for k in stage1_marks) and not any(k.startswith((STUDENT, "img_fc.")) for k in keys):
        return "stage1"
    looks_stage1 = (any(k.startswith(STAGE1_HEAD) for k in keys)
                    and not any(k.startswith((STUDENT, "img_fc.", "text_fc.", FROZEN)) for k in keys))
    marks, layout = (stage1_marks, STAGE1_LAYOUT) if looks_stage1 else (stage2_marks, STAGE2_LAYOUT)
    prefixes = ((STAGE1_CLIP, STAGE1_HEAD) if looks_stage1 else
                (STUDENT, "clip_model_frozen.", "img_fc.", "text_fc."))
    missing = [k for k in marks if k not in keys]
    unexpected = [k for k in keys if not k.startswith(prefixes)]
    raise ValueError(f"{source} is not a published DGS-Net checkpoint: missing keys {first_keys(missing)}, "
                     f"unexpected keys {first_keys(unexpected)}; expected {layout}")


def read_head(state: dict[str, torch.Tensor], prefix: str, dim: int, source: str) -> dict[str, torch.Tensor]:
    """The one-logit linear head stored under `prefix` ({"weight", "bias"}), its shape checked."""
    head = {p: state[prefix + p] for p in HEAD_PARAMS}
    if tuple(head["weight"].shape) != (1, dim) or tuple(head["bias"].shape) != (1,):
        raise ValueError(f"{source}: {prefix}weight is {tuple(head['weight'].shape)}, expected (1, {dim}): "
                         "dgsnet heads give one logit (the published num_classes=1)")
    return head
