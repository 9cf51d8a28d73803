"""Training augmentations, deterministic given (seed, epoch, index).

Each item draws from its own generator seeded by (seed, epoch, index), so
a result does not depend on which DataLoader worker loads it or on what
was loaded before: a resumed run sees exactly the pixels of an
uninterrupted one. Blur, JPEG and resize act on the decoded image before
patch selection (they change which patches are selected, as real-world
degradations would); the flip acts on the tiled patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .transforms import gaussian_blur, jpeg_recompress, rescale


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item's randomness (patch order and augmentation)."""
    return np.random.default_rng([seed % 2 ** 63, epoch % 2 ** 63, index % 2 ** 63, 0x6467])


@dataclass(frozen=True)
class Augment:
    flip_prob: float = 0.5
    blur_prob: float = 0.0
    jpeg_prob: float = 0.0
    resize_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 3.0)  # uniform range of the blur std, pixels
    jpeg_quality: tuple[int, int] = (30, 100)  # inclusive range of the JPEG quality
    resize_scale: tuple[float, float] = (0.5, 1.5)  # uniform range of the resize factor

    def __post_init__(self):
        for name in ("flip_prob", "blur_prob", "jpeg_prob", "resize_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}: a probability must be in [0, 1]")

    @classmethod
    def from_config(cls, cfg) -> "Augment":
        return cls(flip_prob=cfg.flip_prob, blur_prob=cfg.blur_prob, jpeg_prob=cfg.jpeg_prob,
                   resize_prob=cfg.resize_prob)

    def before_selection(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Resize, blur, then JPEG (compression last, as when images are shared), each with its probability.

        The same number of values is drawn whatever the outcome, so one
        choice does not shift the randomness of the others.
        """
        coins, scale, sigma, quality = self.draw_before_selection(rng)
        if coins[0] < self.resize_prob:
            image = rescale(image, scale)
        if coins[1] < self.blur_prob:
            image = gaussian_blur(image, sigma)
        if coins[2] < self.jpeg_prob:
            image = jpeg_recompress(image, quality)
        return image

    def draw_before_selection(self, rng: np.random.Generator) -> tuple[np.ndarray, float, float, int]:
        """The values before_selection draws (coins, resize scale, blur sigma, JPEG quality), in its
        order: a path that has no pixels at hand (decoding on the device) draws them to stay in step."""
        coins = rng.random(3)
        scale = rng.uniform(*self.resize_scale)
        sigma = rng.uniform(*self.blur_sigma)
        quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
        return coins, scale, sigma, quality

    @property
    def changes_pixels_before_selection(self) -> bool:
        """Whether before_selection can change an image (some blur, JPEG or resize probability)."""
        return max(self.resize_prob, self.blur_prob, self.jpeg_prob) > 0

    def after_selection(self, tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Horizontal flip of the 224x224 tile with probability flip_prob."""
        if rng.random() < self.flip_prob:
            return np.ascontiguousarray(tile[:, ::-1])
        return tile
