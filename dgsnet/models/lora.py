"""LoRA on the q, k, v slices of open_clip's packed attention in-projection.

open_clip's vision blocks use nn.MultiheadAttention, whose q, k and v
projections are one packed (3D, D) matrix. `LoRAAttention` wraps such a
module: it adds a low-rank update to each chosen slice and runs attention
through F.scaled_dot_product_attention (the fused kernels), never a
hand-written softmax(QK^T)V. The base weights stay frozen.

The teacher of DGS-Net is the encoder before fine-tuning; because only the
LoRA tensors train, it is the same encoder with LoRA switched off
(`lora_disabled`), which saves a full copy of the backbone.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = ("q", "k", "v")


SCALINGS = ("sqrt", "linear")
DROPOUT_MASKS = ("separate", "shared")
# What a checkpoint written before these fields existed was trained with.
LEGACY_FIELDS = {"scaling": "linear", "dropout_masks": "shared"}


@dataclass
class LoRAConfig:
    """Published defaults: rank 6, alpha 6, dropout 0.8 on the LoRA input, q/k/v of all blocks.

    `scaling`: the update is scale * B A with scale = alpha / sqrt(r) ("sqrt",
    what CLIP-LoRA's layers and so the published DGS-Net use) or alpha / r
    ("linear", the original LoRA paper). `dropout_masks`: "separate" draws an
    independent dropout mask for each of q, k and v (the published code has
    one nn.Dropout per projection); "shared" draws one mask for all three.
    """

    rank: int = 6
    alpha: float = 6.0
    dropout: float = 0.8
    targets: tuple[str, ...] = TARGETS
    blocks: list[int] | str = "all"  # "all" or block indices (negative counts from the end)
    scaling: str = "sqrt"
    dropout_masks: str = "separate"

    def __post_init__(self):
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of q, k, v; got {self.targets}")
        if isinstance(self.blocks, str) and self.blocks != "all":
            raise ValueError(f"LoRA blocks must be 'all' or a list of indices, got {self.blocks!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"LoRA scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if self.dropout_masks not in DROPOUT_MASKS:
            raise ValueError(f"LoRA dropout_masks must be one of {', '.join(DROPOUT_MASKS)}, "
                             f"got {self.dropout_masks!r}")

    @property
    def scale(self) -> float:
        if self.scaling == "sqrt":
            return self.alpha / math.sqrt(self.rank)
        return self.alpha / self.rank

    @classmethod
    def from_metadata(cls, values: dict) -> "LoRAConfig":
        """The config a checkpoint recorded; files older than `scaling`/`dropout_masks` mean linear + shared."""
        return cls(**{**LEGACY_FIELDS, **values})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


class LoRADropout(nn.Dropout):
    """nn.Dropout on the LoRA input, with a faster CPU draw. The mask is the same distribution, keep
    with probability 1 - p, kept values scaled by 1 / (1 - p), but drawn as float32 uniforms >= p:
    torch's CPU dropout draws it with bernoulli_, about a tenth of a whole CPU training step at the
    published p = 0.8 (uniforms cost almost nothing next to it). Elsewhere (CUDA: one fused kernel)
    and in eval this is nn.Dropout. The random stream differs from nn.Dropout's on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        # float32 uniforms whatever x's dtype: bfloat16 ones would be too coarse for P(u >= p) = 1 - p
        keep = torch.rand(x.shape, dtype=torch.float32, device=x.device) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


class LoRAAttention(nn.Module):
    """Self-attention of a wrapped nn.MultiheadAttention plus LoRA on q/k/v."""

    def __init__(self, base: nn.MultiheadAttention, cfg: LoRAConfig):
        super().__init__()
        if not base._qkv_same_embed_dim or base.bias_k is not None or base.add_zero_attn:
            raise ValueError("LoRA needs a packed-projection nn.MultiheadAttention "
                             "(same q/k/v dims, no bias_k/bias_v, no add_zero_attn)")
        self.base = base
        self.targets = cfg.targets
        self.scale = cfg.scale
        self.separate_masks = cfg.dropout_masks == "separate"
        self.dropout = LoRADropout(cfg.dropout)
        dim = base.embed_dim
        dtype, device = base.in_proj_weight.dtype, base.in_proj_weight.device
        for t in self.targets:
            a = nn.Parameter(torch.empty(cfg.rank, dim, dtype=dtype, device=device))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear; B = 0 makes the start exact
            self.register_parameter(f"{t}_A", a)
            self.register_parameter(f"{t}_B", nn.Parameter(torch.zeros(dim, cfg.rank, dtype=dtype,
                                                                       device=device)))
        self.enabled = True
        self.merged = False

    def lora_pairs(self):
        for t in self.targets:
            yield t, getattr(self, f"{t}_A"), getattr(self, f"{t}_B")

    def _delta_weight(self) -> dict[str, torch.Tensor]:
        return {t: self.scale * (b @ a) for t, a, b in self.lora_pairs()}

    @torch.no_grad()
    def merge(self) -> None:
        """Adds scale * B A into the packed in-projection; forward then skips LoRA."""
        if self.merged:
            return
        dim = self.base.embed_dim
        for t, delta in self._delta_weight().items():
            i = TARGETS.index(t)
            self.base.in_proj_weight[i * dim:(i + 1) * dim] += delta.to(self.base.in_proj_weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        dim = self.base.embed_dim
        for t, delta in self._delta_weight().items():
            i = TARGETS.index(t)
            self.base.in_proj_weight[i * dim:(i + 1) * dim] -= delta.to(self.base.in_proj_weight.dtype)
        self.merged = False

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None,
                key_padding_mask=None, is_causal=False):
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("LoRAAttention supports self-attention only (query is key is value)")
        if need_weights or key_padding_mask is not None:
            raise ValueError("LoRAAttention does not return attention weights or take key_padding_mask")
        base = self.base
        x = query if base.batch_first else query.transpose(0, 1)  # (N, L, D)
        qkv = F.linear(x, base.in_proj_weight, base.in_proj_bias)
        if self.enabled and not self.merged:
            qkv = qkv + self._lora_qkv(x)
        n, length, dim = x.shape
        heads = base.num_heads
        q, k, v = (t.reshape(n, length, heads, dim // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=base.dropout if self.training else 0.0,
            is_causal=is_causal and attn_mask is None)
        out = base.out_proj(out.transpose(1, 2).reshape(n, length, dim))
        return (out if base.batch_first else out.transpose(0, 1)), None

    def _lora_qkv(self, x: torch.Tensor) -> torch.Tensor:
        if self.separate_masks and self.training and self.dropout.p > 0:
            # One mask per target: each target's down-projection sees its own dropped input.
            low = [F.linear(self.dropout(x), a) for _, a, _ in self.lora_pairs()]
        else:
            # One (N, L, r*T) down-projection for all targets (one mask, or none in eval).
            a_all = torch.cat([a for _, a, _ in self.lora_pairs()], dim=0)
            low = F.linear(self.dropout(x), a_all).split(a_all.shape[0] // len(self.targets), dim=-1)
        pieces = []
        for t in TARGETS:
            if t in self.targets:
                b = getattr(self, f"{t}_B")
                pieces.append(F.linear(low[self.targets.index(t)], b) * self.scale)
            else:
                pieces.append(x.new_zeros(*x.shape[:-1], self.base.embed_dim))
        return torch.cat(pieces, dim=-1)


def _resblocks(visual: nn.Module) -> nn.ModuleList:
    try:
        return visual.transformer.resblocks
    except AttributeError as exc:
        raise ValueError(f"LoRA expects an open_clip VisionTransformer (visual.transformer.resblocks); "
                         f"got {type(visual).__name__}. Timm and ModifiedResNet towers are not supported.") from exc


def apply_lora(visual: nn.Module, cfg: LoRAConfig) -> list[LoRAAttention]:
    """Wraps the attention of the chosen blocks in place; freezes every base weight."""
    blocks = _resblocks(visual)
    n = len(blocks)
    indices = range(n) if cfg.blocks == "all" else [i % n if -n <= i < n else None for i in cfg.blocks]
    if None in indices:
        raise ValueError(f"LoRA blocks {cfg.blocks} out of range for a {n}-block encoder")
    visual.requires_grad_(False)
    wrapped = []
    for i in sorted(set(indices)):
        block = blocks[i]
        if isinstance(block.attn, LoRAAttention):
            raise ValueError(f"block {i} already has LoRA")
        if not isinstance(block.attn, nn.MultiheadAttention):
            raise ValueError(f"block {i} uses {type(block.attn).__name__}; LoRA supports "
                             "nn.MultiheadAttention blocks (standard CLIP ViTs)")
        block.attn = LoRAAttention(block.attn, cfg)
        wrapped.append(block.attn)
    return wrapped


def lora_modules(model: nn.Module) -> list[LoRAAttention]:
    return [m for m in model.modules() if isinstance(m, LoRAAttention)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors only, named as in model.state_dict()."""
    return {k: v for k, v in model.state_dict().items()
            if any(k.endswith(f".{t}_A") or k.endswith(f".{t}_B") for t in TARGETS)}


def merge_lora(model: nn.Module) -> None:
    for m in lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model):
        m.unmerge()


def strip_lora(model: nn.Module) -> nn.Module:
    """Merges LoRA and puts the plain nn.MultiheadAttention modules back (for export)."""
    merge_lora(model)
    for block in getattr(getattr(model, "transformer", None), "resblocks", []):
        if isinstance(block.attn, LoRAAttention):
            block.attn = block.attn.base
    return model


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """The encoder as it was before fine-tuning (the DGS-Net teacher), inside the block."""
    mods = lora_modules(model)
    if any(m.merged for m in mods):
        raise RuntimeError("cannot disable merged LoRA; unmerge_lora(model) first")
    previous = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m, p in zip(mods, previous):
            m.enabled = p


def count_parameters(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}
