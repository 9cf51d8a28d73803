"""open_clip backbones: creation from a name (or a model-config file) plus a pretrained tag or local file.

The activation is resolved from the weights, not only from the config:
OpenAI's CLIP was trained with QuickGELU, but open_clip's plain `ViT-L-14`
config uses nn.GELU, and open_clip only warns when `pretrained="openai"` is
loaded into it. dgsnet builds the QuickGELU variant whenever the weights are
known to be OpenAI's (the `openai` tag, an OpenAI TorchScript release file),
and refuses an explicit activation that contradicts the weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
import zipfile
from dataclasses import asdict, dataclass

import torch
from torch import nn

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "model_configs")
ACTIVATIONS = ("auto", "quick_gelu", "gelu", "config")
log = logging.getLogger(__name__)


@dataclass
class BackboneSpec:
    """What identifies a backbone: a checkpoint records it, and loading checks it.

    `model`: an open_clip model name, or the path of an open_clip model-config
    JSON file ({"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}).
    `activation`: auto (what the weights were trained with, else the
    config's), quick_gelu, gelu, or config (the config's own, whatever the
    weights; how dgsnet before 0.2 built backbones).
    """

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"  # open_clip tag, a local weights file, or None (random init)
    init_seed: int = 0  # makes random-initialised backbones reproducible across runs
    activation: str = "auto"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: choose one of {', '.join(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def _register_configs() -> None:
    import open_clip

    if "dgs-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def is_config_file(model: str) -> bool:
    return model.endswith(".json")


def is_weights_file(pretrained: str | None) -> bool:
    return bool(pretrained) and (os.sep in pretrained or "/" in pretrained
                                 or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")))


def model_config(spec: BackboneSpec) -> dict:
    """The open_clip model config of `spec.model` (a copy; a JSON file is read as is)."""
    import open_clip

    if is_config_file(spec.model):
        if not os.path.isfile(spec.model):
            raise FileNotFoundError(f"model config file {spec.model} does not exist")
        try:
            with open(spec.model, encoding="utf-8") as fh:
                cfg = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{spec.model}: not a valid JSON model config ({exc})") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{spec.model}: a model config is a JSON object, got a {type(cfg).__name__}")
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ValueError(f"{spec.model}: an open_clip model config needs {missing}; "
                             "see open_clip/model_configs/ViT-L-14.json for the format")
        return cfg
    _register_configs()
    if spec.model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {spec.model!r}; see open_clip.list_models() "
                         f"(dgsnet adds {', '.join(sorted(os.listdir(CONFIG_DIR)))}), or give a "
                         "model-config .json file")
    return open_clip.get_model_config(spec.model)


def is_torchscript_archive(path: str) -> bool:
    """OpenAI's released CLIP files (e.g. ViT-L-14.pt) are TorchScript archives."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def weights_activation(spec: BackboneSpec) -> str | None:
    """What the weights were trained with: quick_gelu, gelu, or None when the weights do not say."""
    import open_clip

    if not spec.pretrained:
        return None
    if is_weights_file(spec.pretrained):
        return "quick_gelu" if os.path.isfile(spec.pretrained) and is_torchscript_archive(spec.pretrained) else None
    if is_config_file(spec.model):
        return None
    tag = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    if not tag:
        return None
    return "quick_gelu" if tag.get("quick_gelu", False) else "gelu"


def resolve_activation(spec: BackboneSpec) -> str:
    """The activation the backbone is built with (quick_gelu or gelu); a contradiction is an error."""
    config_act = "quick_gelu" if model_config(spec).get("quick_gelu", False) else "gelu"
    weights_act = weights_activation(spec)
    wanted = {"auto": weights_act or config_act, "config": config_act}.get(spec.activation, spec.activation)
    if weights_act is not None and wanted != weights_act:
        source = f"pretrained {spec.pretrained!r}"
        why = ("this run was recorded before dgsnet matched the activation to the weights (it ran them "
               "with the config's activation); retrain it" if spec.activation == "config" else
               "use --activation auto (or leave it unset)")
        raise ValueError(f"{source} was trained with {weights_act} but the backbone would run {wanted} "
                         f"(model {spec.model}, activation {spec.activation}): every feature would be off; {why}")
    return wanted


def activation_of(clip: nn.Module) -> str:
    """quick_gelu or gelu: what the image tower's MLPs actually run."""
    from open_clip.transformer import QuickGELU

    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in clip.visual.modules()) else "gelu"


def _build_from_config(cfg: dict, quick_gelu: bool) -> nn.Module:
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = {**cfg, "quick_gelu": quick_gelu}
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    return (CustomTextCLIP if custom_text else CLIP)(**cfg)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A CLIP state dict from safetensors, a torch file (weights_only: no code runs) or a TorchScript release."""
    from dgsnet.fileio import read_tensors, read_torch_state_dict

    if path.endswith(".safetensors"):
        return read_tensors(path)
    if is_torchscript_archive(path):
        state = torch.jit.load(path, map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            state.pop(key, None)
        return dict(state)
    return read_torch_state_dict(path, "a safetensors, state-dict or OpenAI .pt file")


def _load_local(model: nn.Module, path: str) -> None:
    state = read_weights(path)
    own = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}  # non-persistent ones (attn_mask) may be saved
    state = {k: v for k, v in state.items() if k in own or k not in buffers}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
             for k in set(own) & set(state) if state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not fit this backbone: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, wrong shape {wrong[:5]}; pick the --model it was trained as")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def check_source(spec: BackboneSpec) -> str:
    """What create_clip needs, checked without building anything: the model config, the weights
    (a local file that exists, or a tag that is cached or downloadable now) and the activation.
    Returns the activation the backbone runs."""
    model_config(spec)
    pretrained = spec.pretrained
    if is_weights_file(pretrained) and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"pretrained weights file {pretrained} does not exist or is not a regular file; give an "
                                "open_clip tag (e.g. openai) or an existing local file")
    activation = resolve_activation(spec)
    if pretrained and not (is_config_file(spec.model) or is_weights_file(pretrained)):
        from dgsnet.models.weights import check_available

        check_available(spec.model, pretrained)  # not cached and no network: fail now, not after retries
    return activation


def create_clip(spec: BackboneSpec) -> nn.Module:
    """The full CLIP model (visual + text towers) in float32 on the CPU, in eval mode."""
    import open_clip

    cfg = model_config(spec)
    pretrained = spec.pretrained
    quick_gelu = check_source(spec) == "quick_gelu"
    torch.manual_seed(spec.init_seed)  # random init (and any random head) is reproducible
    if is_config_file(spec.model) or is_weights_file(pretrained) or not pretrained:
        model = _build_from_config(cfg, quick_gelu)
        if pretrained:
            _load_local(model, pretrained)
    else:
        with warnings.catch_warnings():
            # open_clip only warns on an activation/weights mismatch; resolve_activation rules it
            # out, and any warning of that kind left is an error here.
            warnings.filterwarnings("error", message=".*QuickGELU mismatch.*")
            model = open_clip.create_model(spec.model, pretrained=pretrained, force_quick_gelu=quick_gelu,
                                           **({} if quick_gelu else {"quick_gelu": False}))
    if not pretrained:
        log.warning("backbone %s is random-initialised (seed %d): fine for tests and the demo, "
                    "not for real detection (use --pretrained openai)", spec.model, spec.init_seed)
    return model.eval()


def tokenizer(spec: BackboneSpec):
    """The text tokenizer of the backbone (CLIP's BPE with the config's context length)."""
    import open_clip

    if is_config_file(spec.model):
        length = model_config(spec)["text_cfg"].get("context_length", 77)
        return open_clip.SimpleTokenizer(context_length=length)
    _register_configs()
    return open_clip.get_tokenizer(spec.model)


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
