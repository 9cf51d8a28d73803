"""`dgsnet check`: one DGS-Net step end to end on a tiny open_clip model.

Random-initialised weights and random images: it proves the install (torch,
open_clip, the compiled extension) and the surgery, not detection quality.
"""
from __future__ import annotations

import copy
import os
import time

import torch
from torch import nn

from dgsnet.surgery.backends import extension as _ext
from dgsnet.surgery import dgs_objective, resolve_backend

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "model_configs")


def run_check(model: str = "dgs-tiny", batch: int = 8, backend: str = "auto", seed: int = 0) -> dict:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(seed)
    clip = open_clip.create_model(model)
    tokenizer = open_clip.get_tokenizer(model)
    teacher_visual = copy.deepcopy(clip.visual).requires_grad_(False)
    dim = clip.text_projection.shape[1]
    student_head, teacher_head, text_head = (nn.Linear(dim, 1) for _ in range(3))

    images = torch.randn(batch, 3, 224, 224)
    labels = torch.arange(batch) % 2
    captions = [f"a photo number {i}" for i in range(batch)]
    with torch.no_grad():
        teacher_feats = teacher_visual(images)
        text_feats = clip.encode_text(tokenizer(captions))

    start = time.perf_counter()
    student_feats = clip.visual(images)
    student_feats.retain_grad()
    out = dgs_objective(student_feats, teacher_feats, text_feats, labels, student_head,
                        teacher_head, text_head, backend=backend)
    out.total.backward()
    seconds = time.perf_counter() - start

    h = out.harmful
    residual = ((student_feats.grad * h).sum(1).abs() / (student_feats.grad.norm(dim=1) + 1e-30)).max()
    grads = [p.grad for p in clip.visual.parameters() if p.grad is not None]
    return {
        "model": model,
        "batch": batch,
        "backend": resolve_backend(backend, images.device),
        "extension": "cuda" if _ext.cuda_compiled() else ("cpp" if _ext.available() else "not built"),
        "losses": out.terms(),
        "max |<G_tilde, h>| / ||G_tilde||": residual.item(),
        "encoder tensors with gradient": len(grads),
        "all gradients finite": all(bool(torch.isfinite(g).all()) for g in grads),
        "step seconds (CPU, forward + backward)": round(seconds, 4),
    }
