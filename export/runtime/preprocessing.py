"""The caller-side preprocessing an exported detector's metadata asks for: dgsnet's own Preprocess
(dgsnet.image.preprocess), configured from the file, so torch and onnxruntime see identical inputs."""
from __future__ import annotations

import numpy as np

from dgsnet.image.preprocess import Preprocess, as_rgb_array

from .metadata import NORMALIZE, PATCH_SELECTION, ModelInfo


class RawImage:
    """The caller side of an end-to-end detector (patch selection and normalisation in the graph): the
    decoded image as it is. Its graph lays the tile out in raster order only."""

    def __init__(self, patch_order: str = "raster", patch_seed: int = 100, decode: str = "dgsnet"):
        if patch_order != "raster":
            raise ValueError(f"--patch-order {patch_order}: an end-to-end detector tiles its patches in raster "
                             "order (the layout is inside the graph); use --patch-order raster, or a detector "
                             "exported without --end-to-end")
        self.patch_order, self.patch_seed, self.decode = patch_order, patch_seed, decode

    def __call__(self, image, rng=None, path=None) -> np.ndarray:
        return np.ascontiguousarray(as_rgb_array(image))


def preprocess_for(info: ModelInfo, **options) -> Preprocess:
    """The Preprocess a detector's metadata asks for: patch selection and normalisation by the caller
    when its caller steps name them (else the graph normalises uint8 tiles itself), its mean/std and
    input size. `options`: patch_order, patch_seed, decode (the caller's choice, not the model's).
    An end-to-end detector gets RawImage: the graph does both steps."""
    if info.end_to_end:
        return RawImage(**options)
    return Preprocess(norm=info.normalization, mean=info.mean, std=info.std,
                      patch_selection=PATCH_SELECTION in info.caller_steps,
                      normalization=NORMALIZE in info.caller_steps, size=info.input_size, **options)
