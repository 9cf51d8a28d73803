"""Comparing tensors: the student's frozen tensors against the frozen copy, and two state dicts
(the stage-2 file's frozen CLIP and teacher head against a --stage1 file), within a tolerance."""
from __future__ import annotations

import re

import torch

from dgsnet.convert.lora import QKV, LoRALayout
from dgsnet.convert.read import FROZEN, STUDENT

REL_TOL = 1e-5  # "equal" for weights: within this fraction of the weight magnitude (float32 round-off drifts)


def frozen_counterpart(student_key: str, frozen: dict[str, torch.Tensor], width: int) -> tuple[str, torch.Tensor]:
    """(name, tensor) of the frozen copy that a student tensor must equal (q/k/v: the packed slice)."""
    m = re.match(r"(visual\.transformer\.resblocks\.\d+\.attn\.)(q|k|v)_proj\.(weight|bias)$", student_key)
    if m:
        prefix, t, kind = m.groups()
        i = QKV.index(t)
        name = f"{prefix}in_proj_{kind}"
        return f"{name}[{i * width}:{(i + 1) * width}]", frozen[name][i * width:(i + 1) * width]
    m = re.match(r"(visual\.transformer\.resblocks\.\d+\.attn\.)proj\.(weight|bias)$", student_key)
    if m:
        name = f"{m.group(1)}out_proj.{m.group(2)}"
        return name, frozen[name]
    return student_key, frozen[student_key]


def tolerance(*tensors: torch.Tensor) -> float:
    """What counts as equal for weights of this magnitude (float round-off of repeated merge/unmerge)."""
    rel = max(REL_TOL, 16 * max(torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0 for t in tensors))
    return rel * max((float(t.detach().double().abs().max()) if t.numel() else 0.0) for t in tensors)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def verify_frozen(student: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor], lora: LoRALayout,
                  width: int) -> list[dict]:
    """Student tensors that should equal the frozen copy but do not: [{name, frozen, max_abs_diff}]."""
    mismatches = []
    for key in sorted(student):
        if key.endswith(("w_lora_A", "w_lora_B")):
            continue
        m = re.match(r"visual\.transformer\.resblocks\.(\d+)\.attn\.(q|k|v)_proj\.weight$", key)
        if m and int(m.group(1)) in lora.blocks and m.group(2) in lora.targets:
            continue  # LoRA weights: checked by detect_merge (W0, or W0 + scale B A)
        ref_name, ref = frozen_counterpart(key, frozen, width)
        got = student[key]
        diff = max_abs_diff(got, ref) if got.shape == ref.shape else float("inf")
        if not diff <= tolerance(got, ref):
            mismatches.append({"name": STUDENT + key, "frozen": FROZEN + ref_name, "max_abs_diff": diff})
    return mismatches


def compare_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], a_name: str, b_name: str) -> list[dict]:
    """Differences between two state dicts of the same layout, by name."""
    out = [{"name": k, "problem": f"only in {a_name}"} for k in sorted(set(a) - set(b))]
    out += [{"name": k, "problem": f"only in {b_name}"} for k in sorted(set(b) - set(a))]
    for k in sorted(set(a) & set(b)):
        if a[k].shape != b[k].shape:
            out.append({"name": k, "problem": f"shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"})
        else:
            diff = max_abs_diff(a[k], b[k])
            if not diff <= tolerance(a[k], b[k]):
                out.append({"name": k, "problem": "values differ", "max_abs_diff": diff})
    return out
