"""Patch selection and normalisation (docs/method.md#4-patch-selection), torch-free: numpy only.

The definition, for an HxWx3 uint8 RGB image:

1. Images with fewer than 49 whole 32x32 patches are mirror-padded first:
   every side shorter than 224 px is extended to 224 px at the bottom /
   right with numpy's "symmetric" mode (edge pixels repeated, then the
   image mirrored, as often as needed, so a 1x1 image works too). Padding
   copies existing pixels; it never resamples, which would add exactly the
   interpolation traces a detector looks for.
2. The image is cropped to a multiple of 32 on each side, keeping the
   top-left corner (the remainder at the bottom / right is dropped, which
   is what a plain loop over patch positions does).
3. It is cut into 32x32 patches, numbered in raster order (row by row).
4. Each patch is scored by spectral entropy: grey = (0.299 R + 0.587 G +
   0.114 B) / 255; P = |FFT2(grey)|^2; p = P / (sum P + 1e-12);
   H = -sum p log2(p + 1e-12), in bits, computed in float64.
5. The 24 lowest- and 25 highest-entropy patches are kept: ranks come from
   a stable sort of the entropies rounded to `RANK_DECIMALS` (9) decimals,
   so equal entropies rank by raster index (the lower index counts as lower
   entropy). The rounding makes mathematically equal entropies compare
   equal: mirrored patches (common in padded small images) have the same
   power spectrum, but float64 FFTs differ in the last bits depending on
   how they are evaluated, which would otherwise break the tie at random.
6. The 49 kept patches are laid out in a 7x7 grid (224x224): in raster
   order when `rng` is None (deterministic, independent of rounding
   noise), else in the order `rng.permutation(49)` draws from that list.
   At inference the order is `raster` (dgsnet's default: the same tile
   whatever the file is called) or `shuffle`, the published evaluation,
   which shuffles the tile at test time too; dgsnet makes that shuffle
   reproducible per image: the generator is seeded by (patch seed, CRC-32
   of the file's base name), so eval, predict and the exported runtime give
   one image the same layout wherever it is stored.

`select_patches` computes this vectorised: a float32 DFT of all patches
as matrix products (stage 1 along patch rows, stage 2 along patch
columns, a few BLAS calls per chunk of at most 256K pixels), then the exact
float64 FFT definition for the few patches whose float32 entropy lies
within `FAST_ENTROPY_TOL` bits of a selection boundary. Far from a boundary
the float32 error (< 1e-4 bits, see tests) cannot change a rank, so the
selection is exactly that of `select_patches_loop`, the per-patch loop of
the definition kept as the test oracle and benchmark baseline.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

PATCH = 32
GRID = 7
N_LOW = 24
N_HIGH = 25
N_SELECT = N_LOW + N_HIGH  # == GRID * GRID
TILE = PATCH * GRID  # 224
EPS = 1e-12
#: Entropies are ranked after rounding to this many decimals (step 5): far
#: coarser than float64 FFT noise (~1e-15 bits), far finer than real differences.
RANK_DECIMALS = 9
GREY_WEIGHTS = (0.299, 0.587, 0.114)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}

#: Bound on |float32 fast entropy - float64 exact entropy|, in bits. The
#: observed error is below 1e-5 bits (tests/data/test_select_patches.py
#: checks a 100x margin on adversarial patches); where two fast values within twice
#: this bound straddle a selection boundary, those patches are re-scored exactly.
FAST_ENTROPY_TOL = 1e-3

# Largest chunk (in pixels) of the fast pass: bounds memory (~40 B/pixel)
# and keeps the working set near the cache (256K was fastest here).
_CHUNK_PIXELS = 1 << 18


# ----------------------------------------------------------------- inputs

def as_rgb_array(image: Any) -> np.ndarray:
    """Validate an HxWx3 uint8 array (HxW greyscale is replicated); a PIL image is converted.

    Raises ValueError naming the problem for anything else.
    """
    if not isinstance(image, np.ndarray):
        if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image; PIL is imported only then
            from dgsnet.image.decode import pil_to_rgb

            return pil_to_rgb(image)
        raise ValueError(f"expected an HxWx3 uint8 numpy array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}; load files with dgsnet.image.decode.load_rgb")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}; "
                         "load files with dgsnet.image.decode.load_rgb (it drops alpha and expands greyscale)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has no pixels (shape {image.shape})")
    return image


def prepare_image(image: Any) -> np.ndarray:
    """Steps 1-2 of the definition: mirror-pad small images, crop top-left to a multiple of 32."""
    image = as_rgb_array(image)
    height, width = image.shape[:2]
    if (height // PATCH) * (width // PATCH) < N_SELECT:
        pad_h, pad_w = max(0, TILE - height), max(0, TILE - width)
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        height, width = image.shape[:2]
    return image[: height - height % PATCH, : width - width % PATCH]


def patch_grid(image: np.ndarray) -> np.ndarray:
    """View of a prepared (cropped) image as (rows, cols, 32, 32, 3) patches."""
    rows, cols = image.shape[0] // PATCH, image.shape[1] // PATCH
    return image.reshape(rows, PATCH, cols, PATCH, 3).swapaxes(1, 2)


def gather_patches(image: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(k, 32, 32, 3) copies of the patches with the given raster indices (only those are copied)."""
    grid = patch_grid(image)
    rows, cols = np.divmod(np.asarray(indices, dtype=np.int64), grid.shape[1])
    return grid[rows, cols]


