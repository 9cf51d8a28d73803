"""DGS-Net gradient surgery (docs/method.md sections 2 and 3).

    reference.py   the math: the whole specification in plain PyTorch (start here)
    objective.py   dgs_objective: checks its inputs, runs the objective on a backend
    layer.py       per-layer (parameter-space) surgery: project_params_, LayerSurgery
    backends/      the kernel backends (cpp and cuda from csrc/, triton) and their dispatch
"""
from dgsnet.surgery.backends import BACKENDS, available_backends, resolve_backend
from dgsnet.surgery.layer import LayerSurgery, project_params_
from dgsnet.surgery.objective import MODES, VARIANTS, DGSLoss, dgs_objective

__all__ = ["BACKENDS", "MODES", "VARIANTS", "DGSLoss", "LayerSurgery", "available_backends",
           "dgs_objective", "project_params_", "resolve_backend"]
