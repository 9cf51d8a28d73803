"""dgsnet: DGS-Net (distillation-guided gradient surgery) detectors of AI-generated images."""
from dgsnet.version import __version__

__all__ = ["__version__"]
