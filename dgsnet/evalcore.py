"""The engine-independent half of `dgsnet eval`: scores in, metric rows and report files out.

Torch-free (numpy + dgsnet.scoring + the report writers): `dgsnet eval` of a run directory
(dgsnet.evaluate, torch) and of an exported .onnx detector (onnxruntime, through
`evaluate_scorer`) share the rows, the checks on --out and every file written.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dgsnet.fileio import printable
from dgsnet.metrics import subset_metrics

log = logging.getLogger("dgsnet.evaluate")


@dataclass
class SubsetScores:
    """A subset's scored images (unreadable files are listed in `skipped`, not scored)."""
    name: str
    probs: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: list[str] = field(default_factory=list)
    logits: np.ndarray | None = None  # the detector's raw outputs (probs = sigmoid(logits))


@dataclass
class EvalResult:
    results: dict[str, list[dict]]  # condition ("clean", "jpeg75", ...) -> per-subset metric rows
    scores: dict[str, list[SubsetScores]]
    markdown: str = ""
    files: dict[str, str] = field(default_factory=dict)
    threshold: float = 0.5


def metric_rows(scores: list[SubsetScores], threshold: float = 0.5) -> list[dict]:
    """One results row per subset: {"subset", **dgsnet.metrics.subset_metrics}."""
    return [{"subset": s.name, **subset_metrics(s.probs, s.labels, threshold)} for s in scores]


def warn_skipped(condition: str, s: SubsetScores) -> None:
    if s.skipped:
        log.warning("%s/%s: %d unreadable images skipped (first: %s)", condition, s.name, len(s.skipped),
                    s.skipped[0])


class _Perturbed:
    """A preprocessing callable (dgsnet.image.preprocess.Preprocess) with an eval perturbation in front
    of it, applied to the decoded pixels exactly where the torch datasets apply it."""

    def __init__(self, preprocess, perturb):
        self.preprocess, self.perturb = preprocess, perturb
        self.decode = getattr(preprocess, "decode", "dgsnet")

    def __call__(self, rgb, path=None):
        return self.preprocess(rgb if self.perturb is None else self.perturb(rgb), path=path)


def evaluate_scorer(logits_fn: Callable[[np.ndarray], np.ndarray], preprocess, data_root: str, *,
                    perturbations=None, threshold: float = 0.5, batch_size: int = 64, workers: int | None = None,
                    strict: bool = False, pixel_budget=None) -> EvalResult:
    """`evaluate_detector` for any engine: `logits_fn` ((B, ...) inputs -> (B,) logits) and its
    `preprocess` (e.g. an OnnxDetector's `logits` and `preprocess`) on every subset of `data_root`,
    clean and under each perturbation, through dgsnet.scoring's loop (decoding threads)."""
    from dgsnet import progress
    from dgsnet.data.layouts import list_eval_subsets
    from dgsnet.data.perturb import parse_perturbations
    from dgsnet.scoring import iter_predictions

    conditions = [("clean", None)] + [(p.name, p) for p in parse_perturbations(perturbations)]
    subsets = list_eval_subsets(data_root)
    results, scores = {}, {}
    for condition, perturb in conditions:
        kept = []
        for name, _, samples in subsets:
            name = printable(name)  # a folder name that is not UTF-8 still makes valid CSV/JSON/markdown
            with progress.reporter(len(samples), f"eval {condition}/{name}", leave=False) as bar:
                records = list(iter_predictions([s.path for s in samples], logits_fn, _Perturbed(preprocess, perturb),
                                                batch_size=batch_size, workers=workers, progress=bar,
                                                pixel_budget=pixel_budget))
            good = [(r, s.label) for r, s in zip(records, samples) if "error" not in r]
            failed = [r for r in records if "error" in r]
            if failed and strict:
                raise ValueError(f"{failed[0]['error']} (--strict: an unreadable image is an error; "
                                 "leave --strict out to skip it)")
            for r in failed:
                log.warning("skipped: %s", r["error"])
            s = SubsetScores(name, np.array([r["probability"] for r, _ in good], np.float64),
                             np.array([label for _, label in good], np.int64), [r["path"] for r, _ in good],
                             [r["path"] for r in failed], np.array([r["logit"] for r, _ in good], np.float64))
            warn_skipped(condition, s)
            kept.append(s)
        results[condition], scores[condition] = metric_rows(kept, threshold), kept
    return EvalResult(results, scores, threshold=threshold)


def report_names(multi: bool, plot: bool) -> list[str]:
    """The files an eval report folder gets."""
    names = ["eval.csv", "eval.json", "scores.csv", "scores.jsonl"]
    names += ["eval.png", "roc.png", "pr.png"] if plot else []
    if multi:
        names += ["eval_robustness.csv"] + (["eval_robustness.png"] if plot else [])
    return names


def check_report_dir(out_dir: str, run_dir: str | None, data_root: str, multi: bool = True, plot: bool = True,
                     model_file: str | None = None) -> None:
    """Refuses a report folder that is a file, or whose report files would replace a test image, a
    file of the run or the model file (through links too); re-running into the same folder is fine."""
    from dgsnet.outputs import RUN_FILES, check_creatable, check_output

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is a file; eval writes a folder of reports: choose a folder name")
    check_creatable(os.path.join(out_dir, "eval.json"))
    for a, b in ((os.path.abspath(out_dir), os.path.abspath(data_root)),
                 (os.path.realpath(out_dir), os.path.realpath(data_root))):
        if os.path.commonpath([a, b]) == b:  # its eval.png would be read as a test image next time
            raise ValueError(f"--out {out_dir} is inside the test data {data_root} (--data); "
                             "choose a report folder outside it")
    protected = [(data_root, "the test data (--data)")]
    if run_dir is not None:
        protected += [(os.path.join(run_dir, name), "a file of the run (--ckpt)") for name in sorted(RUN_FILES)]
    if model_file is not None:
        protected.append((model_file, "the detector (--ckpt)"))
    for name in report_names(multi, plot):
        check_output(os.path.join(out_dir, name), protected, f"report file {name} in --out")


def write_report(out_dir: str, result: EvalResult, *, plot: bool = True, setup: dict | None = None) -> EvalResult:
    """Writes every report file of `result` into `out_dir`; fills result.markdown and result.files."""
    from dgsnet.report import write_eval_report

    setup = {**(setup or {}), "threshold": f"probability > {result.threshold:g} is called generated"}
    result.markdown, result.files = write_eval_report(out_dir, result.results, plot=plot, setup=setup,
                                                      threshold=result.threshold, scores=result.scores)
    return result
