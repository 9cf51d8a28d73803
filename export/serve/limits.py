"""What one request may ask of the server, and the errors (with their HTTP status) that refuse it.

Request-wide problems (too many bytes or images, a body that is not multipart or JSON) refuse the
whole request; a problem with one image (unsupported, corrupt, too many pixels) fails only its
own entry, and the others are scored.
"""
from __future__ import annotations

from dataclasses import dataclass

from dgsnet.image.decode import DEFAULT_MAX_PIXELS

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 32 * MB  # the whole body, multipart or JSON (base64 is 4/3 of the bytes)
    max_images: int = 32  # images in one request
    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height of one image, read from its header before decoding
    max_queue: int = 64  # images admitted (being decoded, queued or scored), all requests together
    # decoded pixels held at once, all requests together; None: max_queue x max_pixels
    max_decoded_pixels: int | None = None

    def __post_init__(self):
        for name in ("max_request_bytes", "max_images", "max_pixels", "max_queue"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        # A request is admitted whole or not at all, so one that could never fit would be refused with
        # a 503 that retrying cannot cure: such settings are refused at startup instead.
        if self.max_images > self.max_queue:
            raise ValueError(f"--max-images {self.max_images} is more than --max-queue {self.max_queue}: a request "
                             "that large could never be queued; lower --max-images or raise --max-queue")
        if self.max_decoded_pixels is not None and self.max_decoded_pixels < self.max_pixels:
            raise ValueError(f"--max-decoded-mp {self.max_decoded_pixels / 1e6:g} is less than --max-pixels "
                             f"{self.max_pixels / 1e6:g}: an image at the pixel limit could never be decoded; "
                             "raise --max-decoded-mp or lower --max-pixels")

    @property
    def decoded_pixel_limit(self) -> int:
        """Pixels (width x height, 3 bytes each once decoded) all admitted images may hold together."""
        if self.max_decoded_pixels is not None:
            return self.max_decoded_pixels
        return self.max_queue * self.max_pixels


class RequestError(Exception):
    """A refused request or image: HTTP `status`, a machine-readable `kind`, a sentence with the fix."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"kind": self.kind, "message": self.message}}


# Per-image error kinds -> status (the entry's own status; a request whose images all fail answers
# with the first one's).
IMAGE_STATUS = {"unsupported": 415, "corrupt": 422, "too_many_pixels": 413, "empty": 400, "bad_base64": 400,
                "not_scored": 422}


def image_error(kind: str, message: str) -> RequestError:
    return RequestError(IMAGE_STATUS[kind], kind, message)


def too_large(limit: int) -> RequestError:
    return RequestError(413, "request_too_large",
                        f"the request body is over the {limit} byte limit (--max-request-mb); send fewer "
                        "or smaller images per request")


def too_many_images(count: int, limit: int) -> RequestError:
    return RequestError(413, "too_many_images", f"{count} images in one request; the limit is {limit} "
                        "(--max-images): split them over several requests")
