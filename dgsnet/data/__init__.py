"""Datasets, augmentation and evaluation perturbations for dgsnet.

Layouts: <root>/{0_real,1_fake}/..., <root>/<class>/{0_real,1_fake}/...
(ProGAN style) and <root>/<subset>/... (one test generator per subset).
Patch selection and normalisation are torch-free and live in
dgsnet.image.preprocess (shared with the ONNX runtime); decoding in dgsnet.image.decode.
"""
from dgsnet.image.decode import ImageLoadError, load_rgb
from dgsnet.image.preprocess import Preprocess, normalize, select_patches, select_patches_loop

from .augment import Augment, item_rng
from .captions import CaptionsError, template_caption
from .layouts import LayoutError, Sample, find_samples, find_subsets, list_eval_subsets
from .perturb import Perturbation, parse_perturbations

# The torch-backed parts load on first use, so the torch-free ONNX eval can list and perturb images.
_LAZY = {"build_eval_subsets": "build", "build_train_dataset": "build", "FolderDataset": "dataset",
         "collate": "dataset"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


__all__ = ["Augment", "CaptionsError", "FolderDataset", "ImageLoadError", "LayoutError", "Perturbation",
           "Preprocess", "Sample", "build_eval_subsets", "build_train_dataset", "collate", "find_samples", "find_subsets",
           "item_rng", "list_eval_subsets", "load_rgb", "normalize", "parse_perturbations", "select_patches", "select_patches_loop",
           "template_caption"]
