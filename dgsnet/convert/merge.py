"""Whether a file's q/k/v weights already hold the LoRA update.

The published model's eval() adds scale * B A into the q/k/v weights in place
(train() takes it out again); the final save follows an eval(), so a file may
hold merged weights. This module tells which from the frozen copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dgsnet.convert.architecture import BLOCK
from dgsnet.convert.lora import QKV, LoRALayout
from dgsnet.convert.read import first_keys
from dgsnet.convert.verify import frozen_counterpart, max_abs_diff, tolerance


@dataclass
class MergeReport:
    merged: bool | None  # None: no layer could tell (every LoRA update below the tolerance)
    decided: int  # LoRA layers whose weights told merged or not
    undecidable: list[str] = field(default_factory=list)

    def describe(self) -> str:
        total = self.decided + len(self.undecidable)
        if self.merged is None:
            return (f"undecidable (no LoRA layer has an update above the tolerance; merged or not gives "
                    f"the same model), {total} layers")
        state = "merged (scale * B A already added to the q/k/v weights)" if self.merged else "unmerged"
        return f"{state}, decided from {self.decided} of {total} LoRA layers"


def detect_merge(student: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor], lora: LoRALayout,
                 width: int, alpha: float, source: str) -> MergeReport:
    """Whether the student's q/k/v weights are W0 (unmerged) or W0 + scale B A (merged).

    A layer whose update is below the tolerance (B = 0) cannot tell; the others must agree. A layer
    that fits neither reading is an error: a wrong alpha (the fitted scale names the alpha that
    would fit), q/k/v in another order, or a file whose frozen copy is not its base."""
    scale = alpha / math.sqrt(lora.rank)
    verdicts: dict[str, list[str]] = {"merged": [], "unmerged": [], "undecidable": [], "neither": []}
    fitted_alphas, notes = [], []
    for i in lora.blocks:
        p = f"{BLOCK}{i}.attn."
        for t in lora.targets:
            name = f"clip_model.{p}{t}_proj.weight"
            w = student[f"{p}{t}_proj.weight"].double()
            _, w0 = frozen_counterpart(f"{p}{t}_proj.weight", frozen, width)
            w0 = w0.double()
            ba = student[f"{p}{t}_proj.w_lora_B"].double() @ student[f"{p}{t}_proj.w_lora_A"].double()
            tol = tolerance(student[f"{p}{t}_proj.weight"], frozen[f"{p}in_proj_weight"])
            diff = w - w0
            fits_unmerged = float(diff.abs().max()) <= tol
            fits_merged = float((diff - scale * ba).abs().max()) <= tol
            if fits_unmerged and fits_merged:
                verdicts["undecidable"].append(name)
            elif fits_unmerged or fits_merged:
                verdicts["merged" if fits_merged else "unmerged"].append(name)
            else:
                verdicts["neither"].append(name)
                norm = float((ba * ba).sum())
                if norm > 0:
                    s = float((diff * ba).sum()) / norm
                    if float((diff - s * ba).abs().max()) <= tol:
                        fitted_alphas.append(s * math.sqrt(lora.rank))
                for j, other in enumerate(QKV):
                    if other != t:
                        o = frozen[f"{p}in_proj_weight"][j * width:(j + 1) * width].double()
                        if min(max_abs_diff(w, o), max_abs_diff(w, o + scale * ba)) <= tol:
                            notes.append(f"{name} equals the frozen copy's {other} slice (+ its LoRA update "
                                         f"or not): q/k/v are swapped relative to the packed in_proj "
                                         f"(rows 0:D q, D:2D k, 2D:3D v)")
    if verdicts["neither"]:
        why = ""
        if len(fitted_alphas) == len(verdicts["neither"]):
            lo, hi = min(fitted_alphas), max(fitted_alphas)
            if hi - lo <= 1e-3 * max(abs(hi), 1e-12):
                fit = (lo + hi) / 2
                why = (f" The differences are scale * B A with scale {fit / math.sqrt(lora.rank):.6g}: the "
                       f"file fits --lora-alpha {fit:.6g} (r = {lora.rank}), not {alpha:g}.")
        if notes:
            why += " " + notes[0] + ("" if len(notes) == 1 else f" (and {len(notes) - 1} more)") + "."
        if not why:
            why = (f" Neither a wrong alpha nor a q/k/v swap explains it: is --lora-alpha ({alpha:g}) right, and "
                   f"is the frozen copy the base of this student?")
        raise ValueError(
            f"{source}: the student's q/k/v weights of {len(verdicts['neither'])} LoRA layers (first: "
            f"{verdicts['neither'][0]}) are neither the frozen copy's weights (unmerged) nor those plus "
            f"alpha/sqrt(r) * B A with alpha {alpha:g} (merged).{why}")
    if verdicts["merged"] and verdicts["unmerged"]:
        raise ValueError(f"{source}: some LoRA layers are merged ({first_keys(verdicts['merged'], 3)}) and some "
                         f"are not ({first_keys(verdicts['unmerged'], 3)}); the file is inconsistent")
    decided = len(verdicts["merged"]) + len(verdicts["unmerged"])
    merged = None if decided == 0 else bool(verdicts["merged"])
    return MergeReport(merged=merged, decided=decided, undecidable=verdicts["undecidable"])
