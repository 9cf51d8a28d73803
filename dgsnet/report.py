"""Evaluation reports: a markdown table for the terminal, CSV and JSON files, PNG charts.

Rows are dicts as made by dgsnet.metrics.subset_metrics plus a "subset"
key. Files store the metrics as fractions (NaN as empty CSV cell / JSON
null); the markdown shows them as percentages (the EER threshold as a
probability). `results` maps a condition name ("clean", "jpeg75", ...) to
its per-subset rows. Per-image scores: dgsnet.scorefiles; ROC / PR curves: dgsnet.curves.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Mapping, Sequence

from dgsnet.fileio import atomic_write
from dgsnet.metrics import EXTRA, METRICS, mean_row, one_class

KEY = "subset"
COUNTS = ("n", "n_real", "n_fake")
TITLES = {"acc": "acc", "ap": "AP", "real_acc": "real acc", "fake_acc": "fake acc", "auc": "AUC", "eer": "EER",
          "eer_threshold": "EER threshold"}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _percent(value) -> str:
    return "n/a" if _missing(value) else f"{100 * value:.2f}"


def _probability(value) -> str:
    return "n/a" if _missing(value) else f"{value:.4f}"


def one_class_note(rows: Sequence[dict]) -> str:
    """The line under a table that names its one-class subsets ("" when there are none)."""
    names = [str(r[KEY]) for r in rows if r.get(KEY) != "mean" and one_class(r)]
    if not names:
        return ""
    return (f"n/a: {', '.join(names)} {'holds' if len(names) == 1 else 'hold'} one class only, so AP, AUC and "
            "EER are undefined there and left out of the mean row's AP, AUC and EER.")


def with_mean(rows: Sequence[dict]) -> list[dict]:
    """`rows` followed by their mean row (unless they already end with one or are a single subset)."""
    rows = list(rows)
    if len(rows) < 2 or rows[-1].get(KEY) == "mean":
        return rows
    return rows + [mean_row(rows, key=KEY)]


def markdown_table(rows: Sequence[dict], metrics: Sequence[str] = METRICS, counts: bool = True,
                   extra: Sequence[str] = ()) -> str:
    """One line per row: subset, image counts, then each metric in percent (2 decimals), then each
    `extra` column (the EER threshold) as a probability (4 decimals)."""
    head = [KEY] + (["n", "real", "fake"] if counts else []) + [f"{TITLES.get(m, m)} %" for m in metrics]
    head += [TITLES.get(e, e) for e in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        cells = [str(row.get(KEY, ""))]
        if counts:
            cells += [str(row.get(c, "")) for c in COUNTS]
        cells += [_percent(row.get(m)) for m in metrics]
        cells += [_probability(row[e]) if e in row else "" for e in extra]  # the mean row has no threshold
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def robustness_rows(results: Mapping[str, Sequence[dict]], metric: str = "acc") -> list[dict]:
    """Per subset, `metric` under each key of `results` (conditions, or methods), plus the mean row."""
    by_key = {}
    for key, rows in results.items():
        named = {r[KEY]: r for r in rows}
        if "mean" not in named:
            named["mean"] = mean_row([r for r in rows if r[KEY] != "mean"], key=KEY)
        by_key[key] = named
    subsets = list(dict.fromkeys(name for named in by_key.values() for name in named if name != "mean"))
    return [{KEY: name, **{key: named[name].get(metric, math.nan) if name in named else math.nan
                           for key, named in by_key.items()}}
            for name in subsets + ["mean"]]


def robustness_table(results: Mapping[str, Sequence[dict]], metric: str = "acc") -> str:
    """Markdown: subsets down, conditions across, `metric` in percent."""
    conditions = list(results)
    lines = [f"| {KEY} ({TITLES.get(metric, metric)} %) | " + " | ".join(conditions) + " |",
             "|---|" + "---:|" * len(conditions)]
    for row in robustness_rows(results, metric):
        lines.append(f"| {row[KEY]} | " + " | ".join(_percent(row[c]) for c in conditions) + " |")
    return "\n".join(lines)


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def write_csv(rows: Sequence[dict], path: str, columns: Sequence[str] | None = None) -> str:
    """CSV with a header; NaN as an empty cell. Written atomically."""
    rows = list(rows)
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if _clean(v) is None else v) for k, v in row.items()})
    atomic_write(path, buffer.getvalue())
    return path


def write_json(data, path: str) -> str:
    """JSON (indented, NaN as null). Written atomically."""
    def convert(obj):
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [convert(v) for v in obj]
        return _clean(obj)

    atomic_write(path, json.dumps(convert(data), indent=1, allow_nan=False) + "\n")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_subsets(rows: Sequence[dict], path: str, metrics: Sequence[str] = ("acc", "ap"),
                 title: str = "accuracy and AP per subset") -> str:
    """Grouped bar chart (PNG): one group per subset (mean row included), one bar per metric."""
    return _plot_columns(list(rows), path, list(metrics), title)


def _save_figure(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write(path, buffer.getvalue())


def write_eval_report(out_dir: str, results: Mapping[str, Sequence[dict]], metric: str = "acc",
                      prefix: str = "eval", plot: bool = True,
                      setup: Mapping[str, object] | None = None, threshold: float = 0.5,
                      scores: Mapping[str, Sequence] | None = None) -> tuple[str, dict[str, str]]:
    """Write every report file of an evaluation and return (markdown for stdout, {kind: path}).

    `results`: condition -> per-subset rows (without mean rows; the first
    condition is the unperturbed one, e.g. "clean"). Files:
    <prefix>.csv (one line per condition x subset, mean rows included),
    <prefix>.json, <prefix>.png (bar chart of the first condition), and with
    more than one condition <prefix>_robustness.csv and .png. `setup`
    (e.g. the patch layout and decoder used) heads the markdown as one line and
    is stored in the JSON record. `threshold`: the one the accuracies used (stored).
    `scores` (condition -> subsets with .name, .paths, .labels, .probs, .logits): also
    scores.csv / scores.jsonl, and with `plot` roc.png / pr.png of the first condition.
    """
    os.makedirs(out_dir, exist_ok=True)
    conditions = list(results)
    full = {c: with_mean(results[c]) for c in conditions}
    texts, paths = [], {}
    if setup:
        texts.append("; ".join(f"{k}: {v}" for k, v in setup.items()))
    for condition in conditions:
        header = "" if len(conditions) == 1 else f"### {condition}\n\n"
        note = one_class_note(full[condition])
        texts.append(header + markdown_table(full[condition], extra=EXTRA) + (f"\n\n{note}" if note else ""))
    long_rows = [{"condition": c, **row} for c in conditions for row in full[c]]
    columns = ["condition", KEY, *COUNTS, *METRICS, *EXTRA]
    paths["csv"] = write_csv(long_rows, os.path.join(out_dir, f"{prefix}.csv"), columns)
    record = {"conditions": conditions, "metrics": list(METRICS), "threshold": threshold, "results": full,
              "one_class": {c: [r[KEY] for r in full[c] if r.get(KEY) != "mean" and one_class(r)] for c in conditions},
              "setup": dict(setup or {})}
    if len(conditions) > 1:
        record["robustness"] = {"metric": metric, "rows": robustness_rows(results, metric)}
        texts.append(f"### robustness\n\n{robustness_table(results, metric)}")
        paths["robustness_csv"] = write_csv(record["robustness"]["rows"],
                                            os.path.join(out_dir, f"{prefix}_robustness.csv"))
    paths["json"] = write_json(record, os.path.join(out_dir, f"{prefix}.json"))
    if scores is not None:
        from dgsnet.scorefiles import write_scores

        paths["scores_csv"], paths["scores_jsonl"] = write_scores(
            scores, os.path.join(out_dir, "scores.csv"), os.path.join(out_dir, "scores.jsonl"))
    if plot and scores and conditions:
        from dgsnet.curves import plot_pr, plot_roc

        first = scores[conditions[0]]
        paths["roc_png"] = plot_roc(first, os.path.join(out_dir, "roc.png"), title=f"{conditions[0]}: ROC per subset")
        paths["pr_png"] = plot_pr(first, os.path.join(out_dir, "pr.png"),
                                  title=f"{conditions[0]}: precision-recall per subset")
    if plot and conditions:
        paths["png"] = plot_subsets(full[conditions[0]], os.path.join(out_dir, f"{prefix}.png"),
                                    title=f"{conditions[0]}: accuracy and AP per subset")
        if len(conditions) > 1:
            paths["robustness_png"] = plot_robustness(results, os.path.join(out_dir, f"{prefix}_robustness.png"),
                                                      metric)
    return "\n\n".join(texts), paths


def plot_robustness(results: Mapping[str, Sequence[dict]], path: str, metric: str = "acc") -> str:
    """Grouped bar chart (PNG): one group per subset (and the mean), one bar per condition."""
    return _plot_columns(robustness_rows(results, metric), path, list(results),
                         f"{TITLES.get(metric, metric)} under perturbations")


def _plot_columns(rows: list[dict], path: str, columns: list[str], title: str) -> str:
    """Bars of rows[i][column] in percent, grouped by row; NaN drawn as an empty bar."""
    plt = _pyplot()
    width = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(rows) * len(columns) + 1.5), 3.6))
    for k, column in enumerate(columns):
        values = [0.0 if _clean(r.get(column)) is None else 100 * r[column] for r in rows]
        ax.bar([i + (k - (len(columns) - 1) / 2) * width for i in range(len(rows))], values, width,
               label=TITLES.get(column, column))
    ax.set_xticks(range(len(rows)), [str(r.get(KEY, "")) for r in rows], rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")  # chance level
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")  # outside: never hides a bar
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path
