"""Datasets, augmentation and evaluation perturbations for dgsnet.

Layouts: <root>/{0_real,1_fake}/..., <root>/<class>/{0_real,1_fake}/...
(ProGAN style) and <root>/<subset>/... (one test generator per subset).
Patch selection and normalisation are torch-free and live in
dgsnet.image.preprocess (shared with the ONNX runtime); decoding in dgsnet.image.decode.
"""
from dgsnet.image.decode import ImageLoadError, load_rgb
from dgsnet.image.preprocess import Preprocess, normalize, select_patches, select_patches_loop

from .augment import Augment, item_rng
from .build import build_eval_subsets, build_train_dataset
from .captions import CaptionsError, template_caption
from .dataset import FolderDataset, collate
from .layouts import LayoutError, Sample, find_samples, find_subsets
from .perturb import Perturbation, parse_perturbations

__all__ = ["Augment", "CaptionsError", "FolderDataset", "ImageLoadError", "LayoutError", "Perturbation",
           "Preprocess", "Sample", "build_eval_subsets", "build_train_dataset", "collate", "find_samples", "find_subsets",
           "item_rng", "load_rgb", "normalize", "parse_perturbations", "select_patches", "select_patches_loop",
           "template_caption"]
