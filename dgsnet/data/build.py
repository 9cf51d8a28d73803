"""Builders the trainer and `dgsnet eval` call: config or folder in, datasets out."""
from __future__ import annotations

import logging
from pathlib import Path

from dgsnet.image.preprocess import PUBLISHED_PATCH_SEED

from .augment import Augment
from .captions import (CaptionIndex, assign_captions, caption_table, check_template_fraction, report_captions,
                       template_caption)
from .dataset import FolderDataset
from .layouts import EXPECTED, LayoutError, find_samples, list_eval_subsets
from .perturb import Perturbation

log = logging.getLogger("dgsnet.data")


def build_train_dataset(cfg, train: bool = True, *, pixel_budget=None, jpeg_draft: bool | None = None) -> FolderDataset:
    """The dataset of `cfg.data` (any supported layout): augmented when `train`, else deterministic.

    `cfg` is a dgsnet.train.config.TrainConfig (data, captions, caption_max_template, norm, *_prob,
    strict_data, seed). Captions: see dgsnet.data.captions; CaptionsError when a captions file is in
    use and a caption is ambiguous or more than `caption_max_template` of the images get the template.
    `pixel_budget` (megapixels, or "off") and `jpeg_draft` are FolderDataset's; not given, they are
    taken from `cfg.pixel_budget` / `cfg.jpeg_draft` where the config has them (else
    DGSNET_PIXEL_BUDGET or the machine default, and no draft mode).
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
    assigned = assign_captions(samples, root, CaptionIndex(table, file))
    report_captions(assigned.missing, len(samples), root, file, assigned.exact, assigned.suffix)
    check_template_fraction(assigned, len(samples), root, file, cfg.caption_max_template)
    captions = assigned.captions
    augment = Augment.from_config(cfg) if train else None
    if pixel_budget is None:
        pixel_budget = getattr(cfg, "pixel_budget", None)
    if jpeg_draft is None:
        jpeg_draft = bool(getattr(cfg, "jpeg_draft", False))
    return FolderDataset(samples, captions, norm=cfg.norm, augment=augment, seed=cfg.seed,
                         strict=cfg.strict_data, name=str(root), decode=getattr(cfg, "decode", "dgsnet"),
                         pixel_budget=pixel_budget, jpeg_draft=jpeg_draft)


def build_eval_subsets(root, norm: str = "imagenet", captions=None, perturb: Perturbation | None = None,
                       strict: bool = False, patch_order: str = "raster", patch_seed: int = PUBLISHED_PATCH_SEED,
                       decode: str = "dgsnet", pixel_budget=None,
                       jpeg_draft: bool = False) -> list[tuple[str, FolderDataset]]:
    """(subset name, dataset) per test generator under `root`, sorted by name; deterministic items.

    A root with 0_real/1_fake itself is one subset named after the folder;
    otherwise each child in the single-folder or ProGAN-style layout is a
    subset. `perturb` degrades every image before patch selection; patch_order, patch_seed,
    decode, pixel_budget (megapixels, or "off"; None: DGSNET_PIXEL_BUDGET or the machine default)
    and jpeg_draft are FolderDataset's.
    Captions are neither read nor checked (scoring does not use them; `captions` is accepted and
    ignored): every item carries the label-free template caption.
    A subset folder without images is skipped with a warning (an error if it is the only one).
    """
    root = Path(root)
    subsets = []
    for name, folder, samples in list_eval_subsets(root):
        texts = [template_caption(s.group) for s in samples]
        subsets.append((name, FolderDataset(samples, texts, norm=norm, perturb=perturb, strict=strict,
                                            name=f"{root}/{name}" if folder != root.resolve() else str(root),
                                            patch_order=patch_order, patch_seed=patch_seed, decode=decode,
                                            pixel_budget=pixel_budget, jpeg_draft=jpeg_draft)))
    return subsets
