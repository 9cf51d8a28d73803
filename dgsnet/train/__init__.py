"""Training: configuration, the two DGS-Net stages, checkpoints and resume."""
import importlib

from dgsnet.train.config import TrainConfig

# The trainer (torch) loads on first use, so dgsnet.train.config, which `dgsnet train --help`
# reads, imports where only the core dependencies are installed.
_TRAINER = ("NonFiniteLossError", "StageTrainer", "load_teacher_head", "train_dgs", "train_teacher")

__all__ = ["NonFiniteLossError", "StageTrainer", "TrainConfig", "load_teacher_head", "train_dgs",
           "train_teacher"]


def __getattr__(name: str):
    if name in _TRAINER:
        return getattr(importlib.import_module("dgsnet.train.trainer"), name)
    raise AttributeError(f"module 'dgsnet.train' has no attribute {name!r}")
