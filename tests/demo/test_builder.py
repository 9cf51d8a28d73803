"""The demo's synthetic benchmark builder: deterministic, well-formed, and
each family leaves a real (measurable, family-specific) fingerprint."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgsnet.demo import FAMILIES, FAMILY_STATISTIC, DemoInfo, build_demo_dataset, generate
from dgsnet.demo.crops import CropSampler
from dgsnet.demo.photos import load_photos
from dgsnet.demo.signal import signal_table

SMALL = dict(size=128, per_class=6, test_per_class=4)


def _tree_hashes(root: Path) -> dict:
    """relative path -> sha256 of every file under root (manifest included)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _pngs(folder: Path) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


@pytest.fixture(scope="module")
def default_build(tmp_path_factory) -> DemoInfo:
    return build_demo_dataset(str(tmp_path_factory.mktemp("demo") / "bench"), seed=0)


@pytest.fixture(scope="module")
def signal(default_build):
    return {row["family"]: row for row in signal_table(default_build.root)}


# ----------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path):
    a = build_demo_dataset(str(tmp_path / "a"), seed=3, **SMALL)
    b = build_demo_dataset(str(tmp_path / "b"), seed=3, **SMALL)
    c = build_demo_dataset(str(tmp_path / "c"), seed=4, **SMALL)
    ha, hb, hc = (_tree_hashes(Path(x.root)) for x in (a, b, c))
    assert len(ha) > 6 * 2 + 4 * 2 * len(FAMILIES)
    assert ha == hb
    # another seed: same layout and counts, but every image is another crop
    folders = lambda h: sorted(k.rsplit("/", 1)[0] for k in h if k.endswith(".png"))  # noqa: E731
    assert folders(ha) == folders(hc)
    png_a = {v for k, v in ha.items() if k.endswith(".png")}
    png_c = {v for k, v in hc.items() if k.endswith(".png")}
    assert not png_a & png_c


def test_rebuild_is_skipped_for_same_parameters_and_replaces_for_new(tmp_path):
    root = tmp_path / "bench"
    first = build_demo_dataset(str(root), seed=1, **SMALL)
    assert first.rebuilt
    before = {p: os.stat(root / p).st_mtime_ns for p in _pngs(root)}
    again = build_demo_dataset(str(root), seed=1, **SMALL)
    assert not again.rebuilt and again.counts == first.counts
    assert {p: os.stat(root / p).st_mtime_ns for p in _pngs(root)} == before

    # a lost file makes the build stale
    victim = root / _pngs(root)[0]
    victim.unlink()
    assert build_demo_dataset(str(root), seed=1, **SMALL).rebuilt and victim.is_file()

    # new parameters: the old build is replaced entirely (no stale images, families dropped)
    new = build_demo_dataset(str(root), seed=1, size=128, per_class=3, test_per_class=2,
                             families=["tconv", "nearest_blur"])
    assert new.rebuilt
    assert sorted(p.name for p in (root / "test").iterdir() if p.is_dir()) == ["nearest_blur", "tconv"]
    assert len(_pngs(root)) == 2 * 3 + 2 * 2 * 2
    assert not any(p.name.startswith(".bench.building") for p in tmp_path.iterdir())


def test_refuses_folder_with_foreign_files_and_bad_arguments(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="notes.txt"):
        build_demo_dataset(str(root), **SMALL)
    assert (root / "notes.txt").read_text() == "keep me"
    # someone's own train/ folder is never replaced, even with nothing else there
    other = tmp_path / "theirs"
    (other / "train" / "0_real").mkdir(parents=True)
    (other / "train" / "0_real" / "x.png").write_bytes(b"mine")
    with pytest.raises(ValueError, match="train"):
        build_demo_dataset(str(other), **SMALL)
    assert (other / "train" / "0_real" / "x.png").read_bytes() == b"mine"
    with pytest.raises(ValueError, match="choose from"):
        build_demo_dataset(str(tmp_path / "x"), families=["tconv", "diffusion"], **SMALL)
    with pytest.raises(ValueError, match="train_family"):
        build_demo_dataset(str(tmp_path / "x"), families=["nearest_blur"], **SMALL)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_demo_dataset(str(tmp_path / "x"), size=100)
    with pytest.raises(ValueError, match="per_class"):
        build_demo_dataset(str(tmp_path / "x"), per_class=0)


