"""The width of numpy's OpenBLAS thread pool in this process (torch-free: the server uses it too).

Patch selection multiplies small matrices through numpy's BLAS. OpenBLAS keeps a pool as wide as
the machine in every process (DataLoader workers, the server's scoring thread); beside torch's or
onnxruntime's own threads that oversubscribes the cores and idle BLAS threads spin. The width is
only settable through the loaded library itself: the environment variable is read once, at import.
"""
from __future__ import annotations

_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
            "openblas_set_num_threads64_", "scipy_openblas_set_num_threads_")


def set_blas_threads(n: int) -> int | None:
    """Sets the OpenBLAS pool of this process to `n` threads; the previous width, or None where
    numpy's BLAS is not an OpenBLAS loaded in this process (nothing to do)."""
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            libs = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line})
    except OSError:  # not Linux: leave the pool as it is
        return None
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            getter = getattr(lib, name.replace("set_", "get_"), None)
            if setter is not None and getter is not None:
                before = getter()
                setter(int(n))
                return before
    return None
