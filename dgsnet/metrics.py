"""Detection metrics, numpy only: accuracy at a threshold, average precision, ROC AUC.

Conventions (those of the community's evaluation scripts): label 1 =
generated ("fake") is the positive class; an image is called generated when
its probability is strictly above the threshold (0.5, i.e. logit > 0).
All metrics are fractions in [0, 1]; a metric a subset cannot define (no
real images for real accuracy, a single class for AP / AUC) is NaN, and the
mean row skips NaNs.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

#: The metric columns of a results row, in table order.
METRICS = ("acc", "ap", "real_acc", "fake_acc", "auc")


def _check(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if probs.shape != labels.shape:
        raise ValueError(f"{probs.size} scores but {labels.size} labels")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (generated), got values {np.unique(labels)[:5]}")
    if not np.isfinite(probs).all():
        raise ValueError("scores contain NaN or infinity")
    return probs, labels.astype(np.int64)


def _fraction(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else math.nan


def accuracies(probs, labels, threshold: float = 0.5) -> tuple[float, float, float]:
    """(accuracy, real accuracy, generated accuracy) with `prob > threshold` meaning generated."""
    probs, labels = _check(probs, labels)
    called_fake = probs > threshold
    correct = called_fake == labels.astype(bool)
    return _fraction(correct), _fraction(correct[labels == 0]), _fraction(correct[labels == 1])


def _tie_groups(scores_desc: np.ndarray) -> np.ndarray:
    """Index of the last element of each run of equal values in a descending array."""
    return np.flatnonzero(np.r_[scores_desc[1:] != scores_desc[:-1], True])


def average_precision(scores, labels) -> float:
    """AP = sum over distinct thresholds (high to low) of (R_k - R_{k-1}) * P_k.

    Tied scores form one threshold (they are accepted together), so the
    result does not depend on the order of tied items. NaN without positives.
    """
    scores, labels = _check(scores, labels)
    positives = labels.sum()
    if positives == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    ends = _tie_groups(scores[order])
    true_pos = np.cumsum(labels[order])[ends]
    precision = true_pos / (ends + 1)
    recall = true_pos / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve = P(score of a random positive > that of a random negative),
    a tie counting one half (Mann-Whitney U with mid-ranks). NaN with a single class."""
    scores, labels = _check(scores, labels)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    mid_rank = (starts + ends + 1) / 2.0  # 1-based mean rank of each tie group
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(mid_rank, ends - starts)
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def subset_metrics(probs, labels, threshold: float = 0.5) -> dict:
    """{"n", "n_real", "n_fake", "acc", "ap", "real_acc", "fake_acc", "auc"} of one subset."""
    probs, labels = _check(probs, labels)
    acc, real_acc, fake_acc = accuracies(probs, labels, threshold)
    n_fake = int(labels.sum())
    return {"n": int(labels.size), "n_real": int(labels.size) - n_fake, "n_fake": n_fake,
            "acc": acc, "ap": average_precision(probs, labels), "real_acc": real_acc,
            "fake_acc": fake_acc, "auc": roc_auc(probs, labels)}


def mean_row(rows: Sequence[dict] | Iterable[dict], name: str = "mean", key: str = "subset") -> dict:
    """The mean over subsets of each metric (NaNs skipped; NaN if all are), counts summed.

    Each subset weighs the same, as in the published tables.
    """
    rows = list(rows)
    out = {key: name}
    for count in ("n", "n_real", "n_fake"):
        if any(count in r for r in rows):
            out[count] = int(sum(r.get(count, 0) for r in rows))
    for metric in METRICS:
        values = [r[metric] for r in rows if metric in r and not math.isnan(r[metric])]
        out[metric] = float(np.mean(values)) if values else math.nan
    return out
