"""Detection metrics, numpy only: accuracy at a threshold, average precision, ROC AUC, EER, curves.

Plain numpy rather than scikit-learn, because the torch-free ONNX runtime's eval must not pull in
scikit-learn and scipy for a few sums.

Conventions (those of the community's evaluation scripts): label 1 =
generated ("fake") is the positive class; an image is called generated when
its probability is strictly above the threshold (0.5, i.e. logit > 0).
All metrics are fractions in [0, 1]; a metric a subset cannot define (no
real images for real accuracy; a single class for AP, AUC and EER, which
rank generated against real images) is NaN, and the mean row skips NaNs.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

#: The metric columns of a results row, in table order (each averaged in the mean row).
METRICS = ("acc", "ap", "real_acc", "fake_acc", "auc", "eer")
#: Per-subset columns that are not averaged (a mean of thresholds calls nothing).
EXTRA = ("eer_threshold",)


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
    result does not depend on the order of tied items. NaN with a single class: with
    generated images only every ranking scores 1, which says nothing about the detector.
    """
    scores, labels = _check(scores, labels)
    positives = labels.sum()
    if positives == 0 or positives == labels.size:
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


def operating_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, true positives, false positives) of every distinct decision `score > t`.

    Thresholds run from the highest score (nothing called positive) down to just below the
    lowest (everything positive), one per run of tied scores, so passing one back as the
    threshold reproduces its counts exactly.
    """
    scores, labels = _check(scores, labels)
    if not scores.size:
        return np.zeros(1), np.zeros(1, np.int64), np.zeros(1, np.int64)
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    ends = _tie_groups(ranked)
    true_pos = np.cumsum(labels[order])[ends]
    false_pos = ends + 1 - true_pos
    below = np.nextafter(ranked[-1], -np.inf)
    thresholds = np.r_[ranked[ends], below]
    return thresholds, np.r_[0, true_pos], np.r_[0, false_pos]


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) from (0, 0) to (1, 1); NaN-free only
    with both classes (callers check)."""
    thresholds, tp, fp = operating_points(scores, labels)
    positives, negatives = tp[-1], fp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return fp / negatives, tp / positives, thresholds


def pr_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every threshold that calls at least one image generated; AP is
    the sum of precision times each step in recall."""
    _, tp, fp = operating_points(scores, labels)
    tp, fp = tp[1:], fp[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / tp[-1], tp / (tp + fp)


def equal_error_rate(scores, labels) -> tuple[float, float]:
    """(EER, its threshold): at the decision `score > t` where the false positive rate (reals
    called generated) and the false negative rate (generated called real) are closest, their
    mean; ties go to the smaller of the two worst rates, then the higher threshold. NaN, NaN with
    a single class."""
    scores, labels = _check(scores, labels)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        return math.nan, math.nan
    fpr, tpr, thresholds = roc_points(scores, labels)
    fnr = 1.0 - tpr
    gap, worst = np.abs(fnr - fpr), np.maximum(fnr, fpr)
    best = np.lexsort((np.arange(gap.size), worst, gap))[0]
    return float((fpr[best] + fnr[best]) / 2), float(thresholds[best])


def check_threshold(threshold: float, option: str = "--threshold") -> float:
    """`threshold` as a float strictly between 0 and 1, else one ValueError naming `option`."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise ValueError(f"{option} {threshold}: must be a probability strictly between 0 and 1 "
                         "(an image is called generated when its probability is above it), e.g. 0.5")
    return value


def subset_metrics(probs, labels, threshold: float = 0.5) -> dict:
    """{"n", "n_real", "n_fake", "acc", "ap", "real_acc", "fake_acc", "auc", "eer", "eer_threshold"}
    of one subset; the accuracies call `prob > threshold` generated."""
    probs, labels = _check(probs, labels)
    acc, real_acc, fake_acc = accuracies(probs, labels, threshold)
    n_fake = int(labels.sum())
    eer, eer_threshold = equal_error_rate(probs, labels)
    return {"n": int(labels.size), "n_real": int(labels.size) - n_fake, "n_fake": n_fake,
            "acc": acc, "ap": average_precision(probs, labels), "real_acc": real_acc,
            "fake_acc": fake_acc, "auc": roc_auc(probs, labels), "eer": eer, "eer_threshold": eer_threshold}


def one_class(row: dict) -> bool:
    """Whether a results row's subset holds images of one class only (AP, AUC and EER undefined)."""
    return bool(row.get("n")) and (row.get("n_real") == 0 or row.get("n_fake") == 0)


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
