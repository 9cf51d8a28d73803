"""Offline, deterministic SYNTHETIC benchmark for `dgsnet demo`.

Real photos from scikit-image, fakes from hand-written generator-like
upsampling pipelines: it shows the pipeline working, it is not a benchmark.
"""
from dgsnet.demo.builder import DemoInfo, NOTE, build_demo_dataset
from dgsnet.demo.families import FAMILIES, generate
from dgsnet.demo.fingerprints import FAMILY_STATISTIC, auc

__all__ = ["DemoInfo", "NOTE", "build_demo_dataset", "FAMILIES", "generate", "FAMILY_STATISTIC", "auc"]
