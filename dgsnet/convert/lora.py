"""The student's LoRA in the published layout: rank, targets and blocks, the keys it adds, and
packing it back into open_clip naming (q/k/v_proj -> in_proj, proj -> out_proj, A/B -> dgsnet's)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dgsnet.convert.architecture import BLOCK, Architecture, block_indices
from dgsnet.convert.read import STAGE2_LAYOUT

QKV = ("q", "k", "v")
PUBLISHED_ALPHA = 6.0


@dataclass
class LoRALayout:
    rank: int
    targets: tuple[str, ...]
    blocks: list[int]  # image blocks with LoRA
    split_blocks: list[int]  # image blocks whose attention the published code replaced (q/k/v_proj keys)

    def config_blocks(self, layers: int) -> list[int] | str:
        return "all" if self.blocks == list(range(layers)) else list(self.blocks)


def lora_layout(student: dict[str, torch.Tensor], arch: Architecture, source: str) -> LoRALayout:
    """Rank, targets and blocks of the student's LoRA, read from its keys and A's shape."""
    split = block_indices([k for k in student if re.search(r"\.attn\.[qkv]_proj\.weight$", k)], BLOCK)
    per_block: dict[int, tuple[str, ...]] = {}
    ranks = set()
    for i in split:
        targets = tuple(t for t in QKV if f"{BLOCK}{i}.attn.{t}_proj.w_lora_A" in student)
        if targets:
            per_block[i] = targets
            ranks.update(student[f"{BLOCK}{i}.attn.{t}_proj.w_lora_A"].shape[0] for t in targets)
    if not per_block:
        raise ValueError(f"{source}: no LoRA tensors (clip_model.{BLOCK}N.attn.q_proj.w_lora_A ...) in the "
                         f"student; expected {STAGE2_LAYOUT}")
    if len(set(per_block.values())) > 1:
        raise ValueError(f"{source}: LoRA targets differ between blocks ({per_block}); dgsnet needs one "
                         "set of q/k/v targets for all LoRA blocks")
    if len(ranks) != 1:
        raise ValueError(f"{source}: LoRA ranks differ between layers ({sorted(ranks)})")
    return LoRALayout(rank=ranks.pop(), targets=next(iter(per_block.values())), blocks=sorted(per_block),
                      split_blocks=split)


def expected_student_shapes(clip_shapes: dict[str, tuple], arch: Architecture,
                            lora: LoRALayout) -> dict[str, tuple]:
    """The published student's keys: the CLIP's, with the split attention of the LoRA blocks."""
    d, r = arch.vision_width, lora.rank
    shapes = dict(clip_shapes)
    for i in lora.split_blocks:
        p = f"{BLOCK}{i}.attn."
        for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            shapes.pop(p + k)
        for t in QKV:
            shapes[f"{p}{t}_proj.weight"], shapes[f"{p}{t}_proj.bias"] = (d, d), (d,)
        shapes[p + "proj.weight"], shapes[p + "proj.bias"] = (d, d), (d,)
        if i in lora.blocks:
            for t in lora.targets:
                shapes[f"{p}{t}_proj.w_lora_A"], shapes[f"{p}{t}_proj.w_lora_B"] = (r, d), (d, r)
    return shapes


def packed_clip(student: dict[str, torch.Tensor], lora: LoRALayout) -> dict[str, torch.Tensor]:
    """The student CLIP in OpenAI naming: q/k/v_proj concatenated back into in_proj, proj -> out_proj."""
    out = {k: v for k, v in student.items()
           if not re.search(r"\.attn\.((q|k|v)_proj\.(weight|bias|w_lora_[AB])|proj\.(weight|bias))$", k)}
    for i in lora.split_blocks:
        p = f"{BLOCK}{i}.attn."
        out[p + "in_proj_weight"] = torch.cat([student[f"{p}{t}_proj.weight"] for t in QKV], dim=0)
        out[p + "in_proj_bias"] = torch.cat([student[f"{p}{t}_proj.bias"] for t in QKV], dim=0)
        out[p + "out_proj.weight"], out[p + "out_proj.bias"] = student[p + "proj.weight"], student[p + "proj.bias"]
    return out


def lora_tensors(student: dict[str, torch.Tensor], lora: LoRALayout) -> dict[str, torch.Tensor]:
    """The LoRA tensors in dgsnet's trained_state_dict naming (visual...attn.{q,k,v}_{A,B})."""
    out = {}
    for i in lora.blocks:
        p = f"{BLOCK}{i}.attn."
        for t in lora.targets:
            out[f"{p}{t}_A"] = student[f"{p}{t}_proj.w_lora_A"]
            out[f"{p}{t}_B"] = student[f"{p}{t}_proj.w_lora_B"]
    return out
