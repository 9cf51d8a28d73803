"""The caller-side preprocessing an exported detector's metadata asks for: dgsnet's own Preprocess
(dgsnet.image.preprocess), configured from the file, so torch and onnxruntime see identical inputs."""
from __future__ import annotations

from dgsnet.image.preprocess import Preprocess

from .metadata import NORMALIZE, PATCH_SELECTION, ModelInfo


def preprocess_for(info: ModelInfo, **options) -> Preprocess:
    """The Preprocess a detector's metadata asks for: patch selection and normalisation by the caller
    when its caller steps name them (else the graph normalises uint8 tiles itself), its mean/std and
    input size. `options`: patch_order, patch_seed, decode (the caller's choice, not the model's)."""
    return Preprocess(norm=info.normalization, mean=info.mean, std=info.std,
                      patch_selection=PATCH_SELECTION in info.caller_steps,
                      normalization=NORMALIZE in info.caller_steps, size=info.input_size, **options)
