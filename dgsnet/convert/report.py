"""What a conversion did, for the caller and the `dgsnet convert-official` summary."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class ConversionReport:
    source: str
    out: str
    stage: int
    architecture: str
    lora: dict | None = None
    merged: bool | None = None
    merge: str = ""
    as_published_test: bool = False
    mismatches: list = field(default_factory=list)
    stage1_mismatches: list | None = None  # None: no --stage1 file given
    warnings: list = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"converted {self.source} -> {self.out} (stage {self.stage})",
                 f"  architecture: {self.architecture}"]
        if self.lora:
            lines.append(f"  LoRA: rank {self.lora['rank']}, alpha {self.lora['alpha']:g} (scale alpha/sqrt(r) = "
                         f"{self.lora['alpha'] / math.sqrt(self.lora['rank']):.4g}), targets "
                         f"{','.join(self.lora['targets'])}, blocks {self.lora['blocks']}")
            lines.append(f"  file: {self.merge}")
            lines.append("  base weights: " + ("the stored student weights (--as-published-test: what the "
                                               "published test.py computes)" if self.as_published_test
                                               else "the frozen pretrained copy (the trained model)"))
        lines.append(f"  frozen-tensor mismatches: {len(self.mismatches) or 'none'}"
                     + (f" ({', '.join(m['name'] for m in self.mismatches[:5])}"
                        f"{', ...' if len(self.mismatches) > 5 else ''})" if self.mismatches else ""))
        if self.stage1_mismatches is not None:
            lines.append(f"  --stage1 differences: {len(self.stage1_mismatches) or 'none'}")
        return "\n".join(lines)
