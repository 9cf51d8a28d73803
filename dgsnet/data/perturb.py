"""Evaluation perturbations ("jpeg:95,75,50 blur:1,2 resize:0.5"), applied before patch selection."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .transforms import gaussian_blur, jpeg_recompress, rescale

KINDS = {"jpeg": "JPEG quality 1-100", "blur": "Gaussian blur std in pixels (> 0)",
         "resize": "resize factor (> 0, e.g. 0.5 halves each side)"}
SYNTAX = "expected KIND:V1,V2,... with KIND in jpeg, blur, resize, e.g. 'jpeg:95,75,50 blur:1,2 resize:0.5'"


@dataclass(frozen=True)
class Perturbation:
    kind: str  # jpeg, blur or resize
    value: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"perturbation kind {self.kind!r} is unknown; {SYNTAX}")
        if self.kind == "jpeg" and not (1 <= self.value <= 100 and float(self.value).is_integer()):
            raise ValueError(f"jpeg:{self.value:g}: the quality must be a whole number from 1 to 100")
        if self.kind in ("blur", "resize") and not self.value > 0:
            raise ValueError(f"{self.kind}:{self.value:g}: the {KINDS[self.kind]} must be > 0")

    @property
    def name(self) -> str:
        """Short label for tables and file names: jpeg75, blur1, blur1.5, resize0.5."""
        return f"{self.kind}{self.value:g}"

    def apply(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> HxWx3 uint8 (resize changes the size), deterministic."""
        if self.kind == "jpeg":
            return jpeg_recompress(image, int(self.value))
        if self.kind == "blur":
            return gaussian_blur(image, self.value)
        return rescale(image, self.value)

    __call__ = apply


def parse_perturbations(spec: str | Iterable[str] | None) -> list[Perturbation]:
    """'jpeg:95,75,50 blur:1,2 resize:0.5' (or a list of such groups) -> Perturbations in that order.

    Raises ValueError naming the bad group and the expected syntax.
    """
    if spec is None:
        return []
    groups = spec.split() if isinstance(spec, str) else [g for part in spec for g in str(part).split()]
    out: list[Perturbation] = []
    for group in groups:
        match = re.fullmatch(r"([a-z]+):([^:]+)", group.strip().lower())
        if not match:
            raise ValueError(f"perturbation {group!r}: {SYNTAX}")
        kind, values = match.groups()
        if kind not in KINDS:
            raise ValueError(f"perturbation {group!r}: unknown kind {kind!r}; {SYNTAX}")
        for text in values.split(","):
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"perturbation {group!r}: {text!r} is not a number; {SYNTAX}") from None
            item = Perturbation(kind, value)
            if item not in out:
                out.append(item)
    return out
