"""Small on-disk dataset trees in each supported layout, for the loader tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size=(40, 52), fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def labelled_folder(folder: Path, n_real: int = 2, n_fake: int = 3, seed: int = 0) -> list[Path]:
    """<folder>/0_real/r*.png and <folder>/1_fake/f*.png (one fake in a nested folder)."""
    paths = [write_image(folder / "0_real" / f"r{i}.png", seed + i) for i in range(n_real)]
    for i in range(n_fake):
        sub = "nested/" if i == 0 else ""
        paths.append(write_image(folder / "1_fake" / f"{sub}f{i}.png", seed + 100 + i))
    return paths


def progan_tree(root: Path, classes=("car", "cat"), seed: int = 0) -> list[Path]:
    return [p for k, c in enumerate(classes) for p in labelled_folder(root / c, 1, 2, seed + 10 * k)]


def subsets_tree(root: Path) -> dict[str, int]:
    """<root>/{gan_a, diffusion_b (single folder), progan (ProGAN style)}; returns image counts."""
    labelled_folder(root / "gan_a", 2, 2, seed=1)
    labelled_folder(root / "diffusion_b", 1, 3, seed=2)
    progan_tree(root / "progan", seed=3)
    (root / "notes").mkdir()  # neither layout: ignored
    (root / "notes" / "readme.txt").write_text("not a subset")
    return {"diffusion_b": 4, "gan_a": 4, "progan": 6}


def write_captions(root: Path, captions: dict[str, str]) -> Path:
    path = root / "captions.json"
    path.write_text(json.dumps(captions))
    return path
