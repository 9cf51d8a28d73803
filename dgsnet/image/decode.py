"""Robust image decoding to HxWx3 uint8 RGB, torch-free (numpy + Pillow only).

Every image the detector sees, in training, evaluation and the export
runtime, goes through `load_rgb`, so every pixel convention lives here:

- EXIF orientation is applied (the pixels are turned the way a viewer shows them).
- Greyscale ("1", "L", "I;16", ...) is replicated to three channels.
- Transparency (RGBA, LA, PA, palette with a transparent index) is
  composited on white, which is how a viewer shows it; fully opaque alpha
  leaves the pixels unchanged, so it is the same as dropping alpha there.
- 16-bit samples (greyscale "I;16*", "I") keep their high byte, v >> 8:
  this is what Pillow itself does for 48-bit RGB PNGs, so both kinds agree.
  Float ("F") images are read as [0, 1] when their maximum is <= 1, else
  as [0, 255], clipped.
- CMYK, YCbCr and other colour modes use Pillow's conversion to RGB
  (embedded ICC profiles are ignored).
- Animated or multi-page files give their first frame.
- A decompression-bomb guard refuses images above `max_pixels` (width x
  height, read from the header before any pixel is decoded): 100 megapixels
  by default (`DEFAULT_MAX_PIXELS`, e.g. 10000 x 10000), the same in
  training, evaluation and prediction.
- Memory across a pool of decoders is bounded by a pixel budget
  (`PixelBudget`): see "Memory" below.

`decode="pil"` instead reproduces the published DGS-Net loader,
`Image.open(path).convert("RGB")`: no EXIF rotation, alpha dropped (not
composited), Pillow's own conversion for every mode. The bomb guard and the
error handling stay.

Anything that cannot be read (missing, truncated, corrupt, not an image,
too large) raises `ImageLoadError`, whose message names the file, what went
wrong and what to do about it.

Memory
------
Decoding plus patch selection peaks at about `BYTES_PER_PIXEL` bytes per
decoded pixel (scripts/decode_memory.py measures it), so what a pool of
decoders can hold at once is counted in pixels:

- Threads (`dgsnet predict`, `dgsnet-predict`) share one `PixelBudget`: an
  image reserves width x height before it is decoded and gives it back when
  the `decoded(...)` block (decoding and preprocessing) ends; an image that
  does not fit in what is free waits, one larger than the whole budget is
  refused.
- DataLoader worker processes cannot share a counter cheaply, so the budget
  is split statically: each of N workers (times the processes a launcher
  runs on this machine, LOCAL_WORLD_SIZE) decodes one image at a time and
  refuses one above total / N (see `worker_share`).

The total is, first found: the caller's value (megapixels), the
environment variable DGSNET_PIXEL_BUDGET (megapixels, or "off"), else
`default_pixel_budget()`: MEMORY_FRACTION of this machine's memory (the
cgroup limit where lower) divided by BYTES_PER_PIXEL, and never more than
the pool can use (workers x max_pixels).

JPEG draft mode (`jpeg_draft=True`, off by default) decodes a JPEG that is
over `max_pixels` at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, before
any pixel is stored) instead of refusing it. That resamples the image, which
dgsnet otherwise never does because resampling erases the traces the
detector looks for: its score is of a smaller picture, not of the file. So
it is opt-in, it is logged per file (and passed to `on_reduce`), and it
depends only on `max_pixels`, never on the budget or the worker count: an
image under `max_pixels` decodes bit-identically with or without it, and a
file gets the same pixels whatever the pool.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import io
import logging
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Union

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

log = logging.getLogger("dgsnet.image.decode")

#: Default decompression-bomb limit: 100 megapixels (e.g. 10000 x 10000).
DEFAULT_MAX_PIXELS = 100_000_000

#: Peak memory of `load_rgb` + `select_patches`, in bytes per decoded pixel: 10.0 measured for
#: images of 64 MP and up (scripts/decode_memory.py, bench/results/amd-epyc-x2/decode_memory.json;
#: the 100 MP all-zero PNG peaks at 1.0 GB), rounded up for allocator slack. Patch selection adds
#: at most ~0.24 GB per image in flight (exact re-scoring of tied entropies, flat images), so
#: small flat images cost more per pixel, a fixed amount per worker.
BYTES_PER_PIXEL = 12
#: Share of the machine's memory the default pixel budget lets a pool of decoders use.
MEMORY_FRACTION = 0.25
#: Memory assumed where the machine's cannot be read (non-Linux without sysconf).
FALLBACK_MEMORY = 8 << 30
#: Environment variable with the pixel budget in megapixels ("off": no budget).
PIXEL_BUDGET_ENV = "DGSNET_PIXEL_BUDGET"

PathLike = Union[str, os.PathLike]

# File names the loaders and the runtime take for images (inside folders; a file
# named explicitly is always tried).
DECODERS = ("dgsnet", "pil")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                            ".ppm", ".pgm"})


def is_image_name(path: PathLike) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_SUFFIXES


#: Why a walk left a path out (see `walk_tree`).
SKIP_REASONS = {"loop": "symlink loop(s)", "outside": "link(s) leading outside the folder",
                "unreadable": "unreadable folder(s)"}


@dataclass(frozen=True)
class Skipped:
    """A path a folder walk did not enter or take: `reason` is a key of SKIP_REASONS."""
    path: str  # as seen under the walked root
    reason: str
    detail: str  # the real path the link leads to, or the error


@dataclass
class WalkSummary:
    """What `walk_tree` found under `root`: `files[i]` is a path under the root, `real_paths[i]` its real path."""
    root: str
    files: list = field(default_factory=list)
    real_paths: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # Skipped entries, in the order met
    duplicates: int = 0  # folders or files reached again by another path: walked / yielded once

    def counts(self) -> dict:
        return skip_counts(self.skipped)


def skip_counts(skipped) -> dict:
    counts: dict = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return counts


def describe_skipped(skipped, limit: int = 3, *, where: str = "",
                     outside_fix: str = "pass follow_outside=True to follow links outside the folder") -> str:
    """One line: how many paths were left out (`where`) and why, naming the first `limit` of them;
    `outside_fix` ends it when a link led outside (a command line names its own fix)."""
    skipped = list(skipped)
    counts = skip_counts(skipped)
    why = ", ".join(f"{n} {SKIP_REASONS.get(r, r)}" for r, n in counts.items())
    named = "; ".join(f"{s.path} ({s.reason}: {s.detail})" for s in skipped[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    fix = f"; {outside_fix}" if "outside" in counts else ""
    return f"left out {len(skipped)} path(s){where} ({why}): {named}{more}{fix}"


def _inside(path: str, root: str) -> bool:
    """True when real path `path` is `root` or lies under it (both real, absolute)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _dir_key(names) -> tuple:
    return tuple((1, n) for n in names)  # a folder's files sort before its sub-folders, as os.walk lists them


