"""Builds the demo's small real-vs-generated benchmark: offline, deterministic.

THE DATA IS SYNTHETIC. The real class is crops of the photos shipped with
scikit-image; the "generated" class is other crops of the same photos pushed
through hand-written generator-like pipelines (dgsnet.demo.families), not
through any generative model. It exists so that `dgsnet demo` can show the
whole train / cross-generator evaluation / export loop on a fresh machine
with no downloads. It is not a benchmark: numbers measured on it say nothing
about detecting real AI-generated images.

Layout under `root` (readable by dgsnet.data's folder loaders):

    train/{0_real,1_fake}/*.png              fakes from one family (train_family)
    test/<family>/{0_real,1_fake}/*.png      every family, its own real crops
    captions.json                            {path relative to root: caption}
    train/captions.json, test/captions.json, test/<family>/captions.json
                                             the same captions, keyed relative
                                             to that folder (so a loader rooted
                                             there finds them)
    manifest.json                            parameters, counts, file hashes

Every crop (its box in its photo, and its pixels) is used once: no image is
shared between train and test, and no fake's source crop is a real image.
Both classes of a split (train, or one test family) cycle through the photos
from the same offset, so they hold the same photo mix: content is no cue.

Same parameters (and dgsnet version) -> byte-identical files; an existing
build with the same parameters is reused, not rebuilt.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from dgsnet.demo.crops import CropSampler
from dgsnet.demo.families import FAMILIES, generate
from dgsnet.demo.photos import load_photos
from dgsnet.fileio import atomic_write
from dgsnet.version import __version__

#: bump when the builder's output changes for the same parameters
BUILDER_FORMAT = 1
MANIFEST = "manifest.json"
CAPTIONS = "captions.json"
DEFAULT_TRAIN_FAMILY = "tconv"
NOTE = ("SYNTHETIC DEMO DATA: real = crops of scikit-image's sample photos; fake = other crops passed "
        "through hand-written generator-like upsampling pipelines (no generative model). For showing "
        "the dgsnet pipeline only; not a benchmark of AI-generated image detection.")

MARKER = ".dgsnet-demo"  # written before anything is replaced: marks a (possibly half-swapped) demo folder
# the only entries the builder ever creates (and so may replace) in root
_OWNED = {"train", "test", CAPTIONS, MANIFEST, MARKER}


@dataclass
class DemoInfo:
    """Where the demo benchmark is and what it holds (counts per folder: {"real": n, "fake": n})."""

    root: str
    train_dir: str
    test_dir: str
    families: List[str]
    train_family: str
    counts: Dict[str, Dict[str, int]]  # "train" and "test/<family>" -> {"real", "fake"}
    captions_path: str = ""
    photos: List[str] = field(default_factory=list)
    rebuilt: bool = True  # False when an existing build with the same parameters was reused
    seconds: float = 0.0


def _png_bytes(pixels: np.ndarray) -> bytes:
    # fixed options, no metadata: identical pixels give identical bytes
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG", compress_level=1, optimize=False)
    return buf.getvalue()


def _check_args(seed, size, per_class, test_per_class, families, train_family) -> List[str]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be a non-negative integer")
    if not isinstance(size, int) or size < 32 or size % 8:
        raise ValueError(f"size={size!r}: must be a multiple of 8 and at least 32 (default 256)")
    for name, n in (("per_class", per_class), ("test_per_class", test_per_class)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name}={n!r}: must be a positive integer")
    chosen = list(FAMILIES) if families is None else list(dict.fromkeys(families))
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown or not chosen:
        raise ValueError(f"families={families!r}: unknown or empty; choose from {', '.join(FAMILIES)}")
    if train_family not in chosen:
        raise ValueError(f"train_family={train_family!r} is not among the families {chosen}; add it or pick one of them")
    return chosen


def _plan(families: List[str], train_family: str, per_class: int, test_per_class: int):
    """(folder relative to root, label, family or None, count) for every folder, in build order."""
    plan = [("train/0_real", 0, None, per_class), ("train/1_fake", 1, train_family, per_class)]
    for fam in families:
        plan += [(f"test/{fam}/0_real", 0, None, test_per_class), (f"test/{fam}/1_fake", 1, fam, test_per_class)]
    return plan


def _read_manifest(root: Path) -> Optional[dict]:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("builder") == "dgsnet.demo" else None


def _info(root: Path, manifest: dict, rebuilt: bool, seconds: float) -> DemoInfo:
    return DemoInfo(root=str(root), train_dir=str(root / "train"), test_dir=str(root / "test"),
                    families=list(manifest["families"]), train_family=manifest["train_family"],
                    counts={k: dict(v) for k, v in manifest["counts"].items()},
                    captions_path=str(root / CAPTIONS), photos=list(manifest["photos"]),
                    rebuilt=rebuilt, seconds=seconds)


def _reusable(root: Path, params: dict) -> Optional[dict]:
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("params") != params:
        return None
    files = manifest.get("files", {})
    if not all((root / rel).is_file() and (root / rel).stat().st_size == entry["bytes"] for rel, entry in files.items()):
        return None
    return manifest


def _check_root_is_ours(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: is a file; pass a folder (new or empty) for the demo benchmark")
    if root.is_dir():
        entries = sorted(p.name for p in root.iterdir())
        foreign = [name for name in entries if name not in _OWNED]
        if entries and not foreign and not (root / MARKER).is_file() and _read_manifest(root) is None:
            foreign = entries  # train/ or test/ of someone else's dataset: never replace those
        if foreign:
            raise ValueError(f"{root}: holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which the demo "
                             f"builder did not write; pass a new or empty folder (it will not overwrite other files)")


def build_demo_dataset(root: str, seed: int = 0, size: int = 256, per_class: int = 64,
                       families: Optional[Sequence[str]] = None, *, test_per_class: int = 24,
                       train_family: str = DEFAULT_TRAIN_FAMILY, force: bool = False) -> DemoInfo:
    """Writes the SYNTHETIC demo benchmark under `root` and describes it (see the module docstring).

    Args:
        root: output folder; new, empty, or a previous demo build (only the
            builder's own entries are ever replaced).
        seed: picks the crops and the per-image noise; same seed -> identical bytes.
        size: side of every image (multiple of 8; only photos at least this
            large are used, crops are only ever downscaled).
        per_class: training images per class (real, and fakes of train_family).
        families: generator families to build test sets for (default: all of
            dgsnet.demo.FAMILIES); must include train_family.
        test_per_class: test images per class per family (each family gets its
            own real crops).
        train_family: the one family whose fakes are in train/.
        force: rebuild even when a build with the same parameters exists.

    Defaults give 128 training and 48 x 5 = 240 test images, 256 px.
    """
    start = time.perf_counter()
    chosen = _check_args(seed, size, per_class, test_per_class, families, train_family)
    root = Path(root).expanduser().resolve()
    photos = load_photos(min_side=size)
    if len(photos) < 2:
        raise ValueError(f"size={size}: only {len(photos)} sample photo(s) are at least {size}px on the shorter side; "
                         f"use size <= 512")
    params = {"format": BUILDER_FORMAT, "dgsnet_version": __version__, "seed": int(seed), "size": size,
              "per_class": per_class, "test_per_class": test_per_class, "families": chosen,
              "train_family": train_family, "photos": [p.name for p in photos]}
    if not force:
        manifest = _reusable(root, params)
        if manifest is not None:
            return _info(root, manifest, rebuilt=False, seconds=time.perf_counter() - start)
    _check_root_is_ours(root)

    rng = np.random.default_rng([BUILDER_FORMAT, int(seed)])
    sampler = CropSampler(rng, size)
    plan = _plan(chosen, train_family, per_class, test_per_class)
    files: Dict[str, dict] = {}
    captions: Dict[str, str] = {}
    counts: Dict[str, Dict[str, int]] = {}
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.building-"))
    try:
        image_index = 0
        for folder, label, family, count in plan:
            (staging / folder).mkdir(parents=True)
            if label == 0:  # the real and fake folders of a split share the photo order
                offset = int(rng.integers(len(photos)))
            for i in range(count):
                photo = photos[(offset + i) % len(photos)]
                box, crop = sampler.draw(photo)
                if family is not None:
                    crop = generate(family, crop, np.random.default_rng([BUILDER_FORMAT, int(seed), image_index]))
                data = _png_bytes(crop)
                rel = f"{folder}/{i:04d}_{photo.name}.png"
                (staging / rel).write_bytes(data)
                files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                              "photo": photo.name, "box": list(box), "family": family}
                captions[rel] = photo.caption
                image_index += 1
            split = folder.rsplit("/", 1)[0]
            counts.setdefault(split, {"real": 0, "fake": 0})["fake" if label else "real"] = count

        # the same captions keyed relative to each dataset folder a loader may be rooted at
        scopes = [""] + ["train/", "test/"] + [f"test/{fam}/" for fam in chosen]
        for scope in scopes:
            table = {rel[len(scope):]: cap for rel, cap in sorted(captions.items()) if rel.startswith(scope)}
            (staging / scope / CAPTIONS).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")

        # swap in: remove the previous build's entries, move the new ones, manifest last (commit marker)
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).write_text(NOTE + "\n")
        if (root / MANIFEST).exists():
            (root / MANIFEST).unlink()
        for name in ("train", "test", CAPTIONS):
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    manifest = {"builder": "dgsnet.demo", "note": NOTE, "dgsnet_version": __version__, "params": params,
                "families": chosen, "train_family": train_family, "photos": params["photos"],
                "captions": {p.name: p.caption for p in photos}, "counts": counts,
                "files": dict(sorted(files.items()))}
    atomic_write(str(root / MANIFEST), json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return _info(root, manifest, rebuilt=True, seconds=time.perf_counter() - start)
