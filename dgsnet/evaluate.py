"""Cross-generator evaluation: per-subset accuracy, AP, real/fake accuracy and AUC.

`evaluate_detector` scores every test subset (one generator each) under the
clean condition and each requested perturbation, and returns the rows
dgsnet.report turns into the markdown table, CSV/JSON files and plots.
`evaluate_checkpoint` does the same for a run directory; it is what
`dgsnet eval` runs.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

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


@dataclass
class EvalResult:
    results: dict[str, list[dict]]  # condition ("clean", "jpeg75", ...) -> per-subset metric rows
    scores: dict[str, list[SubsetScores]]
    markdown: str = ""
    files: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def score_dataset(detector: torch.nn.Module, dataset, device: torch.device, batch_size: int = 64,
                  workers: int = 0, desc: str = "") -> SubsetScores:
    """Probabilities of `generated` for every readable image of `dataset`, batched, with a progress bar."""
    from dgsnet.data.dataset import collate

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")
    probs, labels, paths = [], [], []
    for batch in tqdm(loader, desc=desc or "eval", leave=False, dynamic_ncols=True):
        if batch is None:  # every image of the batch was unreadable
            continue
        images, y, _, p = batch
        logits = detector(images.to(device, non_blocking=True)).float().reshape(-1)
        probs.append(torch.sigmoid(logits).cpu().numpy())
        labels.append(y.numpy())
        paths.extend(p)
    probs = np.concatenate(probs) if probs else np.zeros(0)
    labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    # Skips are counted from what was scored: worker processes keep their own `skipped` lists.
    scored = set(paths)
    skipped = [p for p in dataset.paths if p not in scored]
    return SubsetScores(getattr(dataset, "name", ""), probs, labels, paths, skipped)


def evaluate_detector(detector: torch.nn.Module, data_root: str, *, norm: str = "imagenet",
                      perturbations: str | list | None = None, captions: str | None = None,
                      batch_size: int = 64, workers: int = 0, device: str | torch.device = "cpu",
                      strict: bool = False, patch_order: str = "raster", patch_seed: int = 100,
                      decode: str = "dgsnet", pixel_budget=None, jpeg_draft: bool = False) -> EvalResult:
    """Scores `detector` (images -> logits) on every subset of `data_root`, clean and perturbed.

    patch_order: raster (dgsnet's deterministic layout) or shuffle (the published evaluation's
    shuffled layout, seeded per file); decode: dgsnet or pil (the published loader); pixel_budget
    (megapixels the workers decode at once) and jpeg_draft: see dgsnet.image.decode."""
    from dgsnet.data import build_eval_subsets, parse_perturbations

    device = torch.device(device)
    detector = detector.to(device).eval()
    conditions = [("clean", None)] + [(p.name, p) for p in parse_perturbations(perturbations)]
    subsets = build_eval_subsets(data_root, norm=norm, captions=captions, strict=strict,
                                 patch_order=patch_order, patch_seed=patch_seed, decode=decode,
                                 pixel_budget=pixel_budget, jpeg_draft=jpeg_draft)
    results, scores = {}, {}
    for condition, perturb in conditions:
        rows, kept = [], []
        for name, dataset in subsets:
            name = printable(name)  # a folder name that is not UTF-8 still makes valid CSV/JSON/markdown
            s = score_dataset(detector, dataset.with_perturbation(perturb), device, batch_size, workers,
                              desc=f"{condition}/{name}")
            s.name = name
            if s.skipped:
                log.warning("%s/%s: %d unreadable images skipped (first: %s)", condition, name,
                            len(s.skipped), s.skipped[0])
            rows.append({"subset": name, **subset_metrics(s.probs, s.labels)})
            kept.append(s)
        results[condition], scores[condition] = rows, kept
    return EvalResult(results, scores)


def evaluate_checkpoint(run_dir: str, data_root: str, *, out_dir: str | None = None, head: str = "auto",
                        perturbations: str | list | None = None, captions: str | None = None,
                        batch_size: int = 64, workers: int = 2, device: str = "auto",
                        strict: bool = False, plot: bool = True, patch_order: str = "raster",
                        patch_seed: int = 100, decode: str = "dgsnet", pretrained: str | None = None,
                        pixel_budget=None, jpeg_draft: bool = False) -> EvalResult:
    """`dgsnet eval`: a run directory's detector on `data_root`; writes eval.{csv,json,png} to `out_dir`."""
    from dgsnet.device import resolve_device
    from dgsnet.predict import load_detector
    from dgsnet.report import write_eval_report

    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"--data {data_root}: no such folder")
    out_dir = out_dir or os.path.join(run_dir, "eval", os.path.basename(os.path.normpath(data_root)))
    check_report_dir(out_dir, run_dir, data_root, multi=bool(perturbations), plot=plot)  # before the model loads
    device = resolve_device(device)
    detector, meta, head = load_detector(run_dir, head, device, pretrained)
    result = evaluate_detector(detector, data_root, norm=meta.get("norm", "imagenet"),
                               perturbations=perturbations, captions=captions, batch_size=batch_size,
                               workers=workers, device=device, strict=strict, patch_order=patch_order,
                               patch_seed=patch_seed, decode=decode, pixel_budget=pixel_budget,
                               jpeg_draft=jpeg_draft)
    layout = "raster" if patch_order == "raster" else f"shuffle (seed {patch_seed}, per file name)"
    setup = {"patch layout": layout, "decode": decode, "head": head}
    result.markdown, result.files = write_eval_report(out_dir, result.results, plot=plot, setup=setup)
    log.info("evaluated %s (%s head) on %s", run_dir, head, data_root)
    return result


def check_report_dir(out_dir: str, run_dir: str, data_root: str, multi: bool = True, plot: bool = True) -> None:
    """Refuses a report folder that is a file, or whose report files would replace a test image or a
    file of the run (through links too); re-running into the same report folder is fine."""
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
    protected += [(os.path.join(run_dir, name), "a file of the run (--ckpt)") for name in sorted(RUN_FILES)]
    names = ["eval.csv", "eval.json"] + (["eval.png"] if plot else [])
    if multi:
        names += ["eval_robustness.csv"] + (["eval_robustness.png"] if plot else [])
    for name in names:
        check_output(os.path.join(out_dir, name), protected, f"report file {name} in --out")
