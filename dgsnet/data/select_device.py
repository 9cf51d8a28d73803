"""Patch selection on the device: dgsnet.image.preprocess.select_patches for a batch of torch tensors.

The definition is the numpy one (docs/method.md#4-patch-selection; `select_patches` and its
per-patch oracle `select_patches_loop`): mirror-pad small images, crop top-left to a multiple of 32,
score every 32x32 patch by float64 spectral entropy rounded to `RANK_DECIMALS`, keep the 24 lowest
and 25 highest by (rounded entropy, raster index), tile them in raster order (or a given
permutation). `select_patches_torch` returns the same tiles, bit for bit, on the CPU and on CUDA:

1. The entropies of ALL patches of the batch come from one batched `torch.fft.rfft2` in
   `entropy_dtype` (float64 by default; float32 is faster on GPUs).
2. float64: ranks come from integer keys rint(entropy * 1e9) and a stable sort, so ties go to the
   lower raster index as in numpy. A float64 FFT differs from numpy's in the last bits (~1e-14
   bits), which can change a key only for an entropy within `KEY_DOUBT` of a rounding half-point;
   where such a "doubtful" patch could move a selection boundary (its key within one step of a
   boundary key), its key is recomputed with numpy's definition (a handful of patches, rare).
3. float32: as numpy's fast pass, ranks are trusted where the 24th/25th lowest and 25th/26th highest
   values are more than 4 `FAST_ENTROPY_TOL` apart; the other images (ties near a boundary: flat
   regions, mirrored patches of padded images) are re-scored by step 2.

Costs: one host sync per call to find images in doubt (one more in float32 mode when some are);
memory ~ 25 bytes per pixel of the batch in float64 (grey + spectrum), ~12 in float32: split
batches of very large images. The caller keeps the batch's images on one device.

Decoding, EXIF rotation and augmentation stay on the CPU side (dgsnet.image.decode, dgsnet.data.augment);
`decode_jpeg_batch` optionally decodes JPEG bytes on the GPU (nvjpeg: pixels differ slightly from
libjpeg's, so it is not the reference decoder).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from dgsnet.image.preprocess import (EPS, FAST_ENTROPY_TOL, GREY_WEIGHTS, GRID,
                                     N_HIGH, N_LOW, N_SELECT, NORMS, PATCH, RANK_DECIMALS, TILE, gather_patches,
                                     spectral_entropy)

ENTROPY_DTYPES = (torch.float64, torch.float32)
_SCALE = 10.0 ** RANK_DECIMALS
#: A float64 entropy within this many bits of a rounding half-point (k + 0.5) * 1e-9 may round to
#: another key than numpy's: 100x the observed torch-vs-numpy difference (~1e-14 bits).
KEY_DOUBT = 1e-12
_PAD_KEY = float(2 ** 60)  # above every key (entropies are < 11 bits -> keys < 1.1e10)


def _as_images(images: Any) -> tuple[list[torch.Tensor], bool]:
    """A stacked (N, H, W, 3) uint8 tensor or a list of (H, W, 3) ones -> (list, stacked?)."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a (N, H, W, 3) uint8 tensor, got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("empty batch: no images to select patches from")
        return list(images.unbind(0)), True
    images = list(images)
    if not images:
        raise ValueError("empty batch: no images to select patches from")
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 \
                or image.shape[-1] != 3:
            what = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image {i}: expected an (H, W, 3) uint8 tensor, got {what}; greyscale must be "
                             "expanded to RGB first (dgsnet.image.decode.load_rgb does)")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"image {i} has no pixels (shape {tuple(image.shape)})")
        if image.device != images[0].device:
            raise ValueError(f"image {i} is on {image.device}, image 0 on {images[0].device}: "
                             "put the batch on one device")
    return images, False


def _symmetric_index(size: int, length: int, device) -> torch.Tensor:
    """Indices of numpy's "symmetric" padding of a side of `size` pixels to `length` (mirror with
    the edge repeated, periodic with period 2 * size, so a 1-pixel side works too)."""
    r = torch.arange(length, device=device) % (2 * size)
    return torch.where(r < size, r, 2 * size - 1 - r)