def walk_tree(root: PathLike, *, follow_outside: bool = False, recursive: bool = True,
              on_skip: Callable[[Skipped], None] | None = None, warn: bool = True) -> WalkSummary:
    """Every non-hidden file under `root`, each once, in a fixed (sorted) order, without loops or escapes.

    The rule: `root` itself may be a symlink; it is resolved and its real path is the walk's
    boundary. Below it, a link (to a folder or a file) is followed only when its real path lies
    inside the boundary (or anywhere with `follow_outside=True`); a link to a folder that holds
    it, directly or higher up, is a loop and is never followed; each real folder is walked once.
    A file reached by several paths is yielded once, under the shortest of them (fewest folders),
    ties going to the path through fewer symlinks and then to the first in sorted order; the
    yielded path is as seen under `root` (so labels taken from it are those of a folder the file
    was really found in under the root). Order: a folder's files (sorted by name) before its
    sub-folders (sorted by name), recursively, as `os.walk` with sorted names gives.

    Hidden names (starting with ".") are ignored, and so are special files (fifos, sockets,
    devices); a dangling link inside the boundary is yielded (the loader reports it).
    `recursive=False` takes only the files directly in `root`. Left-out paths (loops, links
    leading outside, unreadable folders) are in the summary's `skipped`, passed to `on_skip` as
    they are met, and named in one log warning per walk unless `warn=False`.
    """
    top = os.fspath(root)
    top_real = os.path.realpath(top)
    summary = WalkSummary(top)

    def skip(path: str, reason: str, detail: str) -> None:
        entry = Skipped(path, reason, detail)
        summary.skipped.append(entry)
        if on_skip is not None:
            on_skip(entry)

    best: dict = {}  # real path -> (rank, sort key, path under root)
    visited = {top_real}
    level = [(top, top_real, (), 0)]  # folders of one depth: (path, real path, names below root, links on the way)
    while level:
        below = []
        for path, real, names, links in level:
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                skip(path, "unreadable", exc.strerror or type(exc).__name__)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                is_link = entry.is_symlink()
                try:
                    is_dir = entry.is_dir()
                    is_file = not is_dir and entry.is_file()
                except OSError as exc:  # e.g. a link that leads to itself
                    if exc.errno == errno.ELOOP:
                        skip(entry.path, "loop", "the link leads back to itself")
                    else:
                        skip(entry.path, "unreadable", exc.strerror or type(exc).__name__)
                    continue
                if not (is_dir or is_file or is_link):
                    continue  # fifo, socket, device
                target = os.path.realpath(entry.path) if is_link else os.path.join(real, entry.name)
                if is_dir:
                    if not recursive:
                        continue
                    if _inside(real, target):
                        skip(entry.path, "loop", f"-> {target}, a folder that holds it")
                        continue
                    if is_link and not follow_outside and not _inside(target, top_real):
                        skip(entry.path, "outside", f"-> {target}")
                        continue
                    below.append((links + is_link, names + (entry.name,), entry.path, target))
                    continue
                if is_link and not follow_outside and not _inside(target, top_real):
                    skip(entry.path, "outside", f"-> {target}")
                    continue
                rank, key = (len(names), links + is_link), _dir_key(names) + ((0, entry.name),)
                held = best.get(target)
                if held is not None:
                    summary.duplicates += 1
                    if (rank, key) >= held[:2]:
                        continue
                best[target] = (rank, key, entry.path)
        # claim each real folder once: through the fewest links first, then in sorted order
        below.sort(key=lambda c: (c[0], _dir_key(c[1])))
        level = []
        for links, names, path, target in below:
            if target in visited:
                summary.duplicates += 1
                continue
            visited.add(target)
            level.append((path, target, names, links))
    for target, (_, _, path) in sorted(best.items(), key=lambda kv: kv[1][1]):
        summary.files.append(path)
        summary.real_paths.append(target)
    if warn and summary.skipped:
        log.warning("%s: %s", top, describe_skipped(summary.skipped))
    return summary


