"""The caller-side preprocessing an exported detector's metadata asks for, in numpy."""
from __future__ import annotations

import numpy as np

from .metadata import ModelInfo


class Preprocessor:
    """RGB uint8 image -> one graph input sample.

    patch_selection: dgsnet.preprocess.select_patches (DESIGN section 1), raster
    order (no shuffle: deterministic, as at evaluation). normalize: (x/255 - mean)/std
    to CHW float32; without it the 224x224x3 uint8 tile goes in as is (the graph
    normalises). The same steps as dgsnet.preprocess.Preprocess, so torch and
    onnxruntime see identical inputs.
    """

    def __init__(self, mean, std, *, patch_selection: bool = True, normalize: bool = True, size: int = 224):
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.patch_selection = patch_selection
        self.normalize = normalize
        self.size = size

    @classmethod
    def from_info(cls, info: ModelInfo) -> "Preprocessor":
        return cls(info.mean, info.std, patch_selection="dgs-patch-selection" in info.caller_steps,
                   normalize="normalize" in info.caller_steps, size=info.input_size)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from dgsnet import preprocess

        if self.patch_selection:
            tile = preprocess.select_patches(rgb)
        else:
            tile = preprocess.as_rgb_array(rgb)
            if tile.shape[:2] != (self.size, self.size):
                raise ValueError(f"image is {tile.shape[1]}x{tile.shape[0]}; this detector takes "
                                 f"{self.size}x{self.size} inputs without patch selection")
        if self.normalize:
            return preprocess.normalize(tile, self.mean, self.std)
        return np.ascontiguousarray(tile, dtype=np.uint8)
