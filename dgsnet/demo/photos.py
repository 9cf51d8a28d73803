"""The real photos of the synthetic demo benchmark: skimage.data, offline.

Each photo has one caption describing its content; the caption is shared by
every crop of the photo, real or generated, so the text branch sees the same
caption distribution in both classes (as BLIP captions of matched data would).
Greyscale photos are replicated to three channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List

import numpy as np


@dataclass(frozen=True)
class Photo:
    name: str
    caption: str
    pixels: np.ndarray  # HxWx3 uint8


def _first(x):
    # stereo_motorcycle returns (left, right, disparity)
    return x[0] if isinstance(x, tuple) else x


# name -> (loader taking the skimage.data module, caption). Only real photographs
# (no rendered test patterns such as colorwheel or logo); loaders that need a
# download (pooch) simply fail offline and are skipped.
_CATALOGUE: "dict[str, tuple[Callable, str]]" = {
    "astronaut": (lambda d: d.astronaut(), "a photo of an astronaut in a spacesuit"),
    "chelsea": (lambda d: d.chelsea(), "a photo of a tabby cat"),
    "coffee": (lambda d: d.coffee(), "a photo of a cup of coffee on a saucer"),
    "rocket": (lambda d: d.rocket(), "a photo of a rocket on a launch pad"),
    "motorcycle_left": (lambda d: d.stereo_motorcycle()[0], "a photo of a motorcycle in a workshop, seen from the left"),
    "motorcycle_right": (lambda d: d.stereo_motorcycle()[1], "a photo of a motorcycle in a workshop, seen from the right"),
    "hubble_deep_field": (lambda d: d.hubble_deep_field(), "a telescope image of distant galaxies"),
    "retina": (lambda d: d.retina(), "a fundus photograph of a human retina"),
    "immunohistochemistry": (lambda d: d.immunohistochemistry(), "a microscope image of stained tissue"),
    "camera": (lambda d: d.camera(), "a black and white photo of a cameraman"),
    "coins": (lambda d: d.coins(), "a black and white photo of old coins"),
    "moon": (lambda d: d.moon(), "a black and white photo of the lunar surface"),
    "grass": (lambda d: d.grass(), "a close-up photo of grass"),
    "gravel": (lambda d: d.gravel(), "a close-up photo of gravel"),
    "brick": (lambda d: d.brick(), "a photo of a brick wall"),
    "clock": (lambda d: d.clock(), "a photo of a wall clock"),
}


def _to_rgb_uint8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def load_photos(min_side: int) -> List[Photo]:
    """All catalogue photos that load offline and whose shorter side is >= min_side.

    Real crops are only ever downscaled (never upsampled, which would leave an
    interpolation fingerprint on the *real* class), hence the size filter.
    """
    from skimage import data

    photos = []
    for name, (loader, caption) in _CATALOGUE.items():
        try:
            pixels = _to_rgb_uint8(_first(loader(data)))
        except Exception:  # noqa: BLE001 - a photo that needs a download is simply not used
            continue
        if min(pixels.shape[:2]) >= min_side:
            photos.append(Photo(name, caption, pixels))
    return photos
