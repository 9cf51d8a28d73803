"""Simple per-image statistics that expose each demo family's fingerprint.

Used by the tests (each family must really leave its fingerprint) and for
sanity checks of the demo data (is there a learnable signal, and does it
differ between families?). Each takes an HxWx3 uint8 image, returns a float.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from dgsnet.metrics import roc_auc
from dgsnet.image.preprocess import GREY_WEIGHTS


def _grey(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array(GREY_WEIGHTS)


def _power(channel: np.ndarray) -> np.ndarray:
    """Power spectrum over the non-redundant half plane (real input): rows all
    frequencies, columns 0 .. W/2 (Nyquist included for even W)."""
    return np.abs(np.fft.rfft2(channel - channel.mean())) ** 2


def _band(h: int, w: int) -> np.ndarray:
    fy = np.abs(np.fft.fftfreq(h))[:, None]
    fx = np.abs(np.fft.rfftfreq(w))[None, :]
    return np.maximum(fy, fx) >= 0.25


def nyquist_peak(img: np.ndarray) -> float:
    """log10 of the power at the three period-2 frequencies over the median
    power of the high-frequency band (>= 1/4 cycle/pixel), max over R, G, B.
    A periodic 2x2 pattern (checkerboard, sub-pixel phases) gives a spike."""
    h, w, _ = img.shape
    band = _band(h, w)
    best = -np.inf
    for ch in range(3):
        p = _power(img[:, :, ch].astype(np.float64))
        spike = p[h // 2, 0] + p[0, w // 2] + p[h // 2, w // 2]
        best = max(best, np.log10((spike / 3 + 1e-9) / (np.median(p[band]) + 1e-9)))
    return float(best)


def high_freq_fraction(img: np.ndarray) -> float:
    """log10 of the fraction of (non-DC) spectral power at >= 1/4 cycle/pixel."""
    g = _grey(img)
    p = _power(g)
    band = _band(*g.shape)
    return float(np.log10(p[band].sum() / (p.sum() + 1e-9) + 1e-12))


def median_root_fraction(img: np.ndarray) -> float:
    """Fraction of green-channel pixels that equal their own 3x3 median, among
    pixels whose 3x3 neighbourhood is not flat. Median-filtered images are
    nearly "root" signals of the median filter; photos are not. (One channel:
    a per-channel median filter leaves the property in each channel.)"""
    x = img[:, :, 1].astype(np.int16)
    med = ndimage.median_filter(x, size=3, mode="reflect")
    spread = ndimage.maximum_filter(x, size=3) - ndimage.minimum_filter(x, size=3)
    busy = spread > 2
    return float((med[busy] == x[busy]).mean()) if busy.any() else 0.0


def jpeg_blockiness(img: np.ndarray) -> float:
    """Mean absolute difference across 8-pixel block boundaries over the mean
    inside blocks (grey, both directions). ~1 for photos, > 1 after JPEG."""
    g = _grey(img)
    dx = np.abs(np.diff(g, axis=1))
    dy = np.abs(np.diff(g, axis=0))
    at_x = (np.arange(dx.shape[1]) % 8) == 7
    at_y = (np.arange(dy.shape[0]) % 8) == 7
    boundary = dx[:, at_x].mean() + dy[at_y, :].mean()
    inside = dx[:, ~at_x].mean() + dy[~at_y, :].mean()
    return float(boundary / (inside + 1e-9))


#: the statistic that should separate each family's fakes from real crops,
#: and the sign: +1 if fakes score higher, -1 if lower
FAMILY_STATISTIC = {
    "tconv": (nyquist_peak, +1),
    "nearest_blur": (high_freq_fraction, -1),
    "pixelshuffle": (nyquist_peak, +1),
    "noise_denoise": (median_root_fraction, +1),
    "bilinear_jpeg": (jpeg_blockiness, +1),
}


def auc(real_scores, fake_scores) -> float:
    """ROC AUC of "fake scores higher" (ties count one half): dgsnet.metrics.roc_auc on two samples."""
    real, fake = np.asarray(real_scores, np.float64), np.asarray(fake_scores, np.float64)
    return roc_auc(np.concatenate([real, fake]), np.r_[np.zeros(real.size), np.ones(fake.size)])