"""Find labelled images in the community's folder layouts (no decoding, no torch).

A *labelled folder* holds `0_real/` and/or `1_fake/` (label 0 = real,
1 = generated), each with images at any depth. Accepted roots:

- `<root>/{0_real,1_fake}/...`                 one labelled folder
- `<root>/<class>/{0_real,1_fake}/...`         ProGAN style: one per object class
- `<root>/<subset>/...`                        one test generator per subset, each
                                               subset in one of the two layouts above
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dgsnet.imageio import IMAGE_SUFFIXES, is_image_name, walk_files

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


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def is_labelled(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in LABEL_DIRS)


def is_class_style(folder: Path) -> bool:
    """True when `folder` has no label folders itself but a child that has them."""
    return not is_labelled(folder) and any(is_labelled(child) for child in _subdirs(folder))


def _images_under(folder: Path) -> list[str]:
    return [path for path in walk_files(folder) if is_image_name(path)]


def _labelled_samples(folder: Path, group: str) -> list[Sample]:
    return [Sample(path, label, group)
            for name, label in LABEL_DIRS.items() if (folder / name).is_dir()
            for path in _images_under(folder / name)]


def _check_root(root) -> Path:
    folder = Path(root).expanduser()
    if not folder.exists():
        raise LayoutError(f"{folder}: dataset folder does not exist; {EXPECTED}")
    if not folder.is_dir():
        raise LayoutError(f"{folder}: is a file, not a dataset folder; {EXPECTED}")
    return folder.resolve()


def find_samples(root) -> list[Sample]:
    """All labelled images under `root` in any supported layout, in a fixed (sorted) order.

    Raises LayoutError naming the folder when it has no label folders at
    depth 1-3 or they hold no image files.
    """
    folder = _check_root(root)
    if is_labelled(folder):
        samples = _labelled_samples(folder, "")
    else:
        samples = []
        for child in _subdirs(folder):
            if is_labelled(child):
                samples += _labelled_samples(child, child.name)
            else:
                for grandchild in _subdirs(child):
                    if is_labelled(grandchild):
                        samples += _labelled_samples(grandchild, grandchild.name)
        if not samples and not any(is_labelled(c) or is_class_style(c) for c in _subdirs(folder)):
            raise LayoutError(f"{folder}: no 0_real/ or 1_fake/ folder found; {EXPECTED}")
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
    subsets = [(child.name, child) for child in _subdirs(folder) if is_labelled(child) or is_class_style(child)]
    if not subsets:
        raise LayoutError(f"{folder}: no 0_real/ or 1_fake/ folder found at depth 1-3; {EXPECTED}")
    return subsets
