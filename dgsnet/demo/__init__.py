"""Offline, deterministic SYNTHETIC benchmark for `dgsnet demo`.

Real photos from scikit-image, fakes from hand-written generator-like
upsampling pipelines: it shows the pipeline working, it is not a benchmark.
"""
import importlib

# Loaded on first use: `dgsnet --help` imports dgsnet.demo.run, and the builders need scipy
# and scikit-image, which only the [dev] extra installs.
_WHERE = {"DemoInfo": "builder", "NOTE": "builder", "build_demo_dataset": "builder", "FAMILIES": "families",
          "generate": "families", "FAMILY_STATISTIC": "fingerprints", "auc": "fingerprints"}

__all__ = ["DemoInfo", "NOTE", "build_demo_dataset", "FAMILIES", "generate", "FAMILY_STATISTIC", "auc"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"dgsnet.demo.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'dgsnet.demo' has no attribute {name!r}")
