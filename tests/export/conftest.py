"""Makes the runtime importable as `dgsnet_export` before setup.py maps export/ to that name.

Once `package_dir={"dgsnet_export": "export"}` is installed, the real package is used.
"""
import importlib.util
import sys
from pathlib import Path

EXPORT_DIR = Path(__file__).resolve().parents[2] / "export"


def register_dgsnet_export() -> None:
    if "dgsnet_export" in sys.modules:
        return
    if importlib.util.find_spec("dgsnet_export") is not None:
        return
    spec = importlib.util.spec_from_file_location("dgsnet_export", EXPORT_DIR / "__init__.py",
                                                  submodule_search_locations=[str(EXPORT_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dgsnet_export"] = module
    spec.loader.exec_module(module)


register_dgsnet_export()


# ---------------------------------------------------------------- shared fixtures
import numpy as np  # noqa: E402
import pytest  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera")


def tiny_detector(seed: int = 0):
    """dgs-tiny (random weights) + Linear(64, 1): the detector interface checkpoints give."""
    import open_clip
    import torch
    from torch import nn

    from dgsnet.models import Detector

    open_clip.add_model_config(str(Path(__file__).resolve().parents[2] / "dgsnet" / "model_configs"))
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
    from dgsnet.export_onnx import export_detector

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
