"""Which kernel backend implements which op: register by name, look up by name.

A backend registers, for each op, the callable that runs it (`forward`) and,
for an op with a separate backward kernel, that one too (`backward`); a
compiled backend may add `eager`, a cheaper entry of the same forward for
eager callers (dgsnet._C's dgs_forward_eager; see backends/fused.py). This
module imports no backend: each registers itself when it is imported
(backends/extension.py: cpp and cuda; backends/triton/: triton), and
dgsnet.surgery.backends decides when to import them. "reference" is not
registered: it is the specification (dgsnet/surgery/reference.py), called
directly.

Ops (schemas in csrc/ops.cpp):
  "dgs_objective"    forward: dgs_forward, backward: dgs_backward (the fused objective)
  "project_params_"  forward: the in-place multi-tensor projection (no backward)
"""
from __future__ import annotations

from typing import Callable, NamedTuple


class Op(NamedTuple):
    """One backend's kernels of one op."""

    forward: Callable
    backward: Callable | None = None
    eager: Callable | None = None


_TABLE: dict[tuple[str, str], Op] = {}

# Bumped by every register(): callers that cache a lookup (dgs_objective's per-call
# dispatch) key the cache on it, so a replaced kernel is never called from a stale entry.
generation = 0


def register(backend: str, op: str, forward: Callable, backward: Callable | None = None,
             eager: Callable | None = None) -> None:
    """Makes `forward` (and `backward`, `eager`) the kernels of `op` on `backend`; a second call
    replaces them."""
    global generation
    _TABLE[(backend, op)] = Op(forward, backward, eager)
    generation += 1


def lookup(backend: str, op: str) -> Op:
    """The kernels registered for `op` on `backend`."""
    try:
        return _TABLE[(backend, op)]
    except KeyError:
        have = sorted(o for b, o in _TABLE if b == backend)
        raise LookupError(f"no kernels of op {op!r} are registered for backend {backend!r} "
                          f"(it has: {', '.join(have) or 'nothing'})") from None


def registered() -> list[tuple[str, str]]:
    """Every (backend, op) pair registered so far."""
    return sorted(_TABLE)
