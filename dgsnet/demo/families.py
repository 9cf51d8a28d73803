"""Synthetic "generator" families of the demo benchmark (numpy + scipy only).

None of these is a real generative model. Each family takes a clean crop,
throws away detail by area-downsampling it to a low resolution, and
"generates" it back at full size with its own upsampling pipeline, which
leaves the kind of fingerprint real generators leave:

- ``tconv``: two stride-2 transposed convolutions with a fixed random 3x3
  kernel (uneven overlap: the 2x2 output phases get different gains), the
  checkerboard of GAN decoders; peaks at period 2 and 4 in the spectrum.
- ``nearest_blur``: nearest-neighbour x4 then a Gaussian blur; very little
  high-frequency energy, faint period-4 blocks.
- ``pixelshuffle``: sub-pixel convolution x2: each of the four output phases
  has its own fixed "learned" 3x3 filter and colour mixing; period-2 colour
  fringes, even on grey photos.
- ``noise_denoise``: cubic x2, Gaussian noise, then a 3x3 median filter
  twice, a crude stand-in for a noisy sampler followed by denoising;
  median-root texture (most pixels equal their own 3x3 median).
- ``bilinear_jpeg``: bilinear x2 then JPEG quality 70; 8x8 block edges.

The fixed filters ("weights") of a family come from a seed of its own, so a
family is the same "model" whatever the dataset seed; only per-image noise
depends on the caller's generator.
"""
from __future__ import annotations

import io
from typing import Callable, Dict

import numpy as np
from PIL import Image
from scipy import ndimage

FamilyFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def area_down(img: np.ndarray, factor: int) -> np.ndarray:
    """Exact area averaging by an integer factor: HxWxC float -> H/f x W/f x C."""
    h, w, c = img.shape
    if h % factor or w % factor:
        raise ValueError(f"image {h}x{w} is not divisible by {factor}: crop it to a multiple of {factor} first")
    return img.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def _family_rng(name: str) -> np.random.Generator:
    # fixed per family, independent of the dataset seed: the family is one "model"
    return np.random.default_rng([0xD65, sum(ord(ch) * 131 ** i for i, ch in enumerate(name)) % (2**32)])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- tconv
def _tconv_kernels():
    rng = _family_rng("tconv")
    kernels = []
    for _ in range(2):
        base = np.array([0.5, 1.0, 0.5])
        k = np.outer(base, base) + rng.normal(0.0, 0.05, (3, 3))
        k *= 4.0 / k.sum()  # mean gain 1 over the four output phases
        kernels.append(k)
    return kernels


_TCONV = _tconv_kernels()


def _tconv2x(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution, same kernel on every channel (zero insertion + conv)."""
    h, w, c = x.shape
    up = np.zeros((2 * h, 2 * w, c), dtype=np.float64)
    up[::2, ::2] = x
    out = np.empty_like(up)
    for ch in range(c):
        out[:, :, ch] = ndimage.correlate(up[:, :, ch], k, mode="reflect")
    return out


def tconv(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = area_down(img, 4)
    for k in _TCONV:
        x = _tconv2x(x, k)
    return _to_uint8(x)


# ---------------------------------------------------------------- nearest_blur
def nearest_blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = area_down(img, 4)
    x = np.repeat(np.repeat(x, 4, axis=0), 4, axis=1)
    x = ndimage.gaussian_filter(x, sigma=(1.1, 1.1, 0), mode="reflect")
    return _to_uint8(x)


# ---------------------------------------------------------------- pixelshuffle
def _pixelshuffle_weights():
    rng = _family_rng("pixelshuffle")
    filters, mixes = {}, {}
    for i in range(2):
        for j in range(2):
            # bilinear interpolation at sub-pixel offset (-1/4 or +1/4) as the "trained" filter,
            # plus a fixed perturbation; each phase's gain is 1 +- ~2%
            wy = np.array([0.25, 0.75, 0.0]) if i == 0 else np.array([0.0, 0.75, 0.25])
            wx = np.array([0.25, 0.75, 0.0]) if j == 0 else np.array([0.0, 0.75, 0.25])
            f = np.outer(wy, wx) + rng.normal(0.0, 0.05, (3, 3))
            filters[i, j] = f * (1.0 + rng.normal(0.0, 0.02)) / f.sum()  # phase gains differ slightly
            m = np.eye(3) + rng.normal(0.0, 0.05, (3, 3))
            mixes[i, j] = m / m.sum(axis=1, keepdims=True)
    return filters, mixes


_PS_FILTERS, _PS_MIX = _pixelshuffle_weights()


def pixelshuffle(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = area_down(img, 2)
    h, w, c = x.shape
    out = np.empty((2 * h, 2 * w, c), dtype=np.float64)
    for (i, j), f in _PS_FILTERS.items():
        phase = np.stack([ndimage.correlate(x[:, :, ch], f, mode="reflect") for ch in range(c)], axis=2)
        out[i::2, j::2] = phase @ _PS_MIX[i, j].T
    return _to_uint8(out)


# ---------------------------------------------------------------- noise_denoise
def _resize_up2(x: np.ndarray, resample) -> np.ndarray:
    h, w, _ = x.shape
    return np.asarray(Image.fromarray(_to_uint8(x)).resize((2 * w, 2 * h), resample=resample), dtype=np.float64)


def noise_denoise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = _resize_up2(area_down(img, 2), Image.BICUBIC)
    x = x + rng.normal(0.0, 8.0, x.shape)
    for _ in range(2):  # an iterated median "denoiser": the output is close to a median root
        x = ndimage.median_filter(x, size=(3, 3, 1), mode="reflect")
    return _to_uint8(x)


# ---------------------------------------------------------------- bilinear_jpeg
def bilinear_jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = _to_uint8(_resize_up2(area_down(img, 2), Image.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=70, subsampling=2, optimize=False)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


#: name -> function(clean HxWx3 float image in [0, 255], per-image rng) -> HxWx3 uint8
FAMILIES: Dict[str, FamilyFn] = {
    "tconv": tconv,
    "nearest_blur": nearest_blur,
    "pixelshuffle": pixelshuffle,
    "noise_denoise": noise_denoise,
    "bilinear_jpeg": bilinear_jpeg,
}


def generate(family: str, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Applies `family` to a clean HxWx3 uint8 crop; returns HxWx3 uint8 of the same size."""
    if family not in FAMILIES:
        raise ValueError(f"unknown generator family {family!r}: choose from {', '.join(FAMILIES)}")
    out = FAMILIES[family](clean.astype(np.float64), rng)
    assert out.shape == clean.shape and out.dtype == np.uint8
    return out
