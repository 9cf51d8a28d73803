"""<out>/curves.png: a run's training loss terms, learning rate and validation metrics per step,
drawn from its own log.jsonl (so it can be redrawn for any run folder)."""
from __future__ import annotations

import json
import os

from dgsnet.report import _pyplot, _save_figure

CURVES_FILE = "curves.png"
VAL_METRICS = ("val_acc", "val_ap", "val_auc")


def read_records(run_dir: str) -> dict[str, list[dict]]:
    """{"train": [...], "val": [...]} by step; a step logged again after a resume keeps its last record."""
    path = os.path.join(run_dir, "log.jsonl")
    by_event: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    if not os.path.isfile(path):
        return {k: [] for k in by_event}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a kill: the rest of the log still counts
                continue
            if isinstance(row, dict) and row.get("event") in by_event and isinstance(row.get("step"), int):
                by_event[row["event"]][row["step"]] = row
    return {k: [rows[s] for s in sorted(rows)] for k, rows in by_event.items()}


def write_curves(run_dir: str, title: str = "") -> str | None:
    """Writes <run_dir>/curves.png atomically; None when the log has no step records yet."""
    records = read_records(run_dir)
    train, val = records["train"], records["val"]
    if not train and not val:
        return None
    plt = _pyplot()
    panels = 3 if val else 2
    fig, axes = plt.subplots(panels, 1, figsize=(7.0, 2.6 * panels), sharex=True)
    loss_ax, lr_ax = axes[0], axes[1]
    steps = [r["step"] for r in train]
    for key in sorted({k for r in train for k in r if k.startswith("loss_")}):
        loss_ax.plot(steps, [r.get(key, float("nan")) for r in train], label=key[len("loss_"):])
    if val:
        loss_ax.plot([r["step"] for r in val], [r.get("val_loss", float("nan")) for r in val], "o--",
                     label="validation")
    loss_ax.set_ylabel("loss")
    if loss_ax.has_data():
        loss_ax.legend(fontsize="small")
    lr_ax.plot(steps, [r.get("lr", float("nan")) for r in train], color="tab:grey")
    lr_ax.set_ylabel("learning rate")
    if val:
        val_ax = axes[2]
        for key in VAL_METRICS:
            val_ax.plot([r["step"] for r in val], [r.get(key, float("nan")) for r in val], "o-",
                        label=key[len("val_"):])
        val_ax.set_ylim(0, 1.02)
        val_ax.set_ylabel("validation")
        val_ax.legend(fontsize="small")
    axes[-1].set_xlabel("optimiser step")
    fig.suptitle(title or os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    path = os.path.join(run_dir, CURVES_FILE)
    _save_figure(fig, path)
    plt.close(fig)
    return path
