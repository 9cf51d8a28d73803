"""Scoring images with a checkpoint through torch: what `dgsnet predict` runs.

It is the reference of the exported runtime (dgsnet_export): the same
decoding (dgsnet.image.decode), the same preprocessing (dgsnet.image.preprocess:
patch selection in raster order, or the published shuffled layout, then normalisation), the same batching
loop (dgsnet.scoring) and JSON records; only the engine differs (torch instead of
onnxruntime). So `dgsnet predict --ckpt RUN` and `dgsnet-predict
detector.onnx` on the same files print the same numbers.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from dgsnet.device import resolve_device

HEAD_CHOICES = ("auto", "student", "teacher")


def choose_head(meta: dict, head: str = "auto") -> str:
    """'student' for a finished stage-2 run, 'teacher' (the stage-1 probe) for a stage-1 run."""
    if head not in HEAD_CHOICES:
        raise ValueError(f"head={head!r}: use one of {', '.join(HEAD_CHOICES)}")
    if head != "auto":
        if head == "student" and meta.get("stage") == 1:
            raise ValueError("this checkpoint is a stage-1 run (teacher probe only): its student head is "
                             "untrained; use --head teacher, or a run of `dgsnet train`")
        return head
    return "teacher" if meta.get("stage") == 1 else "student"


def load_detector(run_dir: str, head: str = "auto", device="cpu", pretrained: str | None = None):
    """(Detector in eval mode with LoRA merged, checkpoint metadata, head used) of a run directory.
    `pretrained`: the user's confirmation of a backbone weights file outside the run directory."""
    from dgsnet.models.checkpoint import load_model

    model, meta = load_model(run_dir, trusted_weights=pretrained)
    head = choose_head(meta, head)
    detector = model.detector() if head == "student" else model.teacher_detector()
    return detector.to(device).eval(), meta, head


class TorchPredictor:
    """A checkpoint's detector with its preprocessing, scoring numpy batches through torch."""

    def __init__(self, run_dir: str, head: str = "auto", device: str = "auto", *, patch_order: str = "raster",
                 patch_seed: int = 100, decode: str = "dgsnet", pretrained: str | None = None):
        from dgsnet.image.preprocess import Preprocess

        self.device = resolve_device(device)
        self.detector, self.meta, self.head = load_detector(run_dir, head, self.device, pretrained)
        self.preprocess = Preprocess(norm=self.meta.get("norm", "imagenet"), patch_order=patch_order,
                                     patch_seed=patch_seed, decode=decode)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, 224, 224) float32 normalised inputs -> (B,) float64 logits."""
        import torch

        with torch.inference_mode():
            out = self.detector(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
        return out.reshape(-1).double().cpu().numpy()

    def predict_paths(self, inputs: Iterable, *, batch_size: int = 16, threshold: float = 0.5,
                      workers: int | None = None, progress=None, pixel_budget=None) -> Iterator[dict]:
        """The records `dgsnet.scoring.iter_predictions` gives, for files and folders."""
        from dgsnet.models import LABELS
        from dgsnet.scoring import collect_inputs, iter_predictions

        found = collect_inputs(inputs)
        return iter_predictions(found.paths, self.logits, self.preprocess, labels=LABELS, threshold=threshold,
                                batch_size=batch_size, workers=workers, progress=progress,
                                pixel_budget=pixel_budget)
