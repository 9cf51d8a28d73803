"""Shared test setup.

Triton runs on the CPU only through its interpreter, which must be chosen
before triton is first imported: set it here, before any test module loads.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------- small run and test folders
# Factories rather than folders: each test module makes its own copy (some tests change theirs).

REAL_FAKE = ("0_real", "1_fake")


def write_tiny_run(folder, *, init_seed: int = 0, step: int = 1, config=None):
    """A finished stage-2 dgs-tiny run folder (random weights, LoRA at its zero start), as
    `dgsnet train` leaves it: enough for eval, predict and export to load."""
    from dgsnet.models import BackboneSpec, DGSNetModel, LoRAConfig
    from dgsnet.models import checkpoint as ckpt

    model = DGSNetModel(BackboneSpec("dgs-tiny", None, init_seed=init_seed), LoRAConfig())
    ckpt.write_model(str(folder), model, stage=2, config={"norm": "imagenet"} if config is None else config,
                     step=step)
    return folder


def write_test_set(root, subsets=("gan",), colours=((9, 99, 199), (9, 99, 199)), name: str = "x.png"):
    """An eval data root: root/<subset>/0_real/<name> and root/<subset>/1_fake/<name>, each one flat
    64x64 RGB PNG (`colours` gives the real and the fake colour)."""
    from PIL import Image

    for subset in subsets:
        for label, colour in zip(REAL_FAKE, colours):
            folder = os.path.join(str(root), subset, label)
            os.makedirs(folder)
            Image.new("RGB", (64, 64), colour).save(os.path.join(folder, name))
    return root


@pytest.fixture(scope="session")
def make_tiny_run():
    """write_tiny_run(folder, init_seed=0, step=1, config={"norm": "imagenet"}) -> folder."""
    return write_tiny_run


@pytest.fixture(scope="session")
def make_test_set():
    """write_test_set(root, subsets=("gan",), colours=(real, fake), name="x.png") -> root."""
    return write_test_set


# ---------------------------------------------------------------- a tiny detector, its export, photos, a trained run
# (session-wide: export, CLI, interrupt and disk-full tests all use them)

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera")


def tiny_detector(seed: int = 0):
    """dgs-tiny (random weights) + Linear(64, 1): the detector interface checkpoints give."""
    import open_clip
    import torch
    from torch import nn

    from dgsnet.models import Detector

    open_clip.add_model_config(str(Path(__file__).resolve().parents[1] / "dgsnet" / "model_configs"))
    torch.manual_seed(seed)
    clip = open_clip.create_model("dgs-tiny")
    head = nn.Linear(64, 1)
    with torch.no_grad():  # spread the logits so labels differ between photos
        head.weight.mul_(20.0)
    return Detector(clip.visual, head).eval()


@pytest.fixture(scope="session")
def detector():
    return tiny_detector()


@pytest.fixture(scope="session")
def fp32_export(detector, tmp_path_factory):
    from dgsnet_export.exporter import export_detector

    path = tmp_path_factory.mktemp("export") / "detector.onnx"
    report = export_detector(detector, path, metadata={"backbone": "dgs-tiny", "pretrained": "",
                                                       "normalization": "imagenet"})
    return path, report


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """Real photos from skimage.data as PNG and JPEG files (greyscale `camera` included)."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(PHOTOS):
        pixels = np.asarray(getattr(skimage.data, name)())
        Image.fromarray(pixels).save(folder / f"{i}_{name}.{'png' if i % 2 else 'jpg'}", quality=95)
    return folder


def write_trained_run(directory, stage: int = 2, seed: int = 1):
    """A finished dgs-tiny run directory as `dgsnet train` writes it, with LoRA that matters.

    LoRA B starts at zero in training; here every LoRA tensor is random so merging it
    changes the encoder, and a merge that dropped or mis-scaled it would be caught.
    """
    import torch

    from dgsnet.models import BackboneSpec, DGSNetModel, LoRAConfig
    from dgsnet.models.checkpoint import write_model

    model = DGSNetModel(BackboneSpec(model="dgs-tiny", pretrained=None, init_seed=0), LoRAConfig())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.lora_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        for head in (model.student_head, model.teacher_head):
            head.weight.mul_(20.0)  # spread the logits so photos get different labels
    write_model(str(directory), model, stage, {"norm": "imagenet"}, step=10)
    return model.eval()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(run directory, the DGSNetModel written to it) of a finished stage-2 run."""
    directory = tmp_path_factory.mktemp("run")
    return directory, write_trained_run(directory)
