"""Find labelled images in the community's folder layouts (no decoding, no torch).

A *labelled folder* holds `0_real/` and/or `1_fake/` (label 0 = real,
1 = generated), each with images at any depth. Accepted roots:

- `<root>/{0_real,1_fake}/...`                 one labelled folder
- `<root>/<class>/{0_real,1_fake}/...`         ProGAN style: one per object class
- `<root>/<subset>/...`                        one test generator per subset, each
                                               subset in one of the two layouts above

Folders are walked with `dgsnet.image.decode.walk_tree`: each label folder (`0_real/`,
`1_fake/`) is its own walk root, so by default no link inside it can bring in an image
from the other label folder or from outside. A layout folder (subset, class or label
folder) that is itself a symlink is resolved and used like a root (datasets assembled
from links keep working), except a link back to a folder that holds it (a loop). An image
reached by several paths is kept once (see `find_samples`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dgsnet.image.decode import IMAGE_SUFFIXES, Skipped, describe_skipped, is_image_name, walk_tree

log = logging.getLogger("dgsnet.data")

LABEL_DIRS = {"0_real": 0, "1_fake": 1}

EXPECTED = ("expected <root>/0_real and <root>/1_fake, <root>/<class>/{0_real,1_fake} (ProGAN style), "
            "or <root>/<subset>/ in either layout, with image files inside")


class LayoutError(ValueError):
    """A dataset folder is missing, empty, or not in a supported layout; the message names it."""


@dataclass(frozen=True)
class Sample:
    path: str  # absolute path of the image file
    label: int  # 0 real, 1 generated
    group: str  # ProGAN class ("" when the folder has none): used by the caption template


def _is_loop(folder: Path, parent: Path) -> bool:
    """True when `folder` (a child of `parent`) really is `parent` or a folder above it."""
    real, holder = os.path.realpath(folder), os.path.realpath(parent)
    return holder == real or holder.startswith(real.rstrip(os.sep) + os.sep)


def _subdirs(folder: Path, skipped: list | None = None) -> list[Path]:
    """Non-hidden child folders, sorted by name; a link back to `folder` or above it (a loop) is left out."""
    try:
        children = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: p.name)
    except OSError as exc:
        if skipped is not None:
            skipped.append(Skipped(str(folder), "unreadable", exc.strerror or type(exc).__name__))
        return []
    kept = []
    for child in children:
        if _is_loop(child, folder):
            if skipped is not None:
                skipped.append(Skipped(str(child), "loop", f"-> {os.path.realpath(child)}, a folder that holds it"))
        else:
            kept.append(child)
    return kept


def _label_dirs(folder: Path, skipped: list | None = None) -> list[tuple[Path, int]]:
    found = []
    for name, label in LABEL_DIRS.items():
        path = folder / name
        if not path.is_dir():
            continue
        if _is_loop(path, folder):  # e.g. 0_real -> .. would label everything under the root real
            if skipped is not None:
                skipped.append(Skipped(str(path), "loop", f"-> {os.path.realpath(path)}, a folder that holds it"))
            continue
        found.append((path, label))
    return found


def is_labelled(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in LABEL_DIRS)


def is_class_style(folder: Path) -> bool:
    """True when `folder` has no label folders itself but a child that has them."""
    return not is_labelled(folder) and any(is_labelled(child) for child in _subdirs(folder))


def _labelled_samples(folder: Path, group: str, follow_outside: bool, skipped: list, reals: list,
                      linked: list) -> list[Sample]:
    samples = []
    for path, label in _label_dirs(folder, skipped):
        walk = walk_tree(path, follow_outside=follow_outside, warn=False)
        skipped += walk.skipped
        for name, real in zip(walk.files, walk.real_paths):
            if is_image_name(name):
                samples.append(Sample(name, label, group))
                reals.append(real)
                linked.append(real != name)  # the root is resolved: a path through no symlink is its real path
    return samples


def _dedupe(samples: list[Sample], reals: list[str], linked: list[bool], folder: Path) -> list[Sample]:
    """Each real file once: the first sample reached without a link, else the first in order; a file
    found under both label folders is an error (its label would depend on the path taken)."""
    chosen: dict[str, int] = {}
    for i, real in enumerate(reals):
        j = chosen.get(real)
        if j is None:
            chosen[real] = i
            continue
        if samples[i].label != samples[j].label:
            real_one, fake_one = (samples[i], samples[j]) if samples[i].label == 0 else (samples[j], samples[i])
            raise LayoutError(f"{folder}: the image {real} is both under a real folder ({real_one.path}) and under "
                              f"a generated one ({fake_one.path}), through a symlink; remove the link so each "
                              f"image sits under one label folder")
        if linked[j] and not linked[i]:
            chosen[real] = i
    if len(chosen) < len(samples):
        log.info("%s: %d image(s) reached by more than one path were kept once", folder, len(samples) - len(chosen))
    keep = set(chosen.values())
    return [s for i, s in enumerate(samples) if i in keep]


def _check_root(root) -> Path:
    folder = Path(root).expanduser()
    if not folder.exists():
        raise LayoutError(f"{folder}: dataset folder does not exist; {EXPECTED}")
    if not folder.is_dir():
        raise LayoutError(f"{folder}: is a file, not a dataset folder; {EXPECTED}")
    return folder.resolve()


def find_samples(root, follow_outside: bool = False) -> list[Sample]:
    """All labelled images under `root` in any supported layout, in a fixed (sorted) order.

    Each label folder is walked on its own (`dgsnet.image.decode.walk_tree`): links inside it are
    followed only when they lead inside that label folder (`follow_outside=True` follows them
    anywhere), loops are never followed, and each file is taken once. An image reached by
    several paths (e.g. a class folder that is a link to another) is kept once: under the first
    path that goes through no symlink, else the first in sorted order. An image found under both
    0_real/ and 1_fake/ raises LayoutError. Left-out paths are named in one log warning.

    Raises LayoutError naming the folder when it has no label folders at
    depth 1-3 or they hold no image files.
    """
    folder = _check_root(root)
    skipped: list = []
    reals: list = []
    linked: list = []

    def labelled(where: Path, group: str) -> list[Sample]:
        return _labelled_samples(where, group, follow_outside, skipped, reals, linked)

    if is_labelled(folder):
        samples = labelled(folder, "")
    else:
        samples = []
        children = _subdirs(folder, skipped)
        for child in children:
            if is_labelled(child):
                samples += labelled(child, child.name)
            else:
                for grandchild in _subdirs(child, skipped):
                    if is_labelled(grandchild):
                        samples += labelled(grandchild, grandchild.name)
        if not samples and not any(is_labelled(c) or is_class_style(c) for c in children):
            raise LayoutError(f"{folder}: no 0_real/ or 1_fake/ folder found; {EXPECTED}")
    if skipped:
        log.warning("%s: %s", folder, describe_skipped(skipped))
    samples = _dedupe(samples, reals, linked, folder)
    if not samples:
        raise LayoutError(f"{folder}: the 0_real/ and 1_fake/ folders hold no image files "
                          f"({', '.join(sorted(IMAGE_SUFFIXES))}); {EXPECTED}")
    return samples


def find_subsets(root) -> list[tuple[str, Path]]:
    """(name, folder) of each test subset, sorted by name.

    A labelled root is one subset named after the folder. Otherwise each
    child that is labelled, or ProGAN style (<root>/progan/<class>/...), is
    one subset; children in neither layout are ignored.
    """
    folder = _check_root(root)
    if is_labelled(folder):
        return [(folder.name, folder)]
    skipped: list = []
    subsets = [(child.name, child) for child in _subdirs(folder, skipped)
               if is_labelled(child) or is_class_style(child)]
    if skipped:
        log.warning("%s: %s", folder, describe_skipped(skipped))
    if not subsets:
        raise LayoutError(f"{folder}: no 0_real/ or 1_fake/ folder found at depth 1-3; {EXPECTED}")
    return subsets


def list_eval_subsets(root) -> list[tuple[str, Path, list[Sample]]]:
    """(name, folder, samples) of each test subset of `root` (see find_subsets), sorted by name.

    A subset folder without images is skipped with a warning (an error if it is the only one):
    one empty generator folder must not stop the rest.
    """
    root = Path(root)
    found, listed = find_subsets(root), []
    for name, folder in found:
        try:
            listed.append((name, folder, find_samples(folder)))
        except LayoutError as exc:
            if len(found) == 1:
                raise
            log.warning("skipped subset %s: %s", name, exc)
    if not listed:
        raise LayoutError(f"{root}: every subset folder is empty; {EXPECTED}")
    return listed
