"""Pixel-level image degradations shared by training augmentation and evaluation perturbations.

HxWx3 uint8 in, HxWx3 uint8 out, numpy + Pillow only, deterministic for
given parameters (Pillow's encoders and filters have no randomness).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter


def jpeg_recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as baseline JPEG at `quality` (1-100, 4:2:0 as Pillow's default) and decode again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` pixels (Pillow's GaussianBlur radius is the std)."""
    if sigma <= 0:
        return image
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=float(sigma))), dtype=np.uint8)


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize both sides by `scale` (bilinear, Pillow's antialiasing when shrinking), at least 1 px."""
    height, width = image.shape[:2]
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype=np.uint8)
