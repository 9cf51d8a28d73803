"""Training: configuration, the two DGS-Net stages, checkpoints and resume."""
from dgsnet.train.config import TrainConfig
from dgsnet.train.trainer import NonFiniteLossError, StageTrainer, load_teacher_head, train_dgs, train_teacher

__all__ = ["NonFiniteLossError", "StageTrainer", "TrainConfig", "load_teacher_head", "train_dgs",
           "train_teacher"]
