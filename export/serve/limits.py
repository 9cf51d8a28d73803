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
    max_queue: int = 64  # images decoded and waiting to be scored, all requests together

    def __post_init__(self):
        for name in ("max_request_bytes", "max_images", "max_pixels", "max_queue"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")


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
