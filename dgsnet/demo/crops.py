"""Crops of the demo photos at several scales, area-downscaled to size x size.

Crop sides are drawn log-uniformly between `size` and min(shorter photo side,
4 * size), so a crop is only ever downscaled (area averaging, Pillow's BOX
filter), never upsampled: the real class carries no interpolation fingerprint.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Dict, Set, Tuple

import numpy as np
from PIL import Image

from dgsnet.demo.photos import Photo
from dgsnet.image.preprocess import GREY_WEIGHTS

#: crops whose grey standard deviation is below this are too flat to teach anything
#: (the black border of the retina, empty sky of the deep field)
MIN_STD = 12.0
MAX_TRIES = 200

Box = Tuple[int, int, int]  # top, left, side


def sample_box(rng: np.random.Generator, shape, size: int) -> Box:
    h, w = shape[:2]
    hi = min(h, w, 4 * size)
    side = int(round(np.exp(rng.uniform(np.log(size), np.log(hi))))) if hi > size else size
    side = min(max(side, size), hi)
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    return top, left, side


def crop_area(pixels: np.ndarray, box: Box, size: int) -> np.ndarray:
    top, left, side = box
    region = Image.fromarray(pixels[top:top + side, left:left + side])
    if side != size:
        region = region.resize((size, size), resample=Image.BOX)
    return np.asarray(region, dtype=np.uint8)


@dataclass
class CropSampler:
    """Draws crops that were never drawn before: every box, and every crop's
    pixels, is used at most once over the whole benchmark, so no crop is shared
    between the splits or between a real image and a fake's source."""

    rng: np.random.Generator
    size: int
    used_boxes: Dict[str, Set[Box]] = field(default_factory=dict)
    used_pixels: Set[bytes] = field(default_factory=set)

    def draw(self, photo: Photo) -> Tuple[Box, np.ndarray]:
        seen = self.used_boxes.setdefault(photo.name, set())
        for _ in range(MAX_TRIES):
            box = sample_box(self.rng, photo.pixels.shape, self.size)
            if box in seen:
                continue
            crop = crop_area(photo.pixels, box, self.size)
            digest = hashlib.sha256(crop.tobytes()).digest()
            if digest in self.used_pixels:
                continue
            if float((crop.astype(np.float64) @ np.array(GREY_WEIGHTS)).std()) < MIN_STD:
                continue
            seen.add(box)
            self.used_pixels.add(digest)
            return box, crop
        raise RuntimeError(f"could not draw a new, non-flat {self.size}px crop of photo {photo.name!r} "
                           f"after {MAX_TRIES} tries; use a smaller size or fewer images per class")
