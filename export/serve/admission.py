"""Admission control: what bounds the decoded pixels the server holds, all requests together.

Before any pixel of a request is decoded, each of its images reserves its width x height, read from
the file's header, from one shared account: at most `max_images` images (--max-queue) and
`max_pixels` pixels (--max-decoded-mp, default --max-queue x --max-pixels) at once. A request is
admitted whole or not at all; one that does not fit is refused at once (503 with Retry-After, as a
full queue), never half-decoded. Its reservation is given back when it is answered: after its batch
was scored, or when it failed. An image whose header cannot be read, or that is over --max-pixels,
reserves nothing: it is refused from its header without being decoded.

So the decoded images (being decoded, waiting in the queue, being scored) never hold more than
`max_pixels` x 3 bytes, however many requests are open at once.
"""
from __future__ import annotations

import threading
import warnings

from PIL import Image


def header_pixels(data) -> int | None:
    """width x height from the file's header (no pixel is decoded); None where it cannot be read."""
    import io

    from dgsnet.image.decode import _own_bomb_check  # the decoder's own switch of PIL's bomb check

    if not isinstance(data, (bytes, bytearray)) or not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _own_bomb_check():
                image = Image.open(io.BytesIO(data))
            with image:
                width, height = image.size
    except Exception:  # noqa: BLE001 - the decoder names the problem; nothing is reserved for it
        return None
    return width * height


class Reservation:
    """What one request holds; `release()` gives it back (once, however often it is called)."""

    def __init__(self, account: "Admission", images: int, pixels: int):
        self.account, self.images, self.pixels = account, images, pixels
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.account._give_back(self.images, self.pixels)


class Admission:
    """The shared account of admitted images and their pixels (thread-safe; `peak_pixels` is the most
    held at once since the start, for /metrics)."""

    def __init__(self, max_images: int, max_pixels: int):
        if max_images < 1 or max_pixels < 1:
            raise ValueError(f"max_images={max_images}, max_pixels={max_pixels}: must be >= 1")
        self.max_images, self.max_pixels = max_images, max_pixels
        self.images = self.pixels = self.peak_pixels = 0
        self._lock = threading.Lock()

    def try_reserve(self, pixels: list[int]) -> Reservation | None:
        """A reservation of one slot per entry of `pixels` and their sum; None when they do not fit now."""
        count, total = len(pixels), sum(pixels)
        with self._lock:
            if count and (self.images + count > self.max_images or self.pixels + total > self.max_pixels):
                return None
            self.images += count
            self.pixels += total
            self.peak_pixels = max(self.peak_pixels, self.pixels)
        return Reservation(self, count, total)

    def _give_back(self, images: int, pixels: int) -> None:
        with self._lock:
            self.images -= images
            self.pixels -= pixels
