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

Host reads: none while a batch is queued. `select_patches_queued` runs steps 1-3 on the device and
returns a PendingTiles: patch counts come from the shapes (host data, copied from pinned memory),
short rows are padded by a scatter to host-computed slots (a boolean mask would need its count read
back), permutations and flips are checked on the host before their copy (a tensor already on an
accelerator by a device-side assertion), normalisation constants are copied once per device. What
the host cannot avoid knowing is, per image, whether step 2 must consult numpy (or, in float32
mode, whether step 3 must re-rank): no device computation reproduces numpy's last-bit rounding, so
these flags are copied to pinned memory behind the selection's kernels and `resolve()` reads them.
The trainer resolves a batch only after queueing the next batch's selection, so the host waits for
kernels queued before the previous step's and the device's queue never drains; images in doubt
(rare) are then re-ranked with numpy and their tiles rebuilt. `select_patches_torch` resolves at
once: on CUDA it waits for the flags every call (one wait; float32 mode a second one for a batch
with images to re-rank, whose float64 re-ranking has flags of its own, hence the trainer's float64).
Memory: ~25 bytes per pixel of the batch in float64 (grey + spectrum), ~12 in float32: split
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


def _to_device(host: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device` with no host wait. A CUDA copy from ordinary (pageable) memory
    waits for the device's queue to drain; from pinned memory it is queued behind it."""
    device = torch.device(device)
    if host.device == device:
        return host
    if device.type == "cuda" and host.device.type == "cpu":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


class _Layout:
    """The patch counts of a batch's images, known on the host (from the shapes), and their device
    copies: counts on the device, and where each image's patches go in the (N, max count) table."""

    def __init__(self, counts: list[int], device):
        self.counts = counts
        self.width = max(counts)
        n = len(counts)
        if len(set(counts)) == 1:
            self.count_t = torch.full((n,), counts[0], dtype=torch.long, device=device)
            self.slots = None
        else:
            self.count_t = _to_device(torch.tensor(counts, dtype=torch.long), device)
            slots = np.concatenate([i * self.width + np.arange(c) for i, c in enumerate(counts)])
            self.slots = _to_device(torch.from_numpy(slots), device)

    def padded(self, values: torch.Tensor, fill) -> torch.Tensor:
        """Concatenated per-image values -> (N, max count), short rows filled with `fill` (a scatter
        to host-computed slots: a boolean mask would need its count read back from the device)."""
        if self.slots is None:
            return values.reshape(len(self.counts), self.width)
        out = values.new_full((len(self.counts), self.width), fill)
        out.view(-1).scatter_(0, self.slots, values)
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


class _Float64Ranks:
    """The float64 ranking of a batch, all on the device: kept indices, and per image whether a
    doubtful key is within one step of a boundary key (`suspect`: only then can numpy rank otherwise)."""

    def __init__(self, entropy: torch.Tensor, layout: _Layout):
        keys, doubt = _keys(entropy)
        self.keys, self.doubt, self.layout = layout.padded(keys, _PAD_KEY), layout.padded(doubt, False), layout
        sorted_keys, order = torch.sort(self.keys, dim=1, stable=True)  # ties: lower raster index first
        self.keep = _keep_from_order(order, layout.count_t)
        lo_a, lo_b, hi_d, hi_c = (sorted_keys.gather(1, pos) for pos in _boundaries(layout.count_t))
        keys = self.keys
        near = ((keys >= lo_a - 1) & (keys <= lo_b + 1)) | ((keys >= hi_d - 1) & (keys <= hi_c + 1))
        self.suspect = (self.doubt & near).any(dim=1)

    def exact(self, rows, patch_rows) -> torch.Tensor:
        """`keep` with the given (suspect) images re-ranked with numpy's keys for their doubtful
        patches: reads those images' keys from the device (the host's part; rare)."""
        counts = self.layout.counts
        keep = self.keep.cpu()
        for i in rows:
            row = self.keys[i, :counts[i]].cpu().numpy()
            which = np.flatnonzero(self.doubt[i, :counts[i]].cpu().numpy())
            exact = spectral_entropy(patch_rows(i, which))
            row[which] = np.round(exact * _SCALE)  # same key as the rounding numpy ranks by, times 1e9
            ranked = np.lexsort((np.arange(row.size), row))
            keep[i] = torch.from_numpy(np.sort(np.concatenate([ranked[:N_LOW], ranked[row.size - N_HIGH:]])))
        return keep.to(self.keep.device)


def _trusted_float32(entropy: torch.Tensor, layout: _Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 49) kept indices by float32 entropies, and (N,) bool: no boundary within 4 tol."""
    values = layout.padded(entropy.to(torch.float64), float("inf"))
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    lo_a, lo_b, hi_d, hi_c = (sorted_values.gather(1, pos).squeeze(1) for pos in _boundaries(layout.count_t))
    gap = 4 * FAST_ENTROPY_TOL  # each value within tol of the exact one, as numpy's fast pass
    return _keep_from_order(order, layout.count_t), (lo_b - lo_a > gap) & (hi_c - hi_d > gap)


def _flags_to_host(flags: torch.Tensor):
    """(host copy of `flags` once `event` has passed, event): a CUDA copy is queued into pinned
    memory behind the kernels that compute the flags; elsewhere the tensor itself (event None)."""
    if flags.device.type != "cuda":
        return flags, None
    host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
    host.copy_(flags, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(flags.device))
    return host, event


class _Staged:
    """A batch's selection queued on the device: `keep` (N, 49), exact unless `flags` marks images
    that the host must look at (`fix(rows)` -> the exact keep)."""

    def __init__(self, keep, flags, fix, per_image, batch):
        self.keep, self.fix, self.per_image, self.batch = keep, fix, per_image, batch
        self.flags, self.event = _flags_to_host(flags)

    def resolve(self) -> tuple[torch.Tensor, bool]:
        """(the exact keep, changed?): waits for the flags' copy (queued at staging), reads them."""
        if self.event is not None:
            self.event.synchronize()
        flags = self.flags if self.flags.device.type == "cpu" else self.flags.cpu()
        rows = np.flatnonzero(flags.numpy())
        if rows.size == 0:
            return self.keep, False
        return self.fix(rows.tolist()), True


def _as_permutations(permutations, n_images: int, device) -> torch.Tensor | None:
    """(N, 49) long permutations on `device`. Host input (a CPU tensor, arrays) is checked on the
    host; a tensor already on an accelerator is checked there by a device-side assertion (no read)."""
    if permutations is None:
        return None
    what = (f"permutations must be {n_images} permutations of range({N_SELECT}) (rng.permutation(49), as "
            "dgsnet.image.preprocess.select_patches draws), or None per image")
    if isinstance(permutations, torch.Tensor):
        perm = permutations.to(dtype=torch.long)
    else:
        rows = list(permutations)
        if len(rows) != n_images:
            raise ValueError(f"permutations: {len(rows)} given for {n_images} images")
        perm = torch.stack([torch.arange(N_SELECT) if r is None else torch.as_tensor(np.asarray(r), dtype=torch.long)
                            for r in rows])
    if perm.shape != (n_images, N_SELECT):
        raise ValueError(what)
    if perm.device.type == "cpu":  # host data: checked with numpy, outside torch's dispatch
        if not np.array_equal(np.sort(perm.numpy(), axis=1), np.broadcast_to(np.arange(N_SELECT), perm.shape)):
            raise ValueError(what)
    else:
        torch._assert_async((perm.sort(dim=1).values == torch.arange(N_SELECT, device=perm.device)).all(), what)
    return _to_device(perm, device)


def _as_flips(flips, n_images: int, device) -> torch.Tensor:
    if not isinstance(flips, torch.Tensor):
        flips = torch.as_tensor(np.asarray(flips, dtype=bool))
    if flips.shape != (n_images,):
        raise ValueError(f"flips: expected {n_images} booleans (one per image), got shape {tuple(flips.shape)}")
    return _to_device(flips.to(torch.bool), device)


def select_indices_torch(images: Any, entropy_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N, 49) raster indices (ascending) of the patches the definition keeps, on the images' device."""
    return _stage(images, entropy_dtype).resolve()[0]


def _stage(images: Any, entropy_dtype: torch.dtype) -> _Staged:
    """Queues a batch's selection on its device; reads nothing back (see the module docstring)."""
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
    device = per_image[0].device
    layout = _Layout([(p.shape[0] // PATCH) * (p.shape[1] // PATCH) for p in per_image], device)
    entropy = patch_entropy_torch(grey)  # every patch of the batch in one FFT

    def patch_rows(i: int, which: np.ndarray) -> np.ndarray:
        return gather_patches(per_image[i].cpu().numpy(), which)

    if entropy_dtype == torch.float64:
        ranks = _Float64Ranks(entropy, layout)
        return _Staged(ranks.keep, ranks.suspect, lambda rows: ranks.exact(rows, patch_rows), per_image, batch)

    keep32, trusted = _trusted_float32(entropy, layout)

    def redo(rows: list[int]) -> torch.Tensor:
        # ties near a boundary: rank those images by their float64 entropies (the float64 path,
        # whose own doubt check is read at once: float32 mode pays a second wait for such batches)
        sub_grey = torch.cat([_grey(_patches(per_image[i]), torch.float64) for i in rows])
        sub = _Float64Ranks(patch_entropy_torch(sub_grey), _Layout([layout.counts[i] for i in rows], device))
        sub_keep = _Staged(sub.keep, sub.suspect, lambda sub_rows: sub.exact(
            sub_rows, lambda j, which: patch_rows(rows[j], which)), None, None).resolve()[0]
        keep = keep32.clone()
        keep[_to_device(torch.tensor(rows, dtype=torch.long), device)] = sub_keep
        return keep

    return _Staged(keep32, ~trusted, redo, per_image, batch)


def training_draws(rng: np.random.Generator, flip_prob: float) -> tuple[np.ndarray, bool]:
    """(permutation, flip?) drawn from an item's generator exactly as the CPU path draws them after
    Augment.before_selection: select_patches' rng.permutation(49), then Augment.after_selection's
    rng.random() < flip_prob. Pass them to select_patches_torch(permutations=, flips=)."""
    permutation = rng.permutation(N_SELECT)
    return permutation, bool(rng.random() < flip_prob)


class PendingTiles:
    """Tiles queued on the device (select_patches_queued). `tiles` are built from the device's
    ranking and already equal the definition's unless an image is in doubt; `resolve()` waits for
    the copy of the per-image doubt flags (queued with the selection), re-ranks the images in doubt
    on the host, and returns the exact tiles."""

    def __init__(self, staged: _Staged, build):
        self._staged, self._build = staged, build
        self.tiles = build(staged.keep)
        self.rebuilt = False  # True once resolve() had to change the selection of an image

    def resolve(self) -> torch.Tensor:
        if self._staged is not None:
            keep, self.rebuilt = self._staged.resolve()
            if self.rebuilt:
                self.tiles = self._build(keep)
            self._staged = self._build = None
        return self.tiles


def select_patches_queued(images: Any, permutations=None, *, flips=None, entropy_dtype: torch.dtype = torch.float64,
                          normalize: str | tuple | None = None) -> PendingTiles:
    """select_patches_torch without any read from the device: the selection and its tiles are queued
    and a PendingTiles returned; call its resolve() later (the trainer: one batch later, so the wait
    is for kernels queued before the previous step's) for the tiles of the definition."""
    staged = _stage(images, entropy_dtype)
    n_images = staged.keep.shape[0]
    device = staged.per_image[0].device
    perm = _as_permutations(permutations, n_images, device)
    flips = None if flips is None else _as_flips(flips, n_images, device)
    per_image, batch = staged.per_image, staged.batch

    def build(keep: torch.Tensor) -> torch.Tensor:
        if perm is not None:
            keep = keep.gather(1, perm)
        if batch is not None:
            rows = torch.arange(keep.shape[0], device=keep.device)[:, None]
            chosen = _patches(batch)[rows, keep]  # (N, 49, 32, 32, 3)
        else:
            chosen = torch.stack([_patches(p)[k] for p, k in zip(per_image, keep)])
        tiles = chosen.reshape(-1, GRID, GRID, PATCH, PATCH, 3).permute(0, 5, 1, 3, 2, 4).reshape(-1, 3, TILE, TILE)
        if flips is not None:
            tiles = torch.where(flips[:, None, None, None], tiles.flip(-1), tiles)
        if normalize is None:
            return tiles.contiguous()
        return normalize_torch(tiles, normalize)

    return PendingTiles(staged, build)


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

    On CUDA this waits once for the batch's doubt flags (select_patches_queued defers that wait).
    """
    return select_patches_queued(images, permutations, flips=flips, entropy_dtype=entropy_dtype,
                                 normalize=normalize).resolve()


def _norm_constants(norm, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) as (3, 1, 1) float32 on `device`: built on the host and copied once per device
    and norm (cached), so normalising a batch copies nothing."""
    if isinstance(norm, str):
        if norm not in NORMS:
            raise ValueError(f"normalize={norm!r}: choose one of {', '.join(sorted(NORMS))}, or give (mean, std)")
        mean, std = NORMS[norm]
    else:
        mean, std = norm
    std64 = np.asarray(std, dtype=np.float64)
    scale = (1.0 / (255.0 * std64)).astype(np.float32)
    bias = (-np.asarray(mean, dtype=np.float64) / std64).astype(np.float32)
    key = (str(torch.device(device)), scale.tobytes(), bias.tobytes())
    if key not in _NORM_CACHE:
        _NORM_CACHE[key] = tuple(_to_device(torch.from_numpy(v.copy())[:, None, None], device) for v in (scale, bias))
    return _NORM_CACHE[key]


_NORM_CACHE: dict = {}


def normalize_torch(tiles: torch.Tensor, norm: str | tuple = "imagenet") -> torch.Tensor:
    """(N, 3, H, W) uint8 -> float32 (x / 255 - mean) / std with dgsnet.image.preprocess.normalize's
    float32 constants and its two roundings (multiply, then add), so the CPU result is bit-identical."""
    scale, bias = _norm_constants(norm, tiles.device)
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


__all__ = ["ENTROPY_DTYPES", "KEY_DOUBT", "PendingTiles", "decode_jpeg_batch", "normalize_torch",
           "patch_entropy_torch", "prepare_torch", "select_indices_torch", "select_patches_device",
           "select_patches_queued", "select_patches_torch", "training_draws"]