# ----------------------------------------------------------------- layout
def test_layout_counts_and_manifest(default_build):
    root = Path(default_build.root)
    info = default_build
    assert info.train_family == "tconv" and info.families == list(FAMILIES) and len(FAMILIES) >= 4
    assert Path(info.train_dir) == root / "train" and Path(info.test_dir) == root / "test"
    assert len(_pngs(root / "train" / "0_real")) == len(_pngs(root / "train" / "1_fake")) == 64
    assert info.counts["train"] == {"real": 64, "fake": 64}
    for fam in FAMILIES:
        assert len(_pngs(root / "test" / fam / "0_real")) == len(_pngs(root / "test" / fam / "1_fake")) == 24
        assert info.counts[f"test/{fam}"] == {"real": 24, "fake": 24}
    assert len(_pngs(root)) == 128 + 48 * len(FAMILIES)

    manifest = json.loads((root / "manifest.json").read_text())
    assert "SYNTHETIC" in manifest["note"] and manifest["params"]["seed"] == 0
    train_fakes = [e for k, e in manifest["files"].items() if k.startswith("train/1_fake/")]
    assert {e["family"] for e in train_fakes} == {"tconv"}
    for rel, entry in manifest["files"].items():
        data = (root / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
    sample = sorted(manifest["files"])[::37]
    for rel in sample:
        with Image.open(root / rel) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (256, 256)


def test_both_classes_of_each_split_share_the_photo_mix(default_build):
    manifest = json.loads((Path(default_build.root) / "manifest.json").read_text())
    by_folder = {}
    for rel, entry in manifest["files"].items():
        by_folder.setdefault(rel.rsplit("/", 1)[0], []).append(entry["photo"])
    for folder, photos in by_folder.items():
        if folder.endswith("0_real"):
            assert sorted(photos) == sorted(by_folder[folder[:-6] + "1_fake"]), folder
    assert len(set(by_folder["train/0_real"])) == len(manifest["photos"]) >= 8


def test_captions_cover_every_image_in_every_scope(default_build):
    root = Path(default_build.root)
    manifest = json.loads((root / "manifest.json").read_text())
    captions = json.loads((root / "captions.json").read_text())
    assert set(captions) == set(_pngs(root))
    # the caption is the source photo's, and distinct photos have distinct captions
    assert len(set(manifest["captions"].values())) == len(manifest["captions"])
    for rel, entry in manifest["files"].items():
        assert captions[rel] == manifest["captions"][entry["photo"]]
    # per-folder files, keyed relative to the folder a loader would be rooted at
    scopes = ["train", "test"] + [f"test/{f}" for f in FAMILIES]
    for scope in scopes:
        table = json.loads((root / scope / "captions.json").read_text())
        assert set(table) == set(_pngs(root / scope)), scope
        assert all(captions[f"{scope}/{k}"] == v for k, v in table.items())


def test_no_crop_is_used_twice(default_build):
    root = Path(default_build.root)
    manifest = json.loads((root / "manifest.json").read_text())
    digests = {}
    for rel in _pngs(root):
        digests.setdefault(hashlib.sha256((root / rel).read_bytes()).hexdigest(), []).append(rel)
    assert all(len(v) == 1 for v in digests.values()), [v for v in digests.values() if len(v) > 1]
    # stronger than bytes: no (photo, box) is the source of two images, in any split or class
    boxes = [(e["photo"], tuple(e["box"])) for e in manifest["files"].values()]
    assert len(set(boxes)) == len(boxes)
    # a crop is never upsampled: real images carry no interpolation fingerprint
    assert min(e["box"][2] for e in manifest["files"].values()) >= 256
    assert len({e["box"][2] for e in manifest["files"].values()}) > 50  # several scales


# ----------------------------------------------------------------- fingerprints
@pytest.fixture(scope="module")
def clean_crops():
    sampler = CropSampler(np.random.default_rng(11), 256)
    photos = load_photos(256)
    return [sampler.draw(photos[i % len(photos)])[1] for i in range(16)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_moves_its_statistic_away_from_its_own_source(family, clean_crops):
    stat, sign = FAMILY_STATISTIC[family]
    moved = [sign * (stat(generate(family, c, np.random.default_rng(i))) - stat(c)) > 0
             for i, c in enumerate(clean_crops)]
    assert np.mean(moved) >= 0.9, (family, np.mean(moved))


def test_tconv_checkerboard_is_a_nyquist_spike():
    # a flat grey crop through tconv becomes a period-2 pattern: the spectrum's only
    # non-DC energy sits at the Nyquist frequencies
    flat = np.full((64, 64, 3), 128, np.uint8)
    out = generate("tconv", flat, np.random.default_rng(0)).astype(np.float64)[4:-4, 4:-4, 0]
    assert out.std() > 1.0
    power = np.abs(np.fft.fft2(out - out.mean())) ** 2
    n = out.shape[0]
    spike = power[n // 2, 0] + power[0, n // 2] + power[n // 2, n // 2] + power[n // 4, 0] + power[0, n // 4] \
        + power[n // 4, n // 4] + power[n // 2, n // 4] + power[n // 4, n // 2] + power[3 * n // 4, 0] \
        + power[0, 3 * n // 4] + power[3 * n // 4, 3 * n // 4] + power[n // 2, 3 * n // 4] \
        + power[3 * n // 4, n // 2] + power[n // 4, 3 * n // 4] + power[3 * n // 4, n // 4]
    assert spike / power.sum() > 0.99  # all energy at periods 2 and 4 (two stride-2 stages)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_is_separable_from_real_by_its_statistic(family, signal):
    name = {"tconv": "nyquist_peak", "pixelshuffle": "nyquist_peak", "nearest_blur": "high_freq",
            "noise_denoise": "median_root", "bilinear_jpeg": "jpeg_block"}[family]
    score = signal[family][f"auc_{name}"]
    if FAMILY_STATISTIC[family][1] < 0:
        score = 1.0 - score
    assert score >= 0.85, (family, name, score)


def test_signal_is_learnable_but_does_not_transfer_to_every_family(signal):
    # a classifier fitted on train/ (tconv) with the same statistics: near perfect on
    # tconv, near chance somewhere else, so cross-generator generalisation is not free
    assert signal["tconv"]["centroid_acc"] >= 0.9
    assert min(row["centroid_acc"] for fam, row in signal.items() if fam != "tconv") <= 0.7
