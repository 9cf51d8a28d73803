"""DGS-Net gradient surgery: the objective, its reference math, and backend dispatch."""
from dgsnet.surgery.objective import MODES, VARIANTS, DGSLoss, dgs_objective
from dgsnet.surgery.ops import BACKENDS, project_rows, resolve_backend

__all__ = ["BACKENDS", "MODES", "VARIANTS", "DGSLoss", "dgs_objective", "project_rows",
           "resolve_backend"]
