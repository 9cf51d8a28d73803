"""Builders the trainer and `dgsnet eval` call: config or folder in, datasets out."""
from __future__ import annotations

import logging
from pathlib import Path

from .augment import Augment
from .captions import assign_captions, caption_table, report_missing
from .dataset import FolderDataset
from .layouts import EXPECTED, LayoutError, find_samples, find_subsets
from .perturb import Perturbation

log = logging.getLogger("dgsnet.data")


def build_train_dataset(cfg, train: bool = True) -> FolderDataset:
    """The dataset of `cfg.data` (any supported layout): augmented when `train`, else deterministic.

    `cfg` is a dgsnet.train.config.TrainConfig (data, captions, norm, *_prob, strict_data, seed).
    """
    root = Path(cfg.data)
    samples = find_samples(root)
    if train:
        labels = {s.label for s in samples}
        for label, folder in ((0, "0_real"), (1, "1_fake")):
            if label not in labels:
                raise LayoutError(f"{root}: no images in any {folder}/ folder; training needs both "
                                  f"real and generated images ({EXPECTED})")
    table, file = caption_table(root, cfg.captions)
    captions, missing = assign_captions(samples, root, table)
    report_missing(missing, len(samples), root, file)
    augment = Augment.from_config(cfg) if train else None
    return FolderDataset(samples, captions, norm=cfg.norm, augment=augment, seed=cfg.seed,
                         strict=cfg.strict_data, name=str(root))


def build_eval_subsets(root, norm: str = "imagenet", captions=None, perturb: Perturbation | None = None,
                       strict: bool = False) -> list[tuple[str, FolderDataset]]:
    """(subset name, dataset) per test generator under `root`, sorted by name; deterministic items.

    A root with 0_real/1_fake itself is one subset named after the folder;
    otherwise each child in the single-folder or ProGAN-style layout is a
    subset. `perturb` degrades every image before patch selection.
    Caption keys are relative to `root`; the fallback count is logged once.
    A subset folder without images is skipped with a warning (an error if it is the only one).
    """
    root = Path(root)
    table, file = caption_table(root, captions)
    subsets, missing, total = [], 0, 0
    found = find_subsets(root)
    for name, folder in found:
        try:
            samples = find_samples(folder)
        except LayoutError as exc:
            if len(found) == 1:
                raise
            log.warning("skipped subset %s: %s", name, exc)  # one empty generator folder must not stop the rest
            continue
        texts, lacking = assign_captions(samples, root, table)
        missing, total = missing + lacking, total + len(samples)
        subsets.append((name, FolderDataset(samples, texts, norm=norm, perturb=perturb, strict=strict,
                                            name=f"{root}/{name}" if folder != root.resolve() else str(root))))
    if not subsets:
        raise LayoutError(f"{root}: every subset folder is empty; {EXPECTED}")
    report_missing(missing, total, root, file)
    return subsets