# ---------------------------------------------------------- the definition

def grey_of(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) float64 grey in [0, 1] (step 4, elementwise, position-independent)."""
    rgb = rgb.astype(np.float64)
    return (GREY_WEIGHTS[0] * rgb[..., 0] + GREY_WEIGHTS[1] * rgb[..., 1] + GREY_WEIGHTS[2] * rgb[..., 2]) / 255.0


def _entropy_of_grey(grey: np.ndarray) -> np.ndarray:
    """Spectral entropy in bits of (..., 32, 32) float64 grey patches (the float64 definition)."""
    spectrum = np.fft.fft2(grey)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    p = power / (power.sum(axis=(-2, -1), keepdims=True) + EPS)
    return -(p * np.log2(p + EPS)).sum(axis=(-2, -1))


def spectral_entropy(patches: np.ndarray) -> np.ndarray:
    """Exact spectral entropy (bits, float64) of a batch of patches, in one batched FFT.

    `patches`: (..., 32, 32, 3) uint8 RGB or (..., 32, 32) float grey in [0, 1].
    Returns an array of shape `patches.shape[:-3]` (RGB) or `[:-2]` (grey).
    """
    patches = np.asarray(patches)
    if patches.dtype == np.uint8 and patches.shape[-3:] == (PATCH, PATCH, 3):
        return _entropy_of_grey(grey_of(patches))
    if patches.shape[-2:] == (PATCH, PATCH) and np.issubdtype(patches.dtype, np.floating):
        return _entropy_of_grey(patches.astype(np.float64, copy=False))
    raise ValueError(f"expected (..., 32, 32, 3) uint8 or (..., 32, 32) float patches, got {patches.dtype} {patches.shape}")


# ------------------------------------------------------------ fast pass

def _dft_matrices():
    """Real matrices of the 32-point DFT: stage 1 (rfft of rows) and stage 2 (full DFT of columns)."""
    m = np.arange(PATCH)
    k = np.arange(PATCH // 2 + 1)
    angle = 2 * np.pi * np.outer(m, k) / PATCH
    # grey = x . GREY_WEIGHTS / 255 is folded into later scaling; stage 1 maps a row x to [Re | Im].
    stage1 = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1) / 255.0
    angle2 = 2 * np.pi * np.outer(m, m) / PATCH
    cos, sin = np.cos(angle2), np.sin(angle2)
    stage2 = np.block([[cos, sin], [-sin, cos]])  # [Re; Im] = stage2 @ [a; b]
    # rfft columns 1..15 stand for two spectrum columns each (conjugate symmetry).
    weight = np.full(PATCH // 2 + 1, 2.0)
    weight[0] = weight[-1] = 1.0
    return stage1.astype(np.float32), stage2.astype(np.float32), weight.astype(np.float32)


_STAGE1, _STAGE2, _COLUMN_WEIGHT = _dft_matrices()
_GREY32 = np.array(GREY_WEIGHTS, dtype=np.float32)
_STAGE1_RE = np.ascontiguousarray(_STAGE1[:, : PATCH // 2 + 1])
_STAGE1_IM = np.ascontiguousarray(_STAGE1[:, PATCH // 2 + 1:])


def _fast_entropy_chunk(rows_rgb: np.ndarray) -> np.ndarray:
    """float32 spectral entropy of every patch in a band of whole patch rows -> (rows, cols)."""
    height, width = rows_rgb.shape[:2]
    rows, cols, half = height // PATCH, width // PATCH, PATCH // 2 + 1
    grey = rows_rgb.reshape(-1, 3).astype(np.float32) @ _GREY32  # x 255; 1/255 is folded into stage 1
    # Stage 1 writes its real and imaginary parts straight into the [Re; Im] x patch-row layout
    # stage 2 multiplies (each out[:, j] slice is a strided stack of contiguous matrices, so
    # matmul stays in BLAS): no transpose copy between the stages.
    a_b = np.empty((rows, 2, PATCH, cols, half), dtype=np.float32)
    grey = grey.reshape(rows, PATCH * cols, PATCH)
    np.matmul(grey, _STAGE1_RE, out=a_b[:, 0].reshape(rows, PATCH * cols, half))
    np.matmul(grey, _STAGE1_IM, out=a_b[:, 1].reshape(rows, PATCH * cols, half))
    spectrum = (_STAGE2 @ a_b.reshape(rows, 2 * PATCH, cols * half)).reshape(rows, 2, PATCH, cols, half)
    power = np.square(spectrum[:, 0])
    power += np.square(spectrum[:, 1])  # (rows, 32, cols, half)
    total = np.einsum("rmck,k->rc", power, _COLUMN_WEIGHT)  # (rows, cols)
    power /= (total + np.float32(EPS))[:, None, :, None]  # now p
    plogp = np.log2(power + np.float32(EPS))
    plogp *= power
    return -(plogp.sum(axis=1) @ _COLUMN_WEIGHT)


def fast_entropy(image: np.ndarray) -> np.ndarray:
    """float32 spectral entropy of all patches of a prepared image, raster order, as float64 (n,)."""
    height, width = image.shape[:2]
    band = max(1, _CHUNK_PIXELS // max(1, PATCH * width))  # patch rows per chunk
    out = [
        _fast_entropy_chunk(image[r * PATCH: (r + band) * PATCH])
        for r in range(0, height // PATCH, band)
    ]
    return np.concatenate(out, axis=0).astype(np.float64).ravel()


# -------------------------------------------------------------- selection

def _refined(maybe: np.ndarray, certain: np.ndarray, count: int, exact: dict, lowest: bool) -> np.ndarray:
    """`certain` plus the `count - len(certain)` most extreme of `maybe` by exact (entropy, index)."""
    need = count - certain.size
    if need <= 0 or maybe.size == 0:
        return certain
    keys = np.round(np.array([exact[i] for i in maybe.tolist()]), RANK_DECIMALS)
    ranked = maybe[np.lexsort((maybe, keys))]  # by exact entropy, ties by raster index
    pick = ranked[:need] if lowest else ranked[ranked.size - need:]
    return np.concatenate([certain, pick])


#: Patches re-scored exactly per batch: bounds memory when many entropies tie (a flat image
#: of 100 MP has ~100K equal ones) to ~100 MB of float64/complex FFT work.
_EXACT_CHUNK = 4096


def _exact_entropies(prepared: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Exact float64 entropies of the patches at `indices`, computed in bounded batches."""
    out = np.empty(indices.size, dtype=np.float64)
    for start in range(0, indices.size, _EXACT_CHUNK):
        part = indices[start:start + _EXACT_CHUNK]
        out[start:start + part.size] = spectral_entropy(gather_patches(prepared, part))
    return out


