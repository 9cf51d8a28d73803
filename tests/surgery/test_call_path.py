"""The per-call fast path of dgs_objective (objective.py): its cheap input test agrees with
the full checks, the heads' parameters it reads are the ones attribute access gives, and
the cached backend choice answers as resolve_backend does; plus the weight signs that the
kernels' register-level relu/min (csrc/cpu/simd.h) must get right."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from dgsnet.surgery import dgs_objective, resolve_backend
from dgsnet.surgery.backends import extension
from dgsnet.surgery.objective import _dispatch, _head_params, _inputs_ok, _validate
from tests.surgery.fused_cases import TOL, Case, assert_same_results, run

needs_ext = pytest.mark.skipif(not extension.available(),
                               reason=f"dgsnet._C not built: {extension.LOAD_ERROR}")


def _variants():
    """(name, student, teacher, text, labels): valid inputs and one fault at a time."""
    f = torch.randn(5, 7)
    y = torch.tensor([0.0, 1, 1, 0, 1])
    ok = (f, f.clone(), f.clone(), y)
    yield "ok", ok
    yield "ok float64", tuple(x.double() for x in ok)
    yield "ok int labels", (*ok[:3], y.long())
    yield "ok bool labels", (*ok[:3], y.bool())
    yield "ok mixed float dtypes", (f, f.double(), f.half(), y)
    yield "ok non-contiguous", (f.t().contiguous().t(), f, f, y)
    yield "1-D student", (f[0], f[0], f[0], y[:1])
    yield "3-D student", (f[None], f[None], f[None], y)
    yield "empty batch", (f[:0], f[:0], f[:0], y[:0])
    yield "teacher shape", (f, f[:4], f, y)
    yield "text shape", (f, f, f[:, :6], y)
    yield "labels shape", (*ok[:3], y[:, None])
    yield "labels length", (*ok[:3], y[:4])
    yield "complex labels", (*ok[:3], y.to(torch.complex64))
    yield "integer student", (f.long(), f, f, y)
    yield "integer teacher", (f, f.long(), f, y)
    yield "integer text", (f, f, f.long(), y)
    meta = torch.empty(5, 7, device="meta")
    yield "teacher on meta", (f, meta, f, y)
    yield "text on meta", (f, f, meta, y)
    yield "labels on meta", (*ok[:3], torch.empty(5, device="meta"))
    yield "student on meta", (meta, f, f, y)
    yield "all on meta", (meta, meta, meta, torch.empty(5, device="meta"))


@pytest.mark.parametrize("name,inputs", list(_variants()), ids=[n for n, _ in _variants()])
def test_cheap_check_passes_exactly_when_the_full_checks_pass(name, inputs):
    try:
        _validate(*inputs, check_labels=False)
        valid = True
    except (ValueError, TypeError):
        valid = False
    assert _inputs_ok(*inputs) == valid
    assert valid == name.startswith(("ok", "all on"))


def test_faulty_inputs_still_get_the_full_message_without_label_checks():
    f = torch.randn(4, 6)
    with pytest.raises(ValueError, match="teacher_feats has shape"):
        dgs_objective(f, f[:3], f, torch.zeros(4), nn.Linear(6, 1), nn.Linear(6, 1),
                      nn.Linear(6, 1), check_labels=False)
    with pytest.raises(ValueError, match="text_feats is on meta"):
        dgs_objective(f, f, torch.empty(4, 6, device="meta"), torch.zeros(4), nn.Linear(6, 1),
                      nn.Linear(6, 1), nn.Linear(6, 1), check_labels=False)


class _MyLinear(nn.Linear):
    """A subclass takes the attribute path (it may override what attribute access gives)."""


class _Probe(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self):
        return _head_params(self.head, "h", 9)


class _Scale(nn.Module):
    def forward(self, w):
        return 3 * w


@pytest.mark.parametrize("kind", ["plain", "no bias", "subclass", "parametrized", "functional"])
def test_head_parameters_are_what_attribute_access_gives(kind):
    head = (_MyLinear if kind == "subclass" else nn.Linear)(9, 1, bias=kind != "no bias")
    if kind == "parametrized":
        parametrize.register_parametrization(head, "weight", _Scale())
    if kind == "functional":  # torch.func swaps the parameters for the call
        new = {"head.weight": torch.randn(1, 9), "head.bias": torch.randn(1)}
        w, b = torch.func.functional_call(_Probe(head), new, ())
        assert w is new["head.weight"] and b is new["head.bias"]
        return
    w, b = _head_params(head, "h", 9)
    torch.testing.assert_close(w, head.weight, rtol=0, atol=0)
    assert (b is None) == (head.bias is None)
    if b is not None:
        assert b is head.bias


@needs_ext
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_parametrized_head_is_used_through_its_parametrization(backend):
    """A parametrized head must enter the objective with its computed weight."""
    case = Case(6, 11, seed=21)
    plain = case.make_heads(torch.float64)
    tweaked = case.make_heads(torch.float64)
    parametrize.register_parametrization(tweaked[0], "weight", _Scale())
    with torch.no_grad():
        plain[0].weight.mul_(3)
    a = dgs_objective(case.f, case.f_t, case.t, case.labels, *plain, backend=backend)
    b = dgs_objective(case.f, case.f_t, case.t, case.labels, *tweaked, backend=backend)
    torch.testing.assert_close(a.total, b.total, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", ["auto", "reference", "cpp"])
def test_cached_dispatch_answers_as_resolve_backend(backend):
    if backend == "cpp" and not extension.available():
        pytest.skip("dgsnet._C not built")
    for device in (torch.device("cpu"), torch.device("cpu")):  # second call: from the cache
        resolved, op = _dispatch(backend, device)
        assert resolved == resolve_backend(backend, device)
        assert (op is None) == (resolved == "reference")


def test_cached_dispatch_sees_kernels_registered_later(monkeypatch):
    """A backend that registers (or replaces) its kernels after a call is used from then on."""
    from dgsnet.surgery.backends import registry

    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))
    if not extension.available():
        pytest.skip("dgsnet._C not built")
    _, before = _dispatch("cpp", torch.device("cpu"))

    def replaced(*args):
        return before.forward(*args)

    registry.register("cpp", "dgs_objective", replaced)
    try:
        assert _dispatch("cpp", torch.device("cpu"))[1].forward is replaced
    finally:
        registry.register("cpp", "dgs_objective", *before)
    assert _dispatch("cpp", torch.device("cpu"))[1] == before


def test_refused_backends_are_refused_every_time():
    for _ in range(2):  # a refusal is not cached as an answer
        with pytest.raises((ValueError, RuntimeError), match="cuda"):
            _dispatch("cuda", torch.device("cpu"))
        with pytest.raises(ValueError, match="backend="):
            _dispatch("fast", torch.device("cpu"))


def _signed_case(batch, dim, dtype, seed):
    """Head weights with exact zeros, negative zeros and both signs, at a width that leaves
    a tail after the vector lanes, so every sign branch of relu/min is taken."""
    case = Case(batch, dim, dtype, seed=seed)
    pattern = torch.tensor([0.0, -0.0, 0.3, -0.2, 1e-30, -1e-30, 0.5], dtype=torch.float64)
    reps = pattern.repeat(dim // len(pattern) + 1)[:dim]
    for k, (w, b) in enumerate(case.heads):
        w = w.clone()
        w[0, : dim // 2] = reps[: dim // 2] * (1 if k % 2 else -1)
        case.heads[k] = (w, b)
    return case


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,dim", [(1, 1), (5, 13), (6, 31), (9, 67)])
@pytest.mark.parametrize("mode,variant", list(itertools.product(["feature", "layer"],
                                                               ["published", "paper"])))
def test_cpp_weight_signs_and_tails(batch, dim, dtype, mode, variant):
    case = _signed_case(batch, dim, dtype, seed=batch * 31 + dim)
    assert_same_results(run(case, "cpp", mode, variant), run(case, "reference", mode, variant),
                        TOL[dtype])


@needs_ext
def test_cpp_all_zero_text_head_gives_no_harmful_direction():
    case = Case(7, 19, seed=22)
    w, b = case.heads[2]
    case.heads[2] = (torch.zeros_like(w), b)
    got = run(case, "cpp")
    assert_same_results(got, run(case, "reference"), TOL[torch.float64])
    assert got[0]["harmful"].abs().max().item() == 0.0
