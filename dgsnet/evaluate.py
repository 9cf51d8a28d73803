"""Cross-generator evaluation through torch: per-subset accuracy, AP, real/fake accuracy, AUC, EER.

`evaluate_detector` scores every test subset (one generator each) under the
clean condition and each requested perturbation, and returns the rows
dgsnet.report turns into the markdown table, CSV/JSON files and plots.
`evaluate_checkpoint` does the same for a run directory; it is what
`dgsnet eval` runs. The rows, the --out checks and the files are dgsnet.evalcore's,
shared with the torch-free eval of an exported .onnx detector.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from dgsnet import progress
from dgsnet.evalcore import EvalResult, SubsetScores, check_report_dir, metric_rows, warn_skipped, write_report
from dgsnet.fileio import printable

log = logging.getLogger("dgsnet.evaluate")
__all__ = ["EvalResult", "SubsetScores", "check_report_dir", "evaluate_checkpoint", "evaluate_detector",
           "score_dataset"]


@torch.no_grad()
def score_dataset(detector: torch.nn.Module, dataset, device: torch.device, batch_size: int = 64,
                  workers: int = 0, desc: str = "") -> SubsetScores:
    """Probabilities of `generated` for every readable image of `dataset`, batched, with a progress bar."""
    from dgsnet.data.dataset import collate, worker_init

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda",
                        worker_init_fn=worker_init if workers > 0 else None)
    logits_seen, labels, paths = [], [], []
    for batch in progress.iterate(loader, f"eval {desc}".strip(), total=len(dataset), step=batch_size, leave=False):
        if batch is None:  # every image of the batch was unreadable
            continue
        images, y, _, p = batch
        logits = detector(images.to(device, non_blocking=True)).float().reshape(-1)
        logits_seen.append(logits.cpu().numpy().astype(np.float64))
        labels.append(y.numpy())
        paths.extend(p)
    logits = np.concatenate(logits_seen) if logits_seen else np.zeros(0)
    probs = np.exp(-np.logaddexp(0.0, -logits))  # sigmoid in float64 (as onnxruntime's path), no overflow
    labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    # Skips are counted from what was scored: worker processes keep their own `skipped` lists.
    scored = set(paths)
    skipped = [p for p in dataset.paths if p not in scored]
    return SubsetScores(getattr(dataset, "name", ""), probs, labels, paths, skipped, logits)


def evaluate_detector(detector: torch.nn.Module, data_root: str, *, norm: str = "imagenet",
                      perturbations: str | list | None = None, captions: str | None = None,
                      batch_size: int = 64, workers: int = 0, device: str | torch.device = "cpu",
                      strict: bool = False, patch_order: str = "raster", patch_seed: int = 100,
                      decode: str = "dgsnet", pixel_budget=None, jpeg_draft: bool = False,
                      threshold: float = 0.5) -> EvalResult:
    """Scores `detector` (images -> logits) on every subset of `data_root`, clean and perturbed.

    threshold: the accuracies call `probability > threshold` generated. captions: accepted and
    ignored (scoring never reads captions).

    patch_order: raster (dgsnet's deterministic layout) or shuffle (the published evaluation's
    shuffled layout, seeded per file); decode: dgsnet or pil (the published loader); pixel_budget
    (megapixels the workers decode at once) and jpeg_draft: see dgsnet.image.decode."""
    from dgsnet.data import build_eval_subsets, parse_perturbations

    device = torch.device(device)
    detector = detector.to(device).eval()
    conditions = [("clean", None)] + [(p.name, p) for p in parse_perturbations(perturbations)]
    subsets = build_eval_subsets(data_root, norm=norm, strict=strict,
                                 patch_order=patch_order, patch_seed=patch_seed, decode=decode,
                                 pixel_budget=pixel_budget, jpeg_draft=jpeg_draft)
    results, scores = {}, {}
    for condition, perturb in conditions:
        kept = []
        for name, dataset in subsets:
            name = printable(name)  # a folder name that is not UTF-8 still makes valid CSV/JSON/markdown
            s = score_dataset(detector, dataset.with_perturbation(perturb), device, batch_size, workers,
                              desc=f"{condition}/{name}")
            s.name = name
            warn_skipped(condition, s)
            kept.append(s)
        results[condition], scores[condition] = metric_rows(kept, threshold), kept
    return EvalResult(results, scores, threshold=threshold)


def evaluate_checkpoint(run_dir: str, data_root: str, *, out_dir: str | None = None, head: str = "auto",
                        perturbations: str | list | None = None, captions: str | None = None,
                        batch_size: int = 64, workers: int = 2, device: str = "auto",
                        strict: bool = False, plot: bool = True, patch_order: str = "raster",
                        patch_seed: int = 100, decode: str = "dgsnet", pretrained: str | None = None,
                        pixel_budget=None, jpeg_draft: bool = False, threshold: float = 0.5) -> EvalResult:
    """`dgsnet eval`: a run directory's detector on `data_root`; writes the report files
    (dgsnet.report.write_eval_report) to `out_dir`. `captions` is accepted and ignored."""
    from dgsnet.device import resolve_device
    from dgsnet.metrics import check_threshold
    from dgsnet.predict import load_detector

    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"--data {data_root}: no such folder")
    threshold = check_threshold(threshold)
    out_dir = out_dir or os.path.join(run_dir, "eval", os.path.basename(os.path.normpath(data_root)))
    check_report_dir(out_dir, run_dir, data_root, multi=bool(perturbations), plot=plot)  # before the model loads
    device = resolve_device(device)
    detector, meta, head = load_detector(run_dir, head, device, pretrained)
    result = evaluate_detector(detector, data_root, norm=meta.get("norm", "imagenet"),
                               perturbations=perturbations, batch_size=batch_size,
                               workers=workers, device=device, strict=strict, patch_order=patch_order,
                               patch_seed=patch_seed, decode=decode, pixel_budget=pixel_budget,
                               jpeg_draft=jpeg_draft, threshold=threshold)
    layout = "raster" if patch_order == "raster" else f"shuffle (seed {patch_seed}, per file name)"
    setup = {"patch layout": layout, "decode": decode, "head": head}
    write_report(out_dir, result, plot=plot, setup=setup)
    log.info("evaluated %s (%s head) on %s", run_dir, head, data_root)
    return result