def walk_files(folder: PathLike, *, follow_outside: bool = False,
               on_skip: Callable[[Skipped], None] | None = None, warn: bool = True) -> Iterator[str]:
    """The paths `walk_tree(folder)` yields (each file once, no loops, no escapes; see there)."""
    return iter(walk_tree(folder, follow_outside=follow_outside, on_skip=on_skip, warn=warn).files)


Source = Union[PathLike, bytes, BinaryIO]


class ImageLoadError(ValueError):
    """An image file could not be turned into RGB pixels.

    `path` is the file (or "<bytes>"/"<stream>"), `reason` what went wrong,
    `fix` what the user can do; str(error) is one line with all three.
    """

    def __init__(self, path, reason: str, fix: str = "replace or delete the file"):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path}: {reason}; {fix}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason, self.fix))


# PIL's own bomb check raises above 2 x Image.MAX_IMAGE_PIXELS before we can
# apply our (configurable) limit; it is switched off while a header is parsed
# and our check runs right after. The lock keeps threads from racing on it.
_PIL_LIMIT_LOCK = threading.Lock()


@contextmanager
def _own_bomb_check():
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _name_of(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    return getattr(source, "name", "<stream>")


class PixelBudgetError(ValueError):
    """A pixel budget setting (DGSNET_PIXEL_BUDGET, pixel_budget=) that is not a budget."""


def machine_memory() -> int | None:
    """Bytes of memory this process may use: physical RAM, or the cgroup's limit where lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or float("inf")):
            total = int(text)  # a container's limit ("max" or a huge number when there is none)
        break
    return total if total and total > 0 else None


def default_pixel_budget(workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int:
    """MEMORY_FRACTION of `machine_memory()` in decoded pixels, capped at what `workers` decoders
    can hold at once (workers x max_pixels) when both are given."""
    memory = machine_memory() or FALLBACK_MEMORY
    total = int(memory * MEMORY_FRACTION) // BYTES_PER_PIXEL
    if workers and max_pixels:
        total = min(total, max(1, workers) * max_pixels)
    return max(1, total)


def parse_pixel_budget(value, what: str = PIXEL_BUDGET_ENV) -> int | None:
    """Megapixels (a number > 0, or a string such as "400" or "12.5") -> pixels; "off" -> None.

    Raises PixelBudgetError naming `what`, the value and the accepted forms for anything else.
    """
    text = str(value).strip()
    if text.lower() == "off":
        return None
    try:
        megapixels = float(text)
    except ValueError:
        megapixels = float("nan")
    pixels = megapixels * 1_000_000
    if not (math.isfinite(pixels) and pixels >= 1):
        raise PixelBudgetError(f"{what}={value!r} is not a pixel budget: give megapixels decoded at once "
                               "(a number > 0, e.g. 400), or 'off' for none")
    return int(pixels)


def resolve_pixel_budget(pixel_budget=None, *, workers: int | None = None,
                         max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int | None, str]:
    """(total pixels or None for no budget, where it came from): `pixel_budget` (megapixels, or
    "off") when given, else DGSNET_PIXEL_BUDGET when set, else `default_pixel_budget`."""
    if pixel_budget is not None:
        return parse_pixel_budget(pixel_budget, "pixel_budget"), f"pixel_budget={pixel_budget}"
    env = os.environ.get(PIXEL_BUDGET_ENV, "").strip()
    if env:
        return parse_pixel_budget(env), f"{PIXEL_BUDGET_ENV}={env}"
    total = default_pixel_budget(workers, max_pixels)
    return total, f"the default, {MEMORY_FRACTION:.0%} of this machine's memory at {BYTES_PER_PIXEL} bytes/pixel"


def local_processes() -> int:
    """Processes decoding on this machine at once under a launcher (torchrun's LOCAL_WORLD_SIZE), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def worker_share(total: int, workers: int) -> int:
    """Each worker process's part of a `total` budget split statically over `workers` workers (>= 1)
    of each of `local_processes()` processes."""
    return max(1, total // (max(1, workers) * local_processes()))


class PixelBudget:
    """Decoded pixels a pool of threads may hold at once (`total`), shared under one lock.

    `reserve(pixels, name)` waits until `pixels` fit in what is free, first come first served (a
    large image is not starved by small ones), and gives them back when its block ends; `pixels`
    above `total` raise ImageLoadError naming the file. A thread must not reserve while it holds a
    reservation (it could wait on itself). `source` says where `total` came from, for messages;
    `split`: this is one worker's share of a budget split over several (fewer workers would help).
    """

    def __init__(self, total_pixels: int, source: str = "pixel budget", *, split: bool = False):
        if int(total_pixels) < 1:
            raise PixelBudgetError(f"pixel budget {total_pixels}: must be >= 1 pixel")
        self.total, self.source, self.split = int(total_pixels), source, split
        self.in_use = 0
        self.peak = 0  # the most ever reserved at once (tests and benchmarks read it)
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()

    @classmethod
    def for_pool(cls, pixel_budget=None, workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> "PixelBudget | None":
        """The budget of a pool of `workers` threads (see resolve_pixel_budget); None when "off"."""
        total, source = resolve_pixel_budget(pixel_budget, workers=workers, max_pixels=max_pixels)
        return None if total is None else cls(total, source)

    def __repr__(self) -> str:
        return f"PixelBudget({self.total}, in_use={self.in_use}, source={self.source!r})"

    def refuse(self, name: str, size: tuple[int, int]) -> ImageLoadError:
        width, height = size
        return ImageLoadError(
            name, f"{width}x{height} = {width * height} pixels to decode exceeds the pixel budget of "
                  f"{self.total} pixels ({self.source})",
            f"raise the budget ({PIXEL_BUDGET_ENV} or --pixel-budget, in megapixels)"
            + (", use fewer workers" if self.split else "") + " or downscale the file")

    @contextmanager
    def reserve(self, pixels: int, name: str = "<image>", size: tuple[int, int] | None = None):
        pixels = int(pixels)
        if pixels > self.total:
            raise self.refuse(name, size or (pixels, 1))
        me = object()
        with self._cond:
            self._queue.append(me)
            try:
                while self._queue[0] is not me or self.total - self.in_use < pixels:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: leave the queue to the others
                self._queue.remove(me)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
            self._cond.notify_all()  # the next in line may fit in what is left
        try:
            yield pixels
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


def _jpeg_draft_scale(img: Image.Image, max_pixels: int) -> int | None:
    """The smallest DCT scale (2, 4 or 8) that brings a JPEG within `max_pixels`; None otherwise."""
    if not isinstance(img, JpegImagePlugin.JpegImageFile):
        return None
    width, height = img.size
    for scale in (2, 4, 8):
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            return scale
    return None


@contextmanager
def decoded(source: Source, max_pixels: int | None = DEFAULT_MAX_PIXELS, decode: str = "dgsnet", *,
            budget: PixelBudget | None = None, jpeg_draft: bool = False,
            on_reduce: Callable[[str, tuple, tuple], None] | None = None) -> Iterator[np.ndarray]:
    """`with decoded(path, budget=budget) as rgb:` the HxWx3 uint8 RGB of `load_rgb`, with the pixels
    it decodes reserved from `budget` (if any) from before decoding until the block ends, so the
    preprocessing done in the block is covered too. Arguments and errors as `load_rgb`.
    """
    if decode not in DECODERS:
        raise ValueError(f"decode={decode!r}: choose one of {', '.join(DECODERS)}")
    name = _name_of(source)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        what = "is a directory" if os.path.isdir(source) else "does not exist"
        raise ImageLoadError(name, f"file {what}", "check the path")
    try:
        with _own_bomb_check():
            img = Image.open(source)
    except Image.UnidentifiedImageError:
        raise ImageLoadError(name, "not an image format Pillow can read (wrong extension or corrupt header)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise ImageLoadError(name, f"cannot open ({type(exc).__name__}: {exc})") from None
    with contextlib.ExitStack() as held:
        with img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                # Only the bomb limit decides on draft mode: the same file decodes the same way
                # whatever the budget or the number of workers.
                scale = _jpeg_draft_scale(img, max_pixels) if jpeg_draft else None
                if scale is not None:
                    img.draft(img.mode, (max(1, width // scale), max(1, height // scale)))
                if scale is None or img.size[0] * img.size[1] > max_pixels:
                    hint = " (or jpeg_draft=True to decode a JPEG reduced)" if \
                        isinstance(img, JpegImagePlugin.JpegImageFile) and not jpeg_draft else ""
                    raise ImageLoadError(
                        name,
                        f"{width}x{height} = {width * height} pixels exceeds the decompression-bomb limit of "
                        f"{max_pixels}",
                        f"downscale the file, or raise max_pixels if it is trusted{hint}",
                    )
                log.warning("%s: %dx%d JPEG over the %d-pixel limit decoded at 1/%d scale (%dx%d): "
                            "resampled, so its score is not that of the full image", name, width, height,
                            max_pixels, scale, *img.size)
                if on_reduce is not None:
                    on_reduce(name, (width, height), img.size)
            if width == 0 or height == 0:
                raise ImageLoadError(name, f"image has no pixels ({width}x{height})")
            if budget is not None:
                held.enter_context(budget.reserve(img.size[0] * img.size[1], name, img.size))
            try:
                img.load()  # truncated / corrupt pixel data fails here
                if decode == "pil":  # convert() of an RGB image would only copy it
                    rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8).copy()
                else:
                    rgb = pil_to_rgb(img)
            except ImageLoadError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise ImageLoadError(name, f"cannot decode pixels ({type(exc).__name__}: {exc})") from None
        yield rgb  # the file is closed; the reservation is held until the caller's block ends


def load_rgb(source: Source, max_pixels: int | None = DEFAULT_MAX_PIXELS, decode: str = "dgsnet", *,
             budget: PixelBudget | None = None, jpeg_draft: bool = False,
             on_reduce: Callable[[str, tuple, tuple], None] | None = None) -> np.ndarray:
    """Decode an image file (path, bytes or binary stream) to an HxWx3 uint8 RGB array.

    `max_pixels=None` disables the decompression-bomb guard. `decode`:
    "dgsnet" (the conventions above) or "pil" (the published loader). `budget`: a PixelBudget
    the decoding reserves from (only while decoding; use `decoded` to cover preprocessing too).
    `jpeg_draft`: decode a JPEG over `max_pixels` reduced instead of refusing it (off by default;
    see "Memory" above); `on_reduce(name, (w, h), (reduced w, h))` is called when that happens.
    Raises `ImageLoadError` for anything that is not a readable image.
    """
    with decoded(source, max_pixels, decode, budget=budget, jpeg_draft=jpeg_draft, on_reduce=on_reduce) as rgb:
        return rgb


def jpeg_for_device(path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    decode: str = "dgsnet") -> tuple[np.ndarray, int] | None:
    """(the file's bytes, its EXIF orientation) when a JPEG decoder on the training device can take
    the file as `load_rgb` would decode it: a JPEG of RGB (YCbCr) or greyscale pixels within
    `max_pixels`; the orientation is 1 ("as stored") under decode="pil", which ignores EXIF.
    None for anything else (another format, CMYK, over the limit, an unreadable header): those are
    decoded on the CPU by `load_rgb`, whose errors name the problem. Reads the header, not the pixels."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        with _own_bomb_check():
            img = Image.open(io.BytesIO(data))
        with img:
            width, height = img.size
            if img.format != "JPEG" or img.mode not in ("RGB", "L") or width * height == 0:
                return None
            if max_pixels is not None and width * height > max_pixels:
                return None
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if decode == "dgsnet" else 1
    except Exception:  # noqa: BLE001 - the CPU decoder reports it
        return None
    return np.frombuffer(data, dtype=np.uint8), int(orientation) if orientation in range(1, 9) else 1


_EXIF_ORIENTATION = 0x0112
_TURNED = (2, 3, 4, 5, 6, 7, 8)  # EXIF orientations other than "as stored"


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert an (already opened) PIL image to HxWx3 uint8 RGB with the conventions above."""
    try:
        img.load()
        turned = img.getexif().get(_EXIF_ORIENTATION, 1) in _TURNED
        if turned:  # exif_transpose copies the whole image even when nothing turns: only call it here
            img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - unreadable EXIF: keep the stored orientation
        pass
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img).astype(np.int64)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)  # composite on white
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise ImageLoadError(getattr(img, "filename", "") or "<image>",
                             f"colour mode {mode!r} cannot be converted to RGB ({exc})",
                             "convert the file to RGB") from None

