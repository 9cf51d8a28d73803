"""The open_clip architecture of a published CLIP, read off its tensor shapes, and the keys and
shapes a file of that architecture must have."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dgsnet.convert.read import STUDENT, first_keys

BLOCK = "visual.transformer.resblocks."


@dataclass
class Architecture:
    """What open_clip's build_model_from_openai_state_dict reads off an OpenAI CLIP state dict."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_mlp_ratio: float
    context_length: int
    vocab_size: int
    text_width: int
    text_heads: int
    text_layers: int
    text_mlp_ratio: float

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64

    def model_config(self) -> dict:
        """An open_clip model config ({"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"})."""
        return {
            "embed_dim": self.embed_dim,
            "quick_gelu": True,  # OpenAI CLIP was trained with QuickGELU
            "vision_cfg": {"image_size": self.image_size, "layers": self.vision_layers,
                           "width": self.vision_width, "head_width": 64, "patch_size": self.patch_size,
                           "mlp_ratio": self.vision_mlp_ratio},
            "text_cfg": {"context_length": self.context_length, "vocab_size": self.vocab_size,
                         "width": self.text_width, "heads": self.text_heads, "layers": self.text_layers,
                         "mlp_ratio": self.text_mlp_ratio},
        }

    def describe(self) -> str:
        return (f"ViT width {self.vision_width}, {self.vision_layers} blocks, {self.vision_heads} heads, "
                f"patch {self.patch_size}, {self.image_size} px; text width {self.text_width}, "
                f"{self.text_layers} blocks, {self.text_heads} heads, context {self.context_length}, "
                f"vocab {self.vocab_size}; embed {self.embed_dim}; QuickGELU")


def block_indices(keys, prefix: str) -> list[int]:
    """The sorted block numbers N of the keys `prefix`N.*."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def infer_architecture(clip: dict[str, torch.Tensor], where: str) -> Architecture:
    """The CLIP size from its tensor shapes (`where` names the key prefix in errors)."""
    required = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj", "text_projection",
                "positional_embedding", "token_embedding.weight", "ln_final.weight"]
    missing = [where + k for k in required if k not in clip]
    if missing:
        hint = (" (a ResNet CLIP: only ViT backbones are supported)"
                if any(k.startswith("visual.layer1.") for k in clip) else "")
        raise ValueError(f"cannot infer the CLIP architecture: missing keys {first_keys(missing)}{hint}")
    conv = clip["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    rows = clip["visual.positional_embedding"].shape[0]
    grid = round((rows - 1) ** 0.5)
    if grid * grid + 1 != rows:
        raise ValueError(f"{where}visual.positional_embedding has {rows} rows, not 1 + a square grid")
    vblocks = block_indices(clip, BLOCK)
    tblocks = block_indices(clip, "transformer.resblocks.")
    for name, blocks in (("visual.transformer", vblocks), ("transformer", tblocks)):
        if not blocks or blocks != list(range(len(blocks))):
            raise ValueError(f"{where}{name}.resblocks: block indices {blocks} are not 0..n-1")
    text_width = clip["ln_final.weight"].shape[0]
    if width < 64 or text_width < 64:
        raise ValueError(f"widths {width} (image) / {text_width} (text) < 64: OpenAI CLIP has width // 64 "
                         "attention heads, so this cannot be an OpenAI-layout CLIP")

    def mlp_ratio(prefix: str, dim: int) -> float:
        key = prefix + "0.mlp.c_fc.weight"
        if key not in clip:
            raise ValueError(f"cannot infer the MLP width: {where}{key} is missing")
        ratio = clip[key].shape[0] / dim
        return int(ratio) if ratio == int(ratio) else ratio

    return Architecture(
        embed_dim=clip["text_projection"].shape[1], image_size=patch * grid, patch_size=patch,
        vision_width=width, vision_layers=len(vblocks), vision_mlp_ratio=mlp_ratio(BLOCK, width),
        context_length=clip["positional_embedding"].shape[0], vocab_size=clip["token_embedding.weight"].shape[0],
        text_width=text_width, text_heads=text_width // 64, text_layers=len(tblocks),
        text_mlp_ratio=mlp_ratio("transformer.resblocks.", text_width))


def expected_clip_shapes(arch: Architecture) -> dict[str, tuple]:
    """Key -> shape of the open_clip CLIP of `arch` (built on the meta device: no memory, no init cost)."""
    from open_clip.model import CLIP

    with torch.device("meta"):
        model = CLIP(**arch.model_config())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_keys(got: dict[str, torch.Tensor], want: dict[str, tuple], source: str, layout: str) -> None:
    """An error naming the missing and unexpected keys and the wrong shapes of `got`, if any."""
    missing, unexpected = set(want) - set(got), set(got) - set(want)
    wrong = [f"{k} {tuple(got[k].shape)} != {want[k]}" for k in sorted(set(want) & set(got))
             if tuple(got[k].shape) != want[k]]
    if missing or unexpected or wrong:
        hint = ""
        if any(re.search(r"attn\.proj\.w_lora_[AB]$", k) for k in unexpected):
            hint = (" LoRA on the attention output projection ('o' in the published --params) is not "
                    "supported: dgsnet puts LoRA on q, k and v only.")
        elif any(k.startswith(STUDENT + "transformer.") and "_proj." in k for k in unexpected):
            hint = " LoRA in the text tower (published --encoder text/both) is not supported."
        raise ValueError(f"{source} does not have {layout}: missing keys {first_keys(missing)}, unexpected keys "
                         f"{first_keys(unexpected)}, wrong shapes {wrong[:5]}.{hint}")
