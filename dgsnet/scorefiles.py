"""Per-image eval scores beside the report: scores.csv and scores.jsonl (numpy + stdlib only).

One row per scored image and condition, in scoring order, with the columns of SCORE_COLUMNS:
label 0 = real, 1 = generated; probability = sigmoid(logit). Both files are written atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Mapping, Sequence

from dgsnet.fileio import atomic_write, printable

SCORE_COLUMNS = ("condition", "subset", "path", "label", "logit", "probability")


def _logit(prob: float) -> float:
    """The logit of a probability, for scores that came without one."""
    if prob <= 0.0:
        return -math.inf
    if prob >= 1.0:
        return math.inf
    return math.log(prob) - math.log1p(-prob)


def score_rows(scores: Mapping[str, Sequence]) -> list[dict]:
    """`scores`: condition -> subsets, each with .name, .paths, .labels, .probs (and .logits)."""
    rows = []
    for condition, subsets in scores.items():
        for s in subsets:
            logits = getattr(s, "logits", None)
            for i, (path, label, prob) in enumerate(zip(s.paths, s.labels, s.probs)):
                logit = float(logits[i]) if logits is not None else _logit(float(prob))
                rows.append({"condition": condition, "subset": s.name, "path": printable(str(path)),
                             "label": int(label), "logit": logit, "probability": float(prob)})
    return rows


def write_scores(scores: Mapping[str, Sequence], csv_path: str, jsonl_path: str) -> tuple[str, str]:
    """scores.csv (header, repr-exact floats) and scores.jsonl (one JSON object per line)."""
    rows = score_rows(scores)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(SCORE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(csv_path, buffer.getvalue())
    # a non-finite logit (probability exactly 0 or 1) is null: JSON has no infinity
    lines = [json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()},
                        allow_nan=False) for r in rows]
    atomic_write(jsonl_path, "".join(line + "\n" for line in lines))
    return csv_path, jsonl_path
