"""open_clip backbones: creation from a name plus pretrained tag or local file."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "model_configs")
log = logging.getLogger(__name__)


@dataclass
class BackboneSpec:
    """What identifies a backbone: a checkpoint records it, and loading checks it."""

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"  # open_clip tag, a local weights file, or None (random init)
    init_seed: int = 0  # makes random-initialised backbones reproducible across runs

    def to_dict(self) -> dict:
        return asdict(self)


def _register_configs() -> None:
    import open_clip

    if "dgs-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def create_clip(spec: BackboneSpec) -> nn.Module:
    """The full CLIP model (visual + text towers) in float32 on the CPU, in eval mode."""
    import open_clip

    _register_configs()
    if spec.model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {spec.model!r}; see open_clip.list_models() "
                         f"(dgsnet adds {', '.join(sorted(os.listdir(CONFIG_DIR)))})")
    pretrained = spec.pretrained
    if pretrained and (os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"pretrained weights file {pretrained} does not exist; give an "
                                    "open_clip tag (e.g. openai) or an existing local file")
    torch.manual_seed(spec.init_seed)  # random init (and any random head) is reproducible
    previous = logging.getLogger().level
    if not pretrained:
        logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random init; we say it once
    try:
        model = open_clip.create_model(spec.model, pretrained=pretrained or None)
    finally:
        logging.getLogger().setLevel(previous)
    if not pretrained:
        log.warning("backbone %s is random-initialised (seed %d): fine for tests and the demo, "
                    "not for real detection (use --pretrained openai)", spec.model, spec.init_seed)
    return model.eval()


def embed_dim(clip: nn.Module) -> int:
    proj = getattr(clip.visual, "proj", None)
    if proj is not None:
        return proj.shape[1]
    return clip.visual.output_dim


@torch.no_grad()
def fingerprint(module: nn.Module, samples: int = 256) -> str:
    """A cheap identity of a module's weights: names, shapes and a strided sample of values."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(flat[::step][:samples].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