def prepare_torch(image: torch.Tensor) -> torch.Tensor:
    """Steps 1-2 of the definition on an (..., H, W, 3) tensor (dgsnet.image.preprocess.prepare_image)."""
    height, width = image.shape[-3:-1]
    if (height // PATCH) * (width // PATCH) < N_SELECT:
        # Padding copies pixels (never resamples): an index gather reproduces np.pad(mode="symmetric").
        if height < TILE:
            image = image.index_select(-3, _symmetric_index(height, TILE, image.device))
        if width < TILE:
            image = image.index_select(-2, _symmetric_index(width, TILE, image.device))
        height, width = image.shape[-3:-1]
    return image[..., : height - height % PATCH, : width - width % PATCH, :]


def _patches(prepared: torch.Tensor) -> torch.Tensor:
    """(..., H, W, C) -> (..., rows * cols, 32, 32, C) view-or-copy in raster order."""
    *lead, height, width, channels = prepared.shape
    rows, cols = height // PATCH, width // PATCH
    grid = prepared.reshape(*lead, rows, PATCH, cols, PATCH, channels).transpose(-4, -3)
    return grid.reshape(*lead, rows * cols, PATCH, PATCH, channels)


def _grey(rgb: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., 3) uint8 -> (...) grey in [0, 1], the numpy definition's arithmetic in `dtype`."""
    rgb = rgb.to(dtype)
    return (GREY_WEIGHTS[0] * rgb[..., 0] + GREY_WEIGHTS[1] * rgb[..., 1] + GREY_WEIGHTS[2] * rgb[..., 2]) / 255.0


def patch_entropy_torch(grey: torch.Tensor) -> torch.Tensor:
    """Spectral entropy in bits of (P, 32, 32) grey patches, one batched rfft2, in grey's dtype.

    rfft2 keeps columns 0..16 of the spectrum; columns 1..15 stand for two (conjugate symmetry).
    """
    spectrum = torch.fft.rfft2(grey)
    power = spectrum.real.square() + spectrum.imag.square()
    weight = torch.full((PATCH // 2 + 1,), 2.0, dtype=grey.dtype, device=grey.device)
    weight[0] = weight[-1] = 1.0
    total = (power * weight).sum(dim=(-2, -1), keepdim=True)
    p = power / (total + EPS)
    return -((p * torch.log2(p + EPS)) * weight).sum(dim=(-2, -1))


def _padded(values: torch.Tensor, counts: list[int], fill: float) -> torch.Tensor:
    """Concatenated per-image values -> (N, max count), short rows filled with `fill`."""
    if len(set(counts)) == 1:
        return values.reshape(len(counts), counts[0])
    out = values.new_full((len(counts), max(counts)), fill)
    lengths = torch.tensor(counts, device=values.device)[:, None]
    mask = torch.arange(max(counts), device=values.device)[None, :] < lengths
    out[mask] = values
    return out


def _boundaries(counts: torch.Tensor):
    """Sorted positions of the 24th/25th lowest and 25th/26th highest: (lo_a, lo_b, hi_d, hi_c)."""
    n = counts[:, None]
    return (torch.full_like(n, N_LOW - 1), torch.full_like(n, N_LOW), n - N_HIGH - 1, n - N_HIGH)


def _keep_from_order(order: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(N, 49) raster indices: the first 24 and last 25 of each row's order (count long), sorted."""
    high_pos = counts[:, None] - N_HIGH + torch.arange(N_HIGH, device=order.device)[None, :]
    keep = torch.cat([order[:, :N_LOW], order.gather(1, high_pos)], dim=1)
    return keep.sort(dim=1).values


def _keys(entropy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 entropies -> (integer-valued rank keys, doubtful?) of the same shape."""
    scaled = entropy * _SCALE
    keys = torch.round(scaled)
    doubt = ((scaled - keys).abs() - 0.5).abs() < KEY_DOUBT * _SCALE
    return keys, doubt


def _select_float64(entropy: torch.Tensor, counts: list[int], patch_rows) -> torch.Tensor:
    """(N, 49) kept raster indices from float64 entropies of all patches (concatenated)."""
    keys, doubt = _keys(entropy)
    keys = _padded(keys, counts, _PAD_KEY)
    doubt = _padded(doubt, counts, False)
    count_t = torch.tensor(counts, device=entropy.device)
    sorted_keys, order = torch.sort(keys, dim=1, stable=True)  # ties: lower raster index first
    keep = _keep_from_order(order, count_t)
    # A doubtful key can change the selection only within one step of a boundary key.
    lo_a, lo_b, hi_d, hi_c = (sorted_keys.gather(1, pos) for pos in _boundaries(count_t))
    near = ((keys >= lo_a - 1) & (keys <= lo_b + 1)) | ((keys >= hi_d - 1) & (keys <= hi_c + 1))
    suspect = torch.nonzero((doubt & near).any(dim=1)).flatten().tolist()  # the one sync
    if not suspect:
        return keep
    keep = keep.cpu()
    for i in suspect:
        # Recompute the doubtful keys with numpy's definition, then rank this image as numpy does.
        row = keys[i, :counts[i]].cpu().numpy()
        which = np.flatnonzero(doubt[i, :counts[i]].cpu().numpy())
        exact = spectral_entropy(patch_rows(i, which))
        row[which] = np.round(exact * _SCALE)  # same key as the rounding numpy ranks by, times 1e9
        ranked = np.lexsort((np.arange(row.size), row))
        keep[i] = torch.from_numpy(np.sort(np.concatenate([ranked[:N_LOW], ranked[row.size - N_HIGH:]])))
    return keep.to(entropy.device)


def _trusted_float32(entropy: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 49) kept indices by float32 entropies, and (N,) bool: no boundary within 4 tol."""
    values = _padded(entropy.to(torch.float64), counts, float("inf"))
    count_t = torch.tensor(counts, device=entropy.device)
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    lo_a, lo_b, hi_d, hi_c = (sorted_values.gather(1, pos).squeeze(1) for pos in _boundaries(count_t))
    gap = 4 * FAST_ENTROPY_TOL  # each value within tol of the exact one, as numpy's fast pass
    return _keep_from_order(order, count_t), (lo_b - lo_a > gap) & (hi_c - hi_d > gap)


def _as_permutations(permutations, n_images: int, device) -> torch.Tensor | None:
    if permutations is None:
        return None
    if isinstance(permutations, torch.Tensor):
        perm = permutations.to(device=device, dtype=torch.long)
    else:
        rows = list(permutations)
        if len(rows) != n_images:
            raise ValueError(f"permutations: {len(rows)} given for {n_images} images")
        perm = torch.stack([torch.arange(N_SELECT) if r is None else torch.as_tensor(np.asarray(r), dtype=torch.long)
                            for r in rows]).to(device)
    if perm.shape != (n_images, N_SELECT) or not bool((perm.sort(dim=1).values
                                                        == torch.arange(N_SELECT, device=device)).all()):
        raise ValueError(f"permutations must be {n_images} permutations of range({N_SELECT}) "
                         "(rng.permutation(49), as dgsnet.image.preprocess.select_patches draws), or None per image")
    return perm


def select_indices_torch(images: Any, entropy_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N, 49) raster indices (ascending) of the patches the definition keeps, on the images' device."""
    return _select(images, entropy_dtype)[0]


def _select(images: Any, entropy_dtype: torch.dtype):
    if entropy_dtype not in ENTROPY_DTYPES:
        raise ValueError(f"entropy_dtype={entropy_dtype}: choose torch.float64 or torch.float32")
    listed, stacked = _as_images(images)
    if stacked:  # one size: pad / crop the whole batch at once
        batch = prepare_torch(images)
        per_image = list(batch.unbind(0))
        grey = _grey(_patches(batch), entropy_dtype).reshape(-1, PATCH, PATCH)
    else:
        batch = None
        per_image = [prepare_torch(x) for x in listed]
        grey = torch.cat([_grey(_patches(p), entropy_dtype) for p in per_image])
    counts = [(p.shape[0] // PATCH) * (p.shape[1] // PATCH) for p in per_image]
    entropy = patch_entropy_torch(grey)  # every patch of the batch in one FFT

    def patch_rows(i: int, which: np.ndarray) -> np.ndarray:
        return gather_patches(per_image[i].cpu().numpy(), which)

    if entropy_dtype == torch.float64:
        keep = _select_float64(entropy, counts, patch_rows)
    else:
        keep, trusted = _trusted_float32(entropy, counts)
        redo = torch.nonzero(~trusted).flatten().tolist()
        if redo:  # ties near a boundary: rank those images by their float64 entropies
            sub_grey = torch.cat([_grey(_patches(per_image[i]), torch.float64) for i in redo])
            sub_keep = _select_float64(patch_entropy_torch(sub_grey), [counts[i] for i in redo],
                                       lambda j, which: patch_rows(redo[j], which))
            keep[torch.tensor(redo, device=keep.device)] = sub_keep
    return keep, per_image, batch


def training_draws(rng: np.random.Generator, flip_prob: float) -> tuple[np.ndarray, bool]:
    """(permutation, flip?) drawn from an item's generator exactly as the CPU path draws them after
    Augment.before_selection: select_patches' rng.permutation(49), then Augment.after_selection's
    rng.random() < flip_prob. Pass them to select_patches_torch(permutations=, flips=)."""
    permutation = rng.permutation(N_SELECT)
    return permutation, bool(rng.random() < flip_prob)


def select_patches_torch(images: Any, permutations=None, *, flips=None, entropy_dtype: torch.dtype = torch.float64,
                         normalize: str | tuple | None = None) -> torch.Tensor:
    """Batch patch selection on the images' device: the tiles of dgsnet.image.preprocess.select_patches.

    images: a (N, H, W, 3) uint8 tensor (one size: the fast path) or a list of (H, W, 3) uint8
        tensors of any sizes, all on one device.
    permutations: None (raster order, as select_patches(image) without rng), or per image a
        permutation of range(49) (or None): pass rng.permutation(49) to lay out a tile as
        select_patches(image, rng) does with the same generator state.
    flips: None, or per image a bool: mirror that tile left-right (Augment.after_selection's flip).
    entropy_dtype: torch.float64 (default) or torch.float32; the selection is the same.
    normalize: None -> (N, 3, 224, 224) uint8 tiles; "imagenet" / "clip" / (mean, std) ->
        float32 (x / 255 - mean) / std, bit-identical on the CPU to dgsnet.image.preprocess.normalize.
    """
    keep, per_image, batch = _select(images, entropy_dtype)
    perm = _as_permutations(permutations, keep.shape[0], keep.device)
    if perm is not None:
        keep = keep.gather(1, perm)
    if batch is not None:
        rows = torch.arange(keep.shape[0], device=keep.device)[:, None]
        chosen = _patches(batch)[rows, keep]  # (N, 49, 32, 32, 3)
    else:
        chosen = torch.stack([_patches(p)[k] for p, k in zip(per_image, keep)])
    tiles = chosen.reshape(-1, GRID, GRID, PATCH, PATCH, 3).permute(0, 5, 1, 3, 2, 4).reshape(-1, 3, TILE, TILE)
    if flips is not None:
        flips = torch.as_tensor(np.asarray(flips, dtype=bool) if not isinstance(flips, torch.Tensor) else flips,
                                dtype=torch.bool, device=tiles.device)
        if flips.shape != (tiles.shape[0],):
            raise ValueError(f"flips: expected {tiles.shape[0]} booleans (one per image), "
                             f"got shape {tuple(flips.shape)}")
        tiles = torch.where(flips[:, None, None, None], tiles.flip(-1), tiles)
    if normalize is None:
        return tiles.contiguous()
    return normalize_torch(tiles, normalize)


def normalize_torch(tiles: torch.Tensor, norm: str | tuple = "imagenet") -> torch.Tensor:
    """(N, 3, H, W) uint8 -> float32 (x / 255 - mean) / std with dgsnet.image.preprocess.normalize's
    float32 constants and its two roundings (multiply, then add), so the CPU result is bit-identical."""
    if isinstance(norm, str):
        if norm not in NORMS:
            raise ValueError(f"normalize={norm!r}: choose one of {', '.join(sorted(NORMS))}, or give (mean, std)")
        mean, std = NORMS[norm]
    else:
        mean, std = norm
    std64 = np.asarray(std, dtype=np.float64)
    scale = torch.from_numpy((1.0 / (255.0 * std64)).astype(np.float32)).to(tiles.device)[:, None, None]
    bias = (-np.asarray(mean, dtype=np.float64) / std64).astype(np.float32)
    bias = torch.from_numpy(bias).to(tiles.device)[:, None, None]
    out = tiles.to(torch.float32) * scale
    out += bias
    return out


def select_patches_device(images: Any, device: str | torch.device = "auto", permutations=None,
                          norm: str | None = "imagenet") -> torch.Tensor:
    """Config-free entry point: numpy HxWx3 uint8 arrays (or tensors) -> normalised model inputs on
    `device` ("auto": CUDA when available, else the CPU), float32 entropies on CUDA, float64 on the CPU."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    tensors = [torch.as_tensor(np.ascontiguousarray(x)) if not isinstance(x, torch.Tensor) else x for x in images]
    for i, t in enumerate(tensors):
        if t.dim() == 2:  # greyscale, as dgsnet.image.preprocess.as_rgb_array expands it
            tensors[i] = t[..., None].expand(*t.shape, 3)
    tensors = [t.to(device, non_blocking=True) for t in tensors]
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    return select_patches_torch(tensors, permutations, entropy_dtype=dtype, normalize=norm)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """An HxWx3 image as stored -> as PIL's ImageOps.exif_transpose turns it for an EXIF orientation (1-8)."""
    if orientation in (5, 6, 7, 8):  # the turned ones: a quarter turn, then maybe a mirror
        image = image.transpose(0, 1)  # 5: the transpose itself
        if orientation == 6:
            image = image.flip(1)
        elif orientation == 7:
            image = image.flip(0).flip(1)
        elif orientation == 8:
            image = image.flip(0)
        return image
    if orientation == 2:
        return image.flip(1)
    if orientation == 3:
        return image.flip(0).flip(1)
    if orientation == 4:
        return image.flip(0)
    return image


def decode_jpegs_on(data: Sequence[torch.Tensor], device: str | torch.device,
                    orientations: Sequence[int] | None = None) -> list[torch.Tensor | None]:
    """1-D uint8 tensors of JPEG files -> HxWx3 uint8 RGB on `device`, turned by their EXIF
    orientations (dgsnet.image.decode.jpeg_for_device reads them), None where the decoder refuses a
    file. torchvision.io.decode_jpeg: nvjpeg on CUDA (pixels a few levels off libjpeg's), on the CPU
    libjpeg-turbo, whose pixels are Pillow's."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    orientations = list(orientations) if orientations is not None else [1] * len(data)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec's; they work, and a warning per
        # batch would flood the log (the docs say so once)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            out = list(decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the whole batch call: find it
            out = []
            for item in data:
                try:
                    out.append(decode_jpeg(item, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
    return [None if x is None else orient(x.permute(1, 2, 0), o).contiguous() for x, o in zip(out, orientations)]


def decode_jpeg_batch(data: Sequence[bytes], device: str | torch.device = "cuda") -> list[torch.Tensor]:
    """JPEG bytes -> (H, W, 3) uint8 RGB tensors on `device`: nvjpeg (torchvision.io.decode_jpeg on CUDA)
    when torchvision and a GPU are there, else dgsnet's CPU decoder (dgsnet.image.decode.load_rgb).

    The GPU decoder ignores EXIF orientation and its IDCT differs from libjpeg by a few levels per
    pixel: use it for throughput, not where tiles must equal the CPU pipeline's.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            decode_jpeg = None
        if decode_jpeg is not None:
            encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
            return [x.permute(1, 2, 0) for x in decoded]
    from dgsnet.image.decode import load_rgb

    return [torch.from_numpy(load_rgb(d)).to(device) for d in data]


__all__ = ["ENTROPY_DTYPES", "KEY_DOUBT", "decode_jpeg_batch", "normalize_torch",
           "patch_entropy_torch", "prepare_torch", "select_indices_torch", "select_patches_device",
           "select_patches_torch", "training_draws"]
