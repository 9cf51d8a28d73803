"""DGS-Net gradient surgery: the objective, its reference math, the fused kernels' dispatch."""
from dgsnet.surgery.objective import MODES, VARIANTS, DGSLoss, dgs_objective
from dgsnet.surgery.ops import (BACKENDS, available_backends, project_params_, project_rows,
                                resolve_backend)

__all__ = ["BACKENDS", "MODES", "VARIANTS", "DGSLoss", "available_backends", "dgs_objective",
           "project_params_", "project_rows", "resolve_backend"]
