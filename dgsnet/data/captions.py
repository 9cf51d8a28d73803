"""Captions for the text branch: a JSON file of {image path relative to the root: caption}.

Images without a caption get a label-free template ("a photo", or "a photo
of a <class>" in ProGAN-style folders): the template must not leak the
label into the text branch. How many fell back is logged once per dataset.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

from .layouts import Sample

log = logging.getLogger("dgsnet.data")

DEFAULT_FILE = "captions.json"


class CaptionsError(ValueError):
    """The captions file cannot be used; the message names it and the expected format."""


def template_caption(group: str) -> str:
    return f"a photo of a {group}" if group else "a photo"


def load_captions(path) -> dict[str, str]:
    """Read a captions JSON file: an object mapping relative image paths to caption strings."""
    path = Path(path)
    if not path.is_file():
        raise CaptionsError(f"{path}: captions file does not exist; pass an existing JSON file or leave it unset")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaptionsError(f"{path}: not valid JSON ({exc}); expected {{\"0_real/img.png\": \"a caption\", ...}}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise CaptionsError(f"{path}: expected a JSON object of image path (relative to the dataset root) "
                            "-> caption string")
    return {_key(k): v for k, v in data.items()}


def _key(relative: str) -> str:
    key = relative.replace("\\", "/")
    return key[2:] if key.startswith("./") else key


def caption_table(root, captions=None) -> tuple[dict[str, str], Path | None]:
    """The captions of `captions` (a JSON path), else of <root>/captions.json when present, and that file."""
    file = Path(captions) if captions else Path(root) / DEFAULT_FILE
    if not captions and not file.is_file():
        return {}, None
    return load_captions(file), file


def assign_captions(samples: Sequence[Sample], root, table: dict[str, str]) -> tuple[list[str], int]:
    """One caption per sample (its entry keyed by the path relative to `root`, or by the absolute
    path, else the template) and how many used the template."""
    root = Path(root).resolve()
    out, missing = [], 0
    for sample in samples:
        text = table.get(Path(os.path.relpath(sample.path, root)).as_posix())
        if text is None:  # absolute keys work too (files listed by a captioning tool)
            text = table.get(Path(sample.path).as_posix())
        if text is None:
            missing += 1
            text = template_caption(sample.group)
        out.append(text)
    return out, missing


def report_missing(missing: int, total: int, root, file: Path | None) -> None:
    """Log, once per dataset, how many images fell back to the template caption."""
    if not missing:
        return
    if file is None:
        log.warning("%s: no captions file (%s); all %d images use the template caption; pass --captions "
                    "FILE.json (image path relative to the root -> caption) to feed the text branch",
                    root, DEFAULT_FILE, total)
    else:
        log.warning("%s: %d of %d images have no caption and use the template caption", file, missing, total)
