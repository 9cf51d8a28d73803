"""The torch Dataset over a list of labelled image files: decode, degrade, select patches, normalise."""
from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
from torch.utils.data import Dataset

from dgsnet.imageio import DEFAULT_MAX_PIXELS, ImageLoadError, load_rgb
from dgsnet.preprocess import NORMS, PUBLISHED_PATCH_SEED, check_patch_order, layout_rng, normalize, select_patches

from .augment import Augment, item_rng
from .layouts import Sample
from .perturb import Perturbation

log = logging.getLogger("dgsnet.data")


class FolderDataset(Dataset):
    """Items are (image float32 (3, 224, 224), label 0/1, caption, path), or None for an unreadable
    file, which is logged with its path and counted in `skipped` (ImageLoadError under `strict`).

    Training (`augment` given) shuffles the patch layout and augments with
    randomness drawn from (seed, epoch, index) only; without `augment` the
    layout is `patch_order`: raster (deterministic), or shuffle (the
    published evaluation), seeded per file by dgsnet.preprocess.layout_rng.
    `decode` is dgsnet.imageio.load_rgb's (dgsnet, or pil as published).
    """

    def __init__(self, samples: Sequence[Sample], captions: Sequence[str], *, norm: str = "imagenet",
                 augment: Augment | None = None, perturb: Perturbation | None = None, seed: int = 0,
                 strict: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str = "",
                 patch_order: str = "raster", patch_seed: int = PUBLISHED_PATCH_SEED, decode: str = "dgsnet"):
        if len(samples) != len(captions):
            raise ValueError(f"{len(samples)} samples but {len(captions)} captions")
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}: choose one of {', '.join(sorted(NORMS))}")
        self.paths = [s.path for s in samples]
        self.labels = [int(s.label) for s in samples]
        self.captions = list(captions)
        self.mean, self.std = NORMS[norm]
        self.norm, self.augment, self.perturb = norm, augment, perturb
        self.seed, self.epoch, self.strict, self.max_pixels, self.name = seed, 0, strict, max_pixels, name
        self.patch_order, self.patch_seed, self.decode = check_patch_order(patch_order), patch_seed, decode
        self.skipped: list[str] = []  # unreadable files met by this process

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def tile(self, index: int):
        """The 224x224x3 uint8 patch tile of item `index` (raises ImageLoadError for a bad file)."""
        rgb = load_rgb(self.paths[index], max_pixels=self.max_pixels, decode=self.decode)
        if self.perturb is not None:
            rgb = self.perturb(rgb)
        if self.augment is None:
            return select_patches(rgb, layout_rng(self.patch_order, self.paths[index], self.patch_seed))
        rng = item_rng(self.seed, self.epoch, index)
        rgb = self.augment.before_selection(rgb, rng)
        return self.augment.after_selection(select_patches(rgb, rng), rng)

    def __getitem__(self, index: int):
        try:
            tile = self.tile(index)
        except ImageLoadError as exc:
            if self.strict:
                raise
            self.skipped.append(self.paths[index])
            log.warning("skipped unreadable image (%d in %s so far): %s", len(self.skipped),
                        self.name or "this dataset", exc)
            return None
        image = torch.from_numpy(normalize(tile, self.mean, self.std))
        return image, self.labels[index], self.captions[index], self.paths[index]

    def with_perturbation(self, perturb: Perturbation | None) -> "FolderDataset":
        """The same files and captions under another evaluation perturbation (no folder re-scan)."""
        clone = copy.copy(self)
        clone.perturb, clone.skipped = perturb, []
        return clone

    def counts(self) -> tuple[int, int]:
        """(real, generated) image counts."""
        fake = sum(self.labels)
        return len(self.labels) - fake, fake
