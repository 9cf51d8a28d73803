"""ROC and precision-recall curves of an eval as PNG files: one curve per subset, AUC / AP in the legend.

The points come from dgsnet.metrics (roc_points, pr_points), so a curve and its table row agree;
a subset with one class has no curve (its AUC and AP are undefined) and the figure says so.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from dgsnet.fileio import atomic_write
from dgsnet.metrics import average_precision, pr_points, roc_auc, roc_points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _both_classes(s) -> bool:
    labels = np.asarray(s.labels)
    return labels.size > 0 and 0 < int(labels.sum()) < labels.size


def _save(fig, ax, path: str, left_out: list[str]) -> str:
    if left_out:  # a missing curve is said, not silently dropped
        ax.text(0.99, 0.01, "one class only, no curve: " + ", ".join(left_out), transform=ax.transAxes,
                ha="right", va="bottom", fontsize="x-small", color="grey")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")  # outside: never hides a curve
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())
    return path


def plot_roc(subsets: Sequence, path: str, title: str = "ROC") -> str:
    """ROC curves (false positive rate across, true positive rate up) of subsets with .name, .probs,
    .labels; the diagonal is chance."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    left_out = []
    for s in subsets:
        if not _both_classes(s):
            left_out.append(s.name)
            continue
        fpr, tpr, _ = roc_points(s.probs, s.labels)
        ax.plot(fpr, tpr, linewidth=1.4, label=f"{s.name} (AUC {100 * roc_auc(s.probs, s.labels):.1f})")
    ax.set_xlabel("false positive rate (real called generated)")
    ax.set_ylabel("true positive rate (generated found)")
    ax.set_title(title)
    try:
        return _save(fig, ax, path, left_out)
    finally:
        plt.close(fig)


def plot_pr(subsets: Sequence, path: str, title: str = "precision-recall") -> str:
    """Precision-recall curves (generated = positive), drawn as the steps AP sums."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    left_out = []
    for s in subsets:
        if not _both_classes(s):
            left_out.append(s.name)
            continue
        recall, precision = pr_points(s.probs, s.labels)
        ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", linewidth=1.4,
                label=f"{s.name} (AP {100 * average_precision(s.probs, s.labels):.1f})")
    ax.set_xlabel("recall (generated found)")
    ax.set_ylabel("precision (called generated that are)")
    ax.set_title(title)
    try:
        return _save(fig, ax, path, left_out)
    finally:
        plt.close(fig)
