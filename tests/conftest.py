"""Shared test setup.

Triton runs on the CPU only through its interpreter, which must be chosen
before triton is first imported: set it here, before any test module loads.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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
