"""The one `--device` resolver of every command (torch is imported on first use)."""
from __future__ import annotations


def resolve_device(name: str = "auto"):
    """'auto' -> cuda when a GPU is visible, else cpu; 'cuda[:N]' without a GPU is a clear error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device
