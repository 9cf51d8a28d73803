"""The torch Dataset over a list of labelled image files: decode, degrade, select patches, normalise."""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import sys
import threading
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch._utils import ExceptionWrapper
from torch.utils.data import Dataset, get_worker_info

from dgsnet.blas import set_blas_threads
from dgsnet.image.decode import (DEFAULT_MAX_PIXELS, ImageLoadError, PixelBudget, decoded, jpeg_for_device,
                                 resolve_pixel_budget, worker_share)
from dgsnet.image.preprocess import (N_SELECT, NORMS, PUBLISHED_PATCH_SEED, check_patch_order, layout_rng, normalize,
                                     select_patches)

from .augment import Augment, item_rng
from .layouts import Sample
from .perturb import Perturbation

log = logging.getLogger("dgsnet.data")


class LoadFailure(ExceptionWrapper):
    """What a DataLoader worker returns, under `strict`, for an unreadable image instead of raising.

    Raising in a worker reaches the user as torch's "Caught ImageLoadError in DataLoader worker
    process 0. Original Traceback ..." text. This marker travels to the main process instead
    (`collate` below hands it on as the batch), and because it is an ExceptionWrapper
    the DataLoader calls `reraise()` there, which raises the original one-line ImageLoadError.
    """

    def __init__(self, error: ImageLoadError):
        # no super().__init__: it would format the worker's traceback, which is what we avoid
        self.exc_type, self.where = ImageLoadError, "in a DataLoader worker"
        self.path, self.reason, self.fix = error.path, error.reason, error.fix
        self.exc_msg = str(error)

    def error(self) -> ImageLoadError:
        return ImageLoadError(self.path, self.reason, self.fix)

    def reraise(self):
        raise self.error() from None


