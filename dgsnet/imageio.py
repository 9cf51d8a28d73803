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
  height, read from the header before any pixel is decoded).

`decode="pil"` instead reproduces the published DGS-Net loader,
`Image.open(path).convert("RGB")`: no EXIF rotation, alpha dropped (not
composited), Pillow's own conversion for every mode. The bomb guard and the
error handling stay.

Anything that cannot be read (missing, truncated, corrupt, not an image,
too large) raises `ImageLoadError`, whose message names the file, what went
wrong and what to do about it.
"""
from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, ImageOps

#: Default decompression-bomb limit: 100 megapixels (e.g. 10000 x 10000).
DEFAULT_MAX_PIXELS = 100_000_000

PathLike = Union[str, os.PathLike]

# File names the loaders and the runtime take for images (inside folders; a file
# named explicitly is always tried).
DECODERS = ("dgsnet", "pil")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                            ".ppm", ".pgm"})


def is_image_name(path: PathLike) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_SUFFIXES


def walk_files(folder: PathLike) -> Iterator[str]:
    """Every non-hidden file under `folder`, recursively, in sorted order (symlinks followed)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name)
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


def load_rgb(source: Source, max_pixels: int | None = DEFAULT_MAX_PIXELS, decode: str = "dgsnet") -> np.ndarray:
    """Decode an image file (path, bytes or binary stream) to an HxWx3 uint8 RGB array.

    `max_pixels=None` disables the decompression-bomb guard. `decode`:
    "dgsnet" (the conventions above) or "pil" (the published loader). Raises
    `ImageLoadError` for anything that is not a readable image.
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
    with img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageLoadError(
                name,
                f"{width}x{height} = {width * height} pixels exceeds the decompression-bomb limit of {max_pixels}",
                "downscale the file, or raise max_pixels if it is trusted",
            )
        if width == 0 or height == 0:
            raise ImageLoadError(name, f"image has no pixels ({width}x{height})")
        try:
            img.load()  # truncated / corrupt pixel data fails here
            if decode == "pil":
                return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
            return pil_to_rgb(img)
        except ImageLoadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ImageLoadError(name, f"cannot decode pixels ({type(exc).__name__}: {exc})") from None


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert an (already opened) PIL image to HxWx3 uint8 RGB with the conventions above."""
    try:
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

