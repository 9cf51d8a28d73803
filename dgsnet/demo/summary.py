"""The demo's numbers over seeds: per family and method mean and spread, the table, and the reading.

`per_seed` is {seed: {method: [row, ...]}}, one row per test family as dgsnet.evaluate gives them
({"subset": family, "acc": fraction, "ap": fraction, ...}); the summary is in percent. The spread is the sample standard deviation over seeds.
The reading is written from the numbers every time: nothing in it is a fixed conclusion.
"""
from __future__ import annotations

import statistics
from typing import Mapping, Sequence

UNSEEN = "unseen mean"


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(per_seed: Mapping[int, Mapping[str, Sequence[dict]]], train_family: str,
              metric: str = "acc") -> dict:
    """{"methods", "families", "seeds", "cells": {method: {family or UNSEEN: {"mean", "sd", "values"}}}}.

    UNSEEN is each seed's mean over the families other than `train_family`, then mean and sd over
    seeds (so its spread is the seed-to-seed spread of that mean)."""
    seeds = list(per_seed)
    methods = list(per_seed[seeds[0]])
    families = [row["subset"] for row in per_seed[seeds[0]][methods[0]]]
    unseen = [f for f in families if f != train_family]
    cells: dict = {}
    for method in methods:
        by_family = {f: [] for f in families}
        unseen_means = []
        for seed in seeds:
            rows = {row["subset"]: 100.0 * float(row[metric]) for row in per_seed[seed][method]}
            for family in families:
                by_family[family].append(rows[family])
            unseen_means.append(statistics.fmean(rows[f] for f in unseen))
        by_family[UNSEEN] = unseen_means
        cells[method] = {key: {"mean": statistics.fmean(v), "sd": _sd(v), "values": v} for key, v in by_family.items()}
    return {"metric": metric, "methods": methods, "families": families, "unseen": unseen,
            "train_family": train_family, "seeds": seeds, "cells": cells}


def markdown(summary: dict) -> str:
    """Families down, methods across; each cell "mean ± sd" over the seeds."""
    methods = summary["methods"]
    lines = ["| family | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for key in [*summary["families"], UNSEEN]:
        label = f"{key} (trained on)" if key == summary["train_family"] else f"**{key}**" if key == UNSEEN else key
        cells = [summary["cells"][m][key] for m in methods]
        lines.append(f"| {label} | " + " | ".join(f"{c['mean']:.1f} ± {c['sd']:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def long_rows(summary: dict) -> list[dict]:
    """One CSV row per method and family: mean, sd and every seed's value."""
    rows = []
    for method in summary["methods"]:
        for key, cell in summary["cells"][method].items():
            row = {"method": method, "family": key, "metric": summary["metric"],
                   "mean": round(cell["mean"], 4), "sd": round(cell["sd"], 4)}
            row.update({f"seed {s}": round(v, 4) for s, v in zip(summary["seeds"], cell["values"])})
            rows.append(row)
    return rows


def compare(summary: dict, a: str, b: str, key: str = UNSEEN) -> dict:
    """a minus b on `key`: the mean of the per-seed (paired) differences, its sd, and whether it
    exceeds the seed spread (|difference| > the larger of the two methods' sds)."""
    cell_a, cell_b = summary["cells"][a][key], summary["cells"][b][key]
    diffs = [x - y for x, y in zip(cell_a["values"], cell_b["values"])]
    spread = max(cell_a["sd"], cell_b["sd"])
    mean = statistics.fmean(diffs)
    return {"a": a, "b": b, "key": key, "diff": mean, "diff_sd": _sd(diffs), "spread": spread,
            "beyond_spread": abs(mean) > spread, "wins": sum(d > 0 for d in diffs), "seeds": len(diffs)}


def _points(value: float) -> str:
    return f"{abs(value):.1f} point{'s' if round(abs(value), 1) != 1 else ''}"


def _sentence(c: dict, what: str) -> str:
    if round(c["diff"], 1) == 0:
        return f"{c['a']} and {c['b']} score the same on {what} ({c['a']} ahead on {c['wins']} of {c['seeds']} seeds)."
    direction = "above" if c["diff"] > 0 else "below"
    verdict = ("more than" if c["beyond_spread"] else "within") + f" the seed spread ({c['spread']:.1f})"
    return (f"{c['a']} is {_points(c['diff'])} {direction} {c['b']} on {what}, {verdict}; "
            f"{c['a']} is ahead on {c['wins']} of {c['seeds']} seeds.")


def reading(summary: dict, prior: str, plain: str, dgs: str, random_probe: str | None = None) -> str:
    """The paragraph printed under the table. prior: the probe on the frozen prior (no fine-tuning);
    plain: plain LoRA; dgs: DGS-Net; random_probe: the probe on a random-initialised encoder."""
    cells, train = summary["cells"], summary["train_family"]
    n = len(summary["seeds"])
    parts = [f"Over {n} seed{'s' if n != 1 else ''}, trained on '{train}' only ({summary['metric']}, %):"]
    if random_probe in cells:
        parts.append(_sentence(compare(summary, prior, random_probe), "the unseen families")
                     .replace(f"{prior} is", "the pretrained prior's probe is", 1)
                     + " That is what the prior brings before any fine-tuning.")
    seen = compare(summary, plain, prior, key=train)
    forgetting = compare(summary, plain, prior)
    parts.append(f"Plain LoRA fine-tuning moves the seen family '{train}' from {cells[prior][train]['mean']:.1f} to "
                 f"{cells[plain][train]['mean']:.1f} and the unseen mean from {cells[prior][UNSEEN]['mean']:.1f} to "
                 f"{cells[plain][UNSEEN]['mean']:.1f}"
                 + (f": it {'gains' if seen['diff'] > 0 else 'loses'} {_points(seen['diff'])} where it trained and "
                    f"{'gains' if forgetting['diff'] > 0 else 'loses'} {_points(forgetting['diff'])} elsewhere "
                    f"({'beyond' if forgetting['beyond_spread'] else 'within'} the seed spread)."))
    kept = compare(summary, dgs, plain)
    parts.append(_sentence(kept, "the unseen families"))
    if kept["diff"] > 0 and kept["beyond_spread"]:
        parts.append("Here DGS-Net kept more of the unseen-family accuracy than plain LoRA, as the method claims.")
    elif kept["diff"] < 0 and kept["beyond_spread"]:
        parts.append("Here DGS-Net did worse than plain LoRA on unseen families: this setting does not show the "
                     "method's claim.")
    else:
        parts.append("So this run cannot tell DGS-Net from plain LoRA on unseen families: the difference is "
                     "within seed-to-seed noise.")
    return " ".join(parts)


def plot(summary: dict, path: str, title: str) -> str:
    """Grouped bars (PNG): one group per family plus the unseen mean, one bar per method, error bars
    of one seed sd."""
    from dgsnet.report import _pyplot, _save_figure

    plt = _pyplot()
    keys = [*summary["families"], UNSEEN]
    methods = summary["methods"]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(keys)), 5.0))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs = [k + (i - (len(methods) - 1) / 2) * width for k in range(len(keys))]
        cells = [summary["cells"][method][key] for key in keys]
        ax.bar(xs, [c["mean"] for c in cells], width, yerr=[c["sd"] for c in cells], capsize=2, label=method)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{k}\n(trained on)" if k == summary["train_family"] else k for k in keys])
    ax.axhline(50.0, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"{summary['metric']} (%), mean ± sd over {len(summary['seeds'])} seeds")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path