class FolderDataset(Dataset):
    """Items are (image float32 (3, 224, 224), label 0/1, caption, path), or None for an unreadable
    file, which is logged with its path and counted in `skipped` (ImageLoadError under `strict`).

    Training (`augment` given) shuffles the patch layout and augments with
    randomness drawn from (seed, epoch, index) only; without `augment` the
    layout is `patch_order`: raster (deterministic), or shuffle (the
    published evaluation), seeded per file by dgsnet.image.preprocess.layout_rng.
    `decode` is dgsnet.image.decode.load_rgb's (dgsnet, or pil as published).

    Selection on the device (`with_deferred_selection()`, the trainer's --patch-selection device):
    items are then (pixels HxWx3 uint8 after the pre-selection augmentation, label, caption, path,
    layout permutation (49,), flip) and `collate_unselected` batches them; the trainer selects the
    patches of the whole batch on its device (dgsnet.data.select_device), drawing nothing itself: the
    permutation and flip come from the item's generator exactly as the CPU path draws them, so the
    tiles are the same bits either way.

    Memory: `pixel_budget` (megapixels, or "off"; default DGSNET_PIXEL_BUDGET, else a share of the
    machine's memory, see dgsnet.image.decode) is resolved here, in the process that builds the
    dataset, so a bad setting fails before any worker starts. Each DataLoader worker process
    decodes one image at a time and takes total / num_workers of it as its per-image limit (the
    main process, with num_workers=0, the whole of it): an image above the share is unreadable
    (skipped, or ImageLoadError under `strict`). `jpeg_draft` decodes a JPEG above `max_pixels`
    reduced (off by default, see dgsnet.image.decode); such files are logged and listed in `reduced`.
    """

    def __init__(self, samples: Sequence[Sample], captions: Sequence[str], *, norm: str = "imagenet",
                 augment: Augment | None = None, perturb: Perturbation | None = None, seed: int = 0,
                 strict: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str = "",
                 patch_order: str = "raster", patch_seed: int = PUBLISHED_PATCH_SEED, decode: str = "dgsnet",
                 pixel_budget=None, jpeg_draft: bool = False):
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
        self.pixel_budget, self.budget_source = resolve_pixel_budget(pixel_budget)
        self.jpeg_draft = bool(jpeg_draft)
        self.defer_selection = False  # True: items carry pixels, not tiles (see with_deferred_selection)
        self.device_jpeg = False  # True (deferred only): JPEG files travel encoded, decoded on the device
        self.skipped: list[str] = []  # unreadable files met by this process
        self.reduced: list[str] = []  # JPEGs this process decoded in draft mode (jpeg_draft)
        self._budget_key, self._budget = None, None

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self):
        # a PixelBudget holds a lock; each process makes its own (spawned workers unpickle this)
        return {**self.__dict__, "_budget_key": None, "_budget": None}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def process_budget(self) -> PixelBudget | None:
        """This process's per-image budget: the total split over the DataLoader's workers, set in the
        worker itself (get_worker_info), so every loader built on this dataset gets it right."""
        if self.pixel_budget is None:
            return None
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        key = (os.getpid(), workers)  # a forked worker must not keep its parent's share
        if self._budget_key != key:
            share = worker_share(self.pixel_budget, workers)
            where = f"{self.budget_source}, split over {workers} DataLoader worker(s)" if info is not None \
                else self.budget_source
            self._budget_key, self._budget = key, PixelBudget(share, where, split=workers > 1)
        return self._budget

    @contextlib.contextmanager
    def _pixels(self, index: int):
        """(pixels after perturbation and pre-selection augmentation, generator of the layout (None:
        raster), training?) of item `index`, inside the decode's pixel-budget reservation."""
        path = self.paths[index]
        with decoded(path, self.max_pixels, self.decode, budget=self.process_budget(),
                     jpeg_draft=self.jpeg_draft, on_reduce=lambda name, *_: self.reduced.append(name)) as rgb:
            if self.perturb is not None:
                rgb = self.perturb(rgb)
            rng = self._layout_rng(index)
            if self.augment is None:
                yield rgb, rng, False
                return
            yield self.augment.before_selection(rgb, rng), rng, True

    def tile(self, index: int):
        """The 224x224x3 uint8 patch tile of item `index` (raises ImageLoadError for a bad file)."""
        # The reservation spans decoding and patch selection: both peak while the pixels are held.
        with self._pixels(index) as (rgb, rng, train):
            tile = select_patches(rgb, rng)
            return self.augment.after_selection(tile, rng) if train else tile

    def unselected(self, index: int) -> tuple[np.ndarray, np.ndarray, bool, int]:
        """(pixels, permutation, flip, EXIF orientation) of item `index`: what `tile` selects from,
        lays out and flips, drawn from the generator in `tile`'s order (select_patches' permutation,
        then the flip). With `device_jpeg`, a JPEG the device can decode comes as its file's bytes
        (1-D) and the orientation to turn it by; other pixels come decoded, orientation 1."""
        if self.device_jpeg and self.perturb is None:
            encoded = jpeg_for_device(self.paths[index], self.max_pixels, self.decode)
            if encoded is not None:
                data, orientation = encoded
                rng = self._layout_rng(index)
                if self.augment is not None:
                    self.augment.draw_before_selection(rng)  # nothing to apply (checked), but in step
                return (data, *self._layout(rng, self.augment is not None), orientation)
        with self._pixels(index) as (rgb, rng, train):
            return (np.ascontiguousarray(rgb), *self._layout(rng, train), 1)

    def _layout(self, rng, train: bool) -> tuple[np.ndarray, bool]:
        """(permutation, flip) drawn as `tile` draws them: select_patches' permutation, then the flip."""
        order = rng.permutation(N_SELECT) if rng is not None else np.arange(N_SELECT)
        return order, bool(rng.random() < self.augment.flip_prob) if train else False

    def _layout_rng(self, index: int):
        """The generator `_pixels` hands out for item `index` (before any augmentation draws)."""
        if self.augment is None:
            return layout_rng(self.patch_order, self.paths[index], self.patch_seed)
        return item_rng(self.seed, self.epoch, index)

    def __getitem__(self, index: int):
        try:
            if self.defer_selection:
                pixels, order, flip, orientation = self.unselected(index)
                return (torch.from_numpy(pixels), self.labels[index], self.captions[index], self.paths[index],
                        torch.from_numpy(order.astype(np.int64)), flip, orientation)
            tile = self.tile(index)
        except ImageLoadError as exc:
            if self.strict:
                if get_worker_info() is not None:
                    return LoadFailure(exc)  # raised in the main process, in one line (see LoadFailure)
                raise
            self.skipped.append(self.paths[index])
            log.warning("skipped unreadable image (%d in %s so far): %s", len(self.skipped),
                        self.name or "this dataset", exc)
            return None
        image = torch.from_numpy(normalize(tile, self.mean, self.std))
        return image, self.labels[index], self.captions[index], self.paths[index]

    def with_deferred_selection(self, device_jpeg: bool = False) -> "FolderDataset":
        """The same dataset with items that leave patch selection to the consumer (see the class doc),
        and with `device_jpeg` JPEG decoding too (the trainer's --jpeg-decoder device; no augmentation
        may change pixels before selection then, as those run on decoded pixels here).
        It shares the `skipped` and `reduced` lists with this one: the trainer reports them."""
        if device_jpeg and self.augment is not None and self.augment.changes_pixels_before_selection:
            raise ValueError("decoding JPEGs on the device leaves no pixels in the DataLoader workers for the "
                             "blur/JPEG/resize augmentations: set --blur-prob, --jpeg-prob and --resize-prob "
                             "to 0, or use --jpeg-decoder cpu")
        clone = copy.copy(self)
        clone.defer_selection, clone.device_jpeg = True, bool(device_jpeg)
        return clone

    def with_perturbation(self, perturb: Perturbation | None) -> "FolderDataset":
        """The same files and captions under another evaluation perturbation (no folder re-scan)."""
        clone = copy.copy(self)
        clone.perturb, clone.skipped, clone.reduced = perturb, [], []
        return clone

    def counts(self) -> tuple[int, int]:
        """(real, generated) image counts."""
        fake = sum(self.labels)
        return len(self.labels) - fake, fake