def _select_prepared(prepared: np.ndarray) -> np.ndarray:
    """The 49 kept raster indices of a prepared image, sorted (see `_select_low_high`)."""
    low, high = _select_low_high(prepared)
    return np.sort(np.concatenate([low, high]))


def _select_low_high(prepared: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the 24 lowest-, the 25 highest-entropy raster indices), each sorted.

    Rank by the fast entropies; re-score exactly only where that could change the selection.

    Each fast value e_i is within tol of the exact one, so two patches can swap
    ranks only if their fast values are within 2 tol. With a, b the 24th and
    25th lowest fast values, a patch with e < b - 2 tol is surely among the 24
    lowest and one with e > a + 2 tol surely not; the rest ("maybe", empty
    unless b - a <= 4 tol) are ranked by their exact entropies. Likewise for
    the 25 highest with c, d the 25th and 26th highest values.
    """
    fast = fast_entropy(prepared)
    n = fast.size
    order = np.argsort(fast, kind="stable")
    tol = 2 * FAST_ENTROPY_TOL
    lo_a, lo_b = fast[order[N_LOW - 1]], fast[order[N_LOW]]
    hi_c, hi_d = fast[order[n - N_HIGH]], fast[order[n - N_HIGH - 1]]
    if lo_b - lo_a > 2 * tol and hi_c - hi_d > 2 * tol:  # the common case: no boundary in doubt
        return np.sort(order[:N_LOW]), np.sort(order[n - N_HIGH:])
    low_certain = np.flatnonzero(fast < lo_b - tol)
    low_maybe = np.flatnonzero((fast >= lo_b - tol) & (fast <= lo_a + tol))
    high_certain = np.flatnonzero(fast > hi_d + tol)
    high_maybe = np.flatnonzero((fast >= hi_c - tol) & (fast <= hi_d + tol))
    maybe = np.union1d(low_maybe, high_maybe)
    exact = dict(zip(maybe.tolist(), _exact_entropies(prepared, maybe).tolist()))
    low = _refined(low_maybe, low_certain, N_LOW, exact, lowest=True)
    high = _refined(high_maybe, high_certain, N_HIGH, exact, lowest=False)
    return np.sort(low), np.sort(high)


@dataclass(frozen=True)
class PatchSelection:
    """Where the 49 patches `select_patches` keeps come from, for showing them (dgsnet serve's page).

    `low` / `high`: the raster indices of the 24 lowest- and 25 highest-entropy patches (sorted) in
    the prepared image, `rows` x `cols` patches of 32 px (after mirror padding and cropping);
    `padded`: the image was mirror-padded first. The raster-order tile holds `kept()` row by row.
    """

    low: tuple[int, ...]
    high: tuple[int, ...]
    rows: int
    cols: int
    padded: bool

    def kept(self) -> list[int]:
        return sorted(self.low + self.high)


def patch_selection(image: Any) -> PatchSelection:
    """The indices `select_patches(image)` tiles, split into its low- and high-entropy halves."""
    rgb = as_rgb_array(image)
    prepared = prepare_image(rgb)
    low, high = _select_low_high(prepared)
    padded = prepared.shape[0] > rgb.shape[0] or prepared.shape[1] > rgb.shape[1]
    return PatchSelection(low=tuple(int(i) for i in low), high=tuple(int(i) for i in high),
                          rows=prepared.shape[0] // PATCH, cols=prepared.shape[1] // PATCH, padded=padded)


def tile_patches(patches: np.ndarray) -> np.ndarray:
    """(49, 32, 32, 3) patches -> (224, 224, 3) image, filling the 7x7 grid row by row."""
    return patches.reshape(GRID, GRID, PATCH, PATCH, 3).swapaxes(1, 2).reshape(TILE, TILE, 3)


def _as_rng(rng) -> np.random.Generator | None:
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def select_patches(image: Any, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """HxWx3 uint8 array (or PIL image) -> 224x224x3 uint8 tile of the 49 selected patches.

    `rng` (a numpy Generator, or a seed) shuffles the patches; None keeps raster order.
    """
    prepared = prepare_image(image)
    keep = _select_prepared(prepared)
    rng = _as_rng(rng)
    if rng is not None:
        keep = keep[rng.permutation(N_SELECT)]
    return tile_patches(gather_patches(prepared, keep))


def select_patches_loop(image: Any, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """The definition, one patch at a time: the oracle and baseline of `select_patches`."""
    image = as_rgb_array(image)
    height, width = image.shape[:2]
    if (height // PATCH) * (width // PATCH) < N_SELECT:
        image = np.pad(image, ((0, max(0, TILE - height)), (0, max(0, TILE - width)), (0, 0)), mode="symmetric")
    patches, entropies = [], []
    for top in range(0, image.shape[0] - PATCH + 1, PATCH):
        for left in range(0, image.shape[1] - PATCH + 1, PATCH):
            patch = image[top: top + PATCH, left: left + PATCH]
            patches.append(patch)
            entropies.append(round(float(_entropy_of_grey(grey_of(patch))), RANK_DECIMALS))
    order = sorted(range(len(entropies)), key=lambda i: (entropies[i], i))
    keep = sorted(order[:N_LOW] + order[len(order) - N_HIGH:])
    rng = _as_rng(rng)
    if rng is not None:
        keep = [keep[j] for j in rng.permutation(N_SELECT)]
    tile = np.empty((TILE, TILE, 3), dtype=np.uint8)
    for slot, index in enumerate(keep):
        row, col = divmod(slot, GRID)
        tile[row * PATCH: (row + 1) * PATCH, col * PATCH: (col + 1) * PATCH] = patches[index]
    return tile


# ------------------------------------------------------------ patch order

PATCH_ORDERS = ("raster", "shuffle")
#: The published test script seeds its RNGs with 100 before evaluating.
PUBLISHED_PATCH_SEED = 100


#: `--preset published` of eval and predict: the published test loader's layout and decoding.
INFERENCE_PRESETS = {"published": {"patch_order": "shuffle", "patch_seed": PUBLISHED_PATCH_SEED, "decode": "pil"}}
INFERENCE_DEFAULTS = {"patch_order": "raster", "patch_seed": PUBLISHED_PATCH_SEED, "decode": "dgsnet"}


def inference_options(preset: str | None = None, **given) -> dict:
    """patch_order / patch_seed / decode: defaults < preset < what the caller gave (None = not given)."""
    if preset is not None and preset not in INFERENCE_PRESETS:
        raise ValueError(f"preset {preset!r}: choose one of {', '.join(INFERENCE_PRESETS)}")
    chosen = {k: v for k, v in given.items() if v is not None}
    return {**INFERENCE_DEFAULTS, **INFERENCE_PRESETS.get(preset, {}), **chosen}


def check_patch_order(order: str) -> str:
    if order not in PATCH_ORDERS:
        raise ValueError(f"patch order {order!r}: choose one of {', '.join(PATCH_ORDERS)}")
    return order


def layout_rng(order: str, name: str | os.PathLike, seed: int = PUBLISHED_PATCH_SEED) -> np.random.Generator | None:
    """The layout generator of one image at inference: None for raster order, else seeded by
    (seed, CRC-32 of the file's base name), so a file's tile does not depend on where it is stored."""
    if check_patch_order(order) == "raster":
        return None
    key = zlib.crc32(os.path.basename(os.fspath(name)).encode("utf-8", "surrogateescape"))
    return np.random.default_rng([seed % 2 ** 63, key, 0x7368])


# ---------------------------------------------------------- normalisation

def normalize(tile: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """HxWx3 (or NxHxWx3) uint8 -> CHW (or NCHW) float32: (x / 255 - mean) / std."""
    tile = np.asarray(tile)
    if tile.ndim not in (3, 4) or tile.shape[-1] != 3:
        raise ValueError(f"expected HxWx3 or NxHxWx3 pixels, got shape {tile.shape}")
    std64 = np.asarray(std, dtype=np.float64)
    scale = (1.0 / (255.0 * std64)).astype(np.float32)[:, None, None]
    bias = (-np.asarray(mean, dtype=np.float64) / std64).astype(np.float32)[:, None, None]
    channels_first = np.moveaxis(tile, -1, -3)
    out = np.empty(channels_first.shape, dtype=np.float32)
    np.multiply(channels_first, scale, out=out)
    out += bias
    return out


@dataclass(frozen=True)
class Preprocess:
    """Inference-time preprocessing: patch selection, then normalisation. The one implementation
    behind the torch datasets (dgsnet.data), `dgsnet predict` and the ONNX runtime (which builds it
    from a detector's metadata: dgsnet_export.runtime.preprocessing.preprocess_for).

    norm names the mean/std (NORMS); `mean`/`std` given explicitly (an exported file's metadata)
    override it. patch_selection=False takes a size x size image as it is; normalization=False
    returns the 224x224x3 uint8 tile (for a graph that normalises itself).
    Training augmentations live in dgsnet.data.Augment.
    """

    norm: str = "imagenet"
    patch_order: str = "raster"  # raster, or shuffle (the published evaluation; see layout_rng)
    patch_seed: int = PUBLISHED_PATCH_SEED
    decode: str = "dgsnet"  # how files are decoded before this (dgsnet.image.decode.load_rgb's decode)
    mean: tuple[float, float, float] | None = None  # None: NORMS[norm]
    std: tuple[float, float, float] | None = None
    patch_selection: bool = True
    normalization: bool = True
    size: int = 224  # the input side without patch selection

    def __post_init__(self):
        if self.mean is None or self.std is None:
            if self.norm not in NORMS:
                raise ValueError(f"norm={self.norm!r}: choose one of {sorted(NORMS)}")
            mean, std = NORMS[self.norm]
            object.__setattr__(self, "mean", self.mean if self.mean is not None else mean)
            object.__setattr__(self, "std", self.std if self.std is not None else std)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        check_patch_order(self.patch_order)

    def tile(self, image: Any, rng: np.random.Generator | int | None = None) -> np.ndarray:
        if not self.patch_selection:
            tile = as_rgb_array(image)
            if tile.shape[:2] != (self.size, self.size):
                raise ValueError(f"image is {tile.shape[1]}x{tile.shape[0]}; this detector takes "
                                 f"{self.size}x{self.size} inputs without patch selection")
            return tile
        return select_patches(image, rng)

    def normalize(self, tile: np.ndarray) -> np.ndarray:
        if not self.normalization:
            return np.ascontiguousarray(tile, dtype=np.uint8)
        return normalize(tile, self.mean, self.std)

    def __call__(self, image: Any, rng: np.random.Generator | int | None = None, path=None) -> np.ndarray:
        """HxWx3 uint8 image -> the model input (`path` seeds a shuffled layout)."""
        if rng is None and self.patch_selection and self.patch_order == "shuffle":
            if path is None:
                raise ValueError("a shuffled patch layout is seeded by the file name: pass path=")
            rng = layout_rng(self.patch_order, path, self.patch_seed)
        return self.normalize(self.tile(image, rng))
