"""The three DGS-Net branches on one open_clip model (docs/method.md#1-model-and-training-stages).

student: the CLIP image encoder with LoRA on attention q, k, v + student_head
teacher: the same encoder with LoRA switched off (= before fine-tuning) + teacher_head
text:    the frozen CLIP text encoder + text_head
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from dgsnet.models.backbone import BackboneSpec, activation_of, create_clip, embed_dim, fingerprint, tokenizer
from dgsnet.models.lora import (LoRAConfig, apply_lora, count_parameters, lora_disabled, lora_modules,
                                lora_state_dict, strip_lora)

HEADS = ("student_head", "teacher_head", "text_head")
#: Names of the two classes, by label: 1 = generated (docs/method.md#6-labels-outputs-and-metrics).
LABELS = ("real", "generated")


class Detector(nn.Module):
    """Deployable detector: image encoder (LoRA merged) + head -> one logit per image."""

    def __init__(self, visual: nn.Module, head: nn.Linear):
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(images)).squeeze(-1)


class DGSNetModel(nn.Module):
    def __init__(self, spec: BackboneSpec, lora: LoRAConfig | None = None, clip: nn.Module | None = None):
        super().__init__()
        self.spec = spec
        self.lora_config = lora or LoRAConfig()
        self.clip = clip if clip is not None else create_clip(spec)
        self.clip.requires_grad_(False)
        self.activation = activation_of(self.clip)  # recorded: what the blocks really run
        # Identities recorded before LoRA changes anything: checkpoints are checked against them.
        self.visual_fingerprint = fingerprint(self.clip.visual)
        self.text_fingerprint = fingerprint(nn.ModuleList(
            m for n, m in self.clip.named_children() if n != "visual"))
        apply_lora(self.clip.visual, self.lora_config)
        dim = embed_dim(self.clip)
        self.dim = dim
        self.student_head = nn.Linear(dim, 1)
        self.teacher_head = nn.Linear(dim, 1)
        self.text_head = nn.Linear(dim, 1)
        self._tokenizer = None

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    # -- branches ---------------------------------------------------------------------------
    def student_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        with lora_disabled(self.visual):
            return self.visual(images)

    @torch.no_grad()
    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        if self._tokenizer is None:
            self._tokenizer = tokenizer(self.spec)
        device = next(self.clip.parameters()).device
        return self.clip.encode_text(self._tokenizer(list(captions)).to(device))

    # -- parameters -------------------------------------------------------------------------
    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for m in lora_modules(self.visual) for _, a, b in m.lora_pairs() for p in (a, b)]

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Stage 1 trains the teacher head; stage 2 trains LoRA + student and text heads."""
        if stage == 1:
            return list(self.teacher_head.parameters())
        if stage == 2:
            return [*self.lora_parameters(), *self.student_head.parameters(), *self.text_head.parameters()]
        raise ValueError(f"stage must be 1 or 2, got {stage}")

    def set_stage(self, stage: int) -> None:
        self.requires_grad_(False)
        for p in self.stage_parameters(stage):
            p.requires_grad_(True)

    def parameter_report(self) -> dict[str, int]:
        counts = count_parameters(self)
        counts["lora"] = sum(p.numel() for p in self.lora_parameters())
        counts["heads"] = sum(p.numel() for h in HEADS for p in getattr(self, h).parameters())
        return counts

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: LoRA tensors and the three heads (the backbone is rebuilt)."""
        state = {f"visual.{k}": v for k, v in lora_state_dict(self.visual).items()}
        for h in HEADS:
            state.update({f"{h}.{k}": v for k, v in getattr(self, h).state_dict().items()})
        return state

    def load_trained_state_dict(self, state: dict[str, torch.Tensor], only: tuple[str, ...] | None = None,
                                source: str = "checkpoint") -> None:
        """Strict load of `trained_state_dict()` keys (all, or those under the prefixes in `only`)."""
        expected = {k: v for k, v in self.trained_state_dict().items()
                    if only is None or k.startswith(only)}
        got = {k: v for k, v in state.items() if only is None or k.startswith(only)}
        missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = [f"{k} {tuple(got[k].shape)} != {tuple(expected[k].shape)}"
                 for k in set(expected) & set(got) if got[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"{source} does not match this model (backbone {self.spec.model}, LoRA "
                f"{self.lora_config.to_dict()}): missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
                f"wrong shape {wrong[:5]}. Was it trained with another backbone or LoRA config?")
        with torch.no_grad():
            params = dict(self.named_parameters())
            params.update(dict(self.named_buffers()))
            for k, v in got.items():
                params[self._full_name(k)].copy_(v)

    def _full_name(self, key: str) -> str:
        return f"clip.{key}" if key.startswith("visual.") else key

    def detector(self) -> Detector:
        """A standalone copy for inference and export: LoRA merged, plain attention modules."""
        visual = strip_lora(copy.deepcopy(self.visual)).eval()
        return Detector(visual, copy.deepcopy(self.student_head)).eval()

    def teacher_detector(self) -> Detector:
        """The stage-1 probe (frozen encoder + teacher head) as a detector."""
        visual = copy.deepcopy(self.visual)
        for m in lora_modules(visual):
            m.enabled = False
        return Detector(strip_lora_disabled(visual), copy.deepcopy(self.teacher_head)).eval()


def strip_lora_disabled(visual: nn.Module) -> nn.Module:
    """Puts back the plain attention modules without merging (LoRA dropped)."""
    for block in visual.transformer.resblocks:
        if hasattr(block.attn, "base"):
            block.attn = block.attn.base
    return visual