def worker_init(worker_id: int) -> None:
    """DataLoader worker_init_fn: one thread per worker, for torch and for numpy's BLAS; stop signals
    left to the main process.

    torch already runs its workers with one intra-op thread, but numpy's OpenBLAS (patch selection
    multiplies matrices) keeps a pool as wide as the machine in each forked worker: with the main
    process's threads that oversubscribes the cores (dgsnet.blas).

    Ctrl-C and SLURM's SIGTERM reach the whole process group. The main process saves what it has and
    shuts the workers down itself, so a worker ignores them; and when the main process stops in the
    middle of receiving a batch, the worker's multiprocessing thread that hands over the tensor's
    file descriptor finds the connection closed: that is a consequence of the stop, not an error to
    print under the command's one-line message."""
    torch.set_num_threads(1)
    set_blas_threads(1)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    # multiprocessing's fd-sharing thread reports through sys.excepthook, other threads through
    # threading.excepthook
    sys.excepthook, threading.excepthook = _quiet_sys_hook, _quiet_thread_hook


_HUNG_UP = (BrokenPipeError, ConnectionResetError, ConnectionRefusedError, EOFError)
_sys_excepthook, _thread_excepthook = sys.excepthook, threading.excepthook


def _quiet_sys_hook(exc_type, exc, tb) -> None:
    """sys.excepthook in a DataLoader worker: an error from a peer that hung up says nothing."""
    if not issubclass(exc_type, _HUNG_UP):
        _sys_excepthook(exc_type, exc, tb)


def _quiet_thread_hook(args) -> None:
    """threading.excepthook in a DataLoader worker: the same for threads' uncaught errors."""
    if not issubclass(args.exc_type, _HUNG_UP):
        _thread_excepthook(args)


def collate(samples: list) -> tuple | None:
    """Stacks (image, label, caption, path) samples; drops None (an unreadable image was skipped).

    A sample that is a deferred error (an ExceptionWrapper, e.g. dgsnet.data.dataset.LoadFailure:
    an unreadable image under --strict-data in a DataLoader worker) becomes the batch: the
    DataLoader re-raises it in the main process, as the original one-line error; outside a worker
    it is raised here.
    """
    samples = _readable(samples)
    if not isinstance(samples, list) or not samples:
        return samples or None  # the deferred error, or None when every image was unreadable
    images, labels, captions, paths = zip(*samples)
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.float32), list(captions), list(paths)


class Unselected(NamedTuple):
    """A batch's images before patch selection (FolderDataset.with_deferred_selection's items)."""
    pixels: torch.Tensor | list  # (N, H, W, 3) uint8 when all share one size, else N (H, W, 3) tensors,
    # or 1-D uint8 ones: a JPEG file's bytes, to be decoded on the device (device_jpeg)
    permutations: torch.Tensor  # (N, 49) int64: the tile layout of each image
    flips: torch.Tensor  # (N,) bool: mirror the tile left-right
    orientations: torch.Tensor  # (N,) int64: EXIF orientation to turn an encoded JPEG by (1: as stored)


def collate_unselected(samples: list) -> tuple | None:
    """`collate` for items of a deferred-selection dataset: (Unselected, labels, captions, paths)."""
    samples = _readable(samples)
    if not isinstance(samples, list) or not samples:
        return samples or None
    pixels, labels, captions, paths, orders, flips, orientations = zip(*samples)
    # one size: one stacked tensor (one copy to the device, the batched selection's fast path)
    same = all(p.dim() == 3 and p.shape == pixels[0].shape for p in pixels)
    unselected = Unselected(torch.stack(pixels) if same else list(pixels), torch.stack(orders),
                            torch.tensor(flips, dtype=torch.bool), torch.tensor(orientations, dtype=torch.int64))
    return unselected, torch.as_tensor(labels, dtype=torch.float32), list(captions), list(paths)


def _readable(samples: list):
    """The samples that are not None, or the deferred error that becomes the whole batch (raised
    here when not in a DataLoader worker)."""
    failed = _deferred_error(samples)
    if failed is not None:
        if get_worker_info() is None:
            failed.reraise()
        return failed
    return [s for s in samples if s is not None]


def _deferred_error(samples: list):
    """The first sample that is a deferred error (torch's ExceptionWrapper), else None."""
    return next((s for s in samples if isinstance(s, ExceptionWrapper)), None)
