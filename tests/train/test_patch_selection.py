"""--patch-selection: where a training run selects patches (DataLoader workers or the training device)
changes nothing it computes: the same losses at every step and the same weights, bit for bit; auto picks
the device on a GPU only; a dataset that cannot defer selection is refused when the flag asks for it."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dgsnet.data.dataset import FolderDataset
from dgsnet.train import TrainConfig, train_dgs, train_teacher
from dgsnet.train.trainer import patch_selection_site
from tests.data.test_select_device import textured
from tests.train.toy_data import ToyDataset

SIZES = [(224, 224), (257, 311), (100, 57), (300, 240), (240, 300), (224, 260)]
BASE = dict(model="dgs-tiny", pretrained=None, batch_size=4, lr=2e-3, teacher_lr=2e-2, ckpt_every=100,
            log_every=1, flip_prob=0.5, blur_prob=0.3, jpeg_prob=0.3, resize_prob=0.3, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_sizes")
    rng = np.random.default_rng(0)
    for label in (0, 1):
        folder = root / ("0_real", "1_fake")[label]
        folder.mkdir()
        for i in range(6):
            h, w = SIZES[(i + label) % len(SIZES)]
            Image.fromarray(textured(rng, h, w)).save(folder / f"{i}.{'jpg' if i % 2 else 'png'}", quality=92)
    return str(root)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data):
    out = str(tmp_path_factory.mktemp("teacher") / "run")
    train_teacher(TrainConfig(**BASE, data=data, out=out, teacher_epochs=1, workers=0))
    return out


def _run(tmp_path, data, teacher, name, **kwargs):
    out = str(tmp_path / name)
    train_dgs(TrainConfig(**BASE, data=data, out=out, teacher=teacher, epochs=2, surgery="feature", **kwargs))
    with open(os.path.join(out, "log.jsonl")) as fh:
        losses = [(r["step"], {k: v for k, v in r.items() if k.startswith("loss_")})
                  for r in map(json.loads, fh) if r["event"] == "train"]
    return losses, load_file(os.path.join(out, "model.safetensors"))


@pytest.mark.slow
def test_device_selection_trains_exactly_as_the_workers(tmp_path, data, teacher):
    want_losses, want_weights = _run(tmp_path, data, teacher, "cpu", patch_selection="cpu", workers=0)
    assert len(want_losses) == 6 and all("loss_total" in terms for _, terms in want_losses) and want_weights
    for workers in (0, 1):
        losses, weights = _run(tmp_path, data, teacher, f"device{workers}", patch_selection="device",
                               workers=workers)
        assert losses == want_losses  # exact: the same tiles give the same floats
        assert weights.keys() == want_weights.keys()
        assert all(torch.equal(weights[k], want_weights[k]) for k in weights)


def test_auto_selects_on_a_gpu_only(data):
    cfg = TrainConfig(**{**BASE, "device": "auto"}, data=data)
    folder = FolderDataset([], [])
    assert patch_selection_site(cfg, torch.device("cpu"), folder) == "cpu"
    assert patch_selection_site(cfg, torch.device("cuda"), folder) == "device"
    # a dataset without deferred selection (a user's own Dataset) keeps the workers' tiles under auto
    assert patch_selection_site(cfg, torch.device("cuda"), ToyDataset(4)) == "cpu"
    explicit = TrainConfig(**BASE, data=data, patch_selection="device")
    assert patch_selection_site(explicit, torch.device("cpu"), folder) == "device"
    with pytest.raises(ValueError, match="--patch-selection device needs dgsnet's folder dataset.*ToyDataset"):
        patch_selection_site(explicit, torch.device("cpu"), ToyDataset(4))


def test_the_flag_is_checked_and_may_change_on_resume():
    from dgsnet.train.config import RUNTIME_ONLY

    with pytest.raises(ValueError, match="patch_selection='gpu': choose one of auto, cpu, device"):
        TrainConfig(patch_selection="gpu")
    assert "patch_selection" in RUNTIME_ONLY  # where the tiles are made does not change them


@pytest.fixture(scope="module")
def jpeg_data(tmp_path_factory):
    """JPEGs (some turned by EXIF, one greyscale), a PNG and a JPEG whose pixel data is cut short."""
    from tests.data.test_device_jpeg import _jpeg

    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(1)
    for label in (0, 1):
        folder = root / ("0_real", "1_fake")[label]
        folder.mkdir()
        for i in range(6):
            h, w = SIZES[(i + 2 * label) % len(SIZES)]
            pixels = textured(rng, h, w)
            if i == 5:
                Image.fromarray(pixels).save(folder / f"{i}.png")
            else:
                _jpeg(folder / f"{i}.jpg", pixels, orientation=1 + (i + label) % 8, mode="L" if i == 4 else "RGB")
    whole = (root / "1_fake" / "0.jpg").read_bytes()
    (root / "0_real" / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    return str(root)


NO_PIXEL_AUGMENTS = dict(blur_prob=0.0, jpeg_prob=0.0, resize_prob=0.0)


@pytest.mark.slow
def test_device_jpeg_decoding_trains_exactly_as_the_workers(tmp_path, jpeg_data):
    # on the CPU torchvision decodes with libjpeg-turbo, as Pillow does: the same pixels, so the same run
    from dgsnet.data import build_train_dataset

    deferred = build_train_dataset(TrainConfig(**{**BASE, **NO_PIXEL_AUGMENTS}, data=jpeg_data)
                                   ).with_deferred_selection(device_jpeg=True)
    encoded = [deferred[i][0].dim() == 1 for i in range(len(deferred))]
    assert sum(encoded) == 11 and len(encoded) == 13  # every JPEG travels encoded (the cut one too); the PNGs not
    teacher = str(tmp_path / "teacher")
    train_teacher(TrainConfig(**{**BASE, **NO_PIXEL_AUGMENTS}, data=jpeg_data, out=teacher, teacher_epochs=1,
                              workers=0))
    base = {**BASE, **NO_PIXEL_AUGMENTS}
    runs = {}
    for name, extra in {"cpu": dict(patch_selection="cpu"),
                        "device": dict(patch_selection="device", jpeg_decoder="device")}.items():
        out = str(tmp_path / name)
        train_dgs(TrainConfig(**base, data=jpeg_data, out=out, teacher=teacher, epochs=2, surgery="feature",
                              workers=1, **extra))
        with open(os.path.join(out, "log.jsonl")) as fh:
            runs[name] = ([r for r in map(json.loads, fh) if r["event"] == "train"],
                          load_file(os.path.join(out, "model.safetensors")))
    (cpu_log, cpu_weights), (dev_log, dev_weights) = runs["cpu"], runs["device"]
    assert len(cpu_log) == 6  # 13 files, one unreadable: 3 batches of 4 per epoch
    strip = [{k: v for k, v in r.items() if k.startswith("loss_")} for r in cpu_log]
    assert [{k: v for k, v in r.items() if k.startswith("loss_")} for r in dev_log] == strip
    assert all(torch.equal(dev_weights[k], cpu_weights[k]) for k in cpu_weights)


def test_device_jpeg_decoding_needs_device_selection_and_no_pixel_augments(jpeg_data):
    from dgsnet.data import build_train_dataset

    with pytest.raises(ValueError, match="use --patch-selection device \\(or auto\\), or --jpeg-decoder cpu"):
        TrainConfig(**NO_PIXEL_AUGMENTS, jpeg_decoder="device", patch_selection="cpu")
    with pytest.raises(ValueError, match="--blur-prob, --jpeg-prob and --resize-prob to 0, or use --jpeg-decoder cpu"):
        TrainConfig(jpeg_decoder="device", jpeg_prob=0.1)
    auto = TrainConfig(**NO_PIXEL_AUGMENTS, jpeg_decoder="device")
    assert patch_selection_site(auto, torch.device("cpu"), FolderDataset([], [])) == "device"
    dataset = build_train_dataset(TrainConfig(**BASE, data=jpeg_data))  # blur/jpeg/resize on
    with pytest.raises(ValueError, match="--blur-prob, --jpeg-prob and --resize-prob to 0, or use --jpeg-decoder cpu"):
        dataset.with_deferred_selection(device_jpeg=True)
