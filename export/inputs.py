"""Which files to score: named files as given, folders searched for image files."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from dgsnet.image.decode import describe_skipped, is_image_name, walk_tree

log = logging.getLogger("dgsnet_export.inputs")


@dataclass
class InputList:
    paths: list[Path] = field(default_factory=list)  # in the order they will be scored
    skipped: list[Path] = field(default_factory=list)  # files inside folders that are not images by name
    not_walked: list = field(default_factory=list)  # dgsnet.image.decode.Skipped: loops, links leading out, unreadable


def collect_inputs(inputs, recursive: bool = True, follow_outside: bool = False) -> InputList:
    """Expands files and folders into the files to score.

    A file named explicitly is always scored (if it is not an image the runtime
    reports an error for it); inside folders, only files with an image suffix
    are taken (sorted, hidden files ignored) and the rest are counted as skipped.
    A path that does not exist is kept, so it is reported like any bad input.

    Folders are walked by `dgsnet.image.decode.walk_tree`: a folder named here may be a
    symlink (it is resolved and walked); below it, links are followed only when they
    lead inside it (`follow_outside=True`: anywhere), loops never. Every file is scored
    once, even when reached by several paths or named again (compared by real path).
    What the walks left out is in `not_walked` and named in one log warning.
    """
    found = InputList()
    seen: set[str] = set()

    def add(path: Path, real: str) -> None:
        if real not in seen:
            seen.add(real)
            found.paths.append(path)

    for item in inputs:
        root = Path(item)
        if not root.is_dir():
            add(root, os.path.realpath(root))
            continue
        walk = walk_tree(root, follow_outside=follow_outside, recursive=recursive, warn=False)
        found.not_walked += walk.skipped
        for name, real in zip(walk.files, walk.real_paths):
            path = Path(name)
            if is_image_name(path):
                add(path, real)
            else:
                found.skipped.append(path)
    if found.not_walked:
        log.warning("%s", describe_skipped(found.not_walked))
    return found
