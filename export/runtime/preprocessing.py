"""The caller-side preprocessing an exported detector's metadata asks for, in numpy."""
from __future__ import annotations

import numpy as np

from .metadata import ModelInfo


class Preprocessor:
    """RGB uint8 image -> one graph input sample.

    patch_selection: dgsnet.image.preprocess.select_patches, in raster order, or with
    patch_order="shuffle" in the published evaluation's shuffled layout, seeded
    per file (dgsnet.image.preprocess.layout_rng). normalize: (x/255 - mean)/std
    to CHW float32; without it the 224x224x3 uint8 tile goes in as is (the graph
    normalises). The same steps as dgsnet.image.preprocess.Preprocess, so torch and
    onnxruntime see identical inputs.
    """

    def __init__(self, mean, std, *, patch_selection: bool = True, normalize: bool = True, size: int = 224,
                 patch_order: str = "raster", patch_seed: int = 100, decode: str = "dgsnet"):
        from dgsnet.image.preprocess import check_patch_order

        self.patch_order, self.patch_seed, self.decode = check_patch_order(patch_order), patch_seed, decode
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.patch_selection = patch_selection
        self.normalize = normalize
        self.size = size

    @classmethod
    def from_info(cls, info: ModelInfo, **options) -> "Preprocessor":
        """`options`: patch_order, patch_seed, decode (the caller's choice, not the model's)."""
        return cls(info.mean, info.std, patch_selection="dgs-patch-selection" in info.caller_steps,
                   normalize="normalize" in info.caller_steps, size=info.input_size, **options)

    def __call__(self, rgb: np.ndarray, path=None) -> np.ndarray:
        from dgsnet.image import preprocess

        if self.patch_selection:
            rng = None
            if self.patch_order == "shuffle":
                if path is None:
                    raise ValueError("a shuffled patch layout is seeded by the file name: pass path=")
                rng = preprocess.layout_rng(self.patch_order, path, self.patch_seed)
            tile = preprocess.select_patches(rgb, rng)
        else:
            tile = preprocess.as_rgb_array(rgb)
            if tile.shape[:2] != (self.size, self.size):
                raise ValueError(f"image is {tile.shape[1]}x{tile.shape[0]}; this detector takes "
                                 f"{self.size}x{self.size} inputs without patch selection")
        if self.normalize:
            return preprocess.normalize(tile, self.mean, self.std)
        return np.ascontiguousarray(tile, dtype=np.uint8)
