"""Graph rewrites that make open_clip detectors export cleanly (torch, imported late).

Two changes, both checked by the exporter's verification against the untouched detector:
- nn.MultiheadAttention is swapped for an equivalent batch-first attention
  (plain MatMul/Softmax). torch's fused fast path does not export, and its
  (L, N, D) layout puts Transpose->MatMul pairs on the batch axis that
  onnxruntime 1.32's CPU layout optimiser crashes on in float16.
- float16 keeps float32 graph inputs/outputs with casts inside (ExportGraph), so the file
  runs anywhere onnxruntime runs, CPU included.
"""
from __future__ import annotations

from .spec import ExportError


def _torch():
    import torch

    return torch


def _export_modules():
    """Module classes are built lazily so importing this file does not import torch."""
    torch = _torch()
    from torch import nn

    class BatchFirstAttention(nn.Module):
        """nn.MultiheadAttention self-attention as plain batch-first MatMul/Softmax (same weights)."""

        def __init__(self, mha: nn.MultiheadAttention):
            super().__init__()
            self.heads = mha.num_heads
            self.batch_first = mha.batch_first
            self.in_proj_weight = mha.in_proj_weight
            self.in_proj_bias = mha.in_proj_bias
            self.out_proj = mha.out_proj

        def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None,
                    key_padding_mask=None, is_causal=False):
            if key_padding_mask is not None or is_causal:
                raise ExportError("export supports encoder self-attention only (no padding mask, not causal)")
            x = query if self.batch_first else query.transpose(0, 1)
            n, length, dim = x.shape
            head_dim = dim // self.heads
            qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
            qkv = qkv.reshape(n, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (N, H, L, d)
            scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
            if attn_mask is not None:
                scores = (scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                          else scores + attn_mask.to(scores.dtype))
            out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, dim)
            out = self.out_proj(out)
            return (out if self.batch_first else out.transpose(0, 1)), None

    class ExportGraph(nn.Module):
        """What goes into the ONNX file: [uint8 NHWC -> normalised NCHW] -> detector -> (logits, probs)."""

        def __init__(self, detector: nn.Module, *, half: bool, norm: dict | None):
            super().__init__()
            self.detector = detector
            self.half_precision = half
            self.preprocess = norm is not None
            if norm is not None:
                self.register_buffer("mean", torch.tensor(norm["mean"], dtype=torch.float32).view(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(norm["std"], dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x):
            if self.preprocess:  # the same arithmetic as dgsnet.image.preprocess.normalize, in float32
                x = (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
            if self.half_precision:
                x = x.half()
            logits = self.detector(x)
            if logits.dim() == 2:  # tolerate (N, 1) heads
                logits = logits.squeeze(-1)
            logits = logits.float()
            return logits, torch.sigmoid(logits)

    return BatchFirstAttention, ExportGraph


def export_friendly(detector):
    """A copy of `detector` in eval mode with every nn.MultiheadAttention swapped for BatchFirstAttention."""
    import copy

    from torch import nn

    attention_cls, _ = _export_modules()
    model = copy.deepcopy(detector).float().eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                if not child._qkv_same_embed_dim or child.bias_k is not None or child.add_zero_attn:
                    raise ExportError(f"attention module {name!r} is not a packed self-attention "
                                      "(kdim/vdim, bias_k or add_zero_attn set); export supports ViT encoders")
                setattr(parent, name, attention_cls(child))
    return model
