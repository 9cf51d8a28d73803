"""Which files to score: named files as given, folders searched for image files."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dgsnet.imageio import is_image_name, walk_files


@dataclass
class InputList:
    paths: list[Path] = field(default_factory=list)  # in the order they will be scored
    skipped: list[Path] = field(default_factory=list)  # files inside folders that are not images by name


def collect_inputs(inputs, recursive: bool = True) -> InputList:
    """Expands files and folders into the files to score.

    A file named explicitly is always scored (if it is not an image the runtime
    reports an error for it); inside folders, only files with an image suffix
    are taken (sorted, hidden files ignored) and the rest are counted as skipped.
    A path that does not exist is kept, so it is reported like any bad input.
    """
    found = InputList()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        if path not in seen:
            seen.add(path)
            found.paths.append(path)

    for item in inputs:
        root = Path(item)
        if not root.is_dir():
            add(root)
            continue
        names = walk_files(root) if recursive else (
            str(root / n) for n in sorted(os.listdir(root)) if not n.startswith(".") and (root / n).is_file())
        for name in names:
            path = Path(name)
            if is_image_name(path):
                add(path)
            else:
                found.skipped.append(path)
    return found
