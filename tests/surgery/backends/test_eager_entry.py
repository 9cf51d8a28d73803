"""The eager entry of the C++ dgs_forward (dgsnet._C.dgs_forward_eager) against the op itself.

A plain eager call of dgs_objective takes the entry (fewer microseconds per call); it
must give exactly what torch.ops.dgsnet.dgs_forward gives, forward and backward, for
every dtype mix fused.py casts, and step aside for torch.compile (test_fused.py's
fullgraph test) and for __torch_function__ modes.
"""
import pytest
import torch

from dgsnet.surgery import dgs_objective
from dgsnet.surgery.backends import extension, registry
from tests.surgery.fused_cases import Case

pytestmark = pytest.mark.skipif(
    not (extension.available() and hasattr(extension._C, "dgs_forward_eager")),
    reason=f"dgsnet._C not built (or built before its eager entry): {extension.LOAD_ERROR}")


@pytest.fixture
def counted(monkeypatch):
    """The cpp entry of dgs_objective with call counters on its forward and eager callables;
    yields (counts, set_eager) where set_eager(False) registers it without the eager entry."""
    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))
    real = registry.lookup("cpp", "dgs_objective")
    counts = {"forward": 0, "eager": 0}

    def forward(*args):
        counts["forward"] += 1
        return real.forward(*args)

    def eager(*args):
        counts["eager"] += 1
        return real.eager(*args)

    def set_eager(on):
        registry.register("cpp", "dgs_objective", forward, real.backward, eager if on else None)

    set_eager(True)
    yield counts, set_eager
    registry.register("cpp", "dgs_objective", *real)


def _call(case, feat_dtype, label_dtype, head_dtype, frozen_teacher, mode, variant):
    f = case.f.to(feat_dtype).requires_grad_(True)
    heads = case.make_heads(head_dtype)
    if frozen_teacher:
        heads[1].requires_grad_(False)
    out = dgs_objective(f, case.f_t.to(feat_dtype), case.t.to(feat_dtype),
                        case.labels.to(label_dtype), *heads, mode=mode, variant=variant,
                        backend="cpp")
    a, b, c, d = case.upstream
    (a * out.total + b * out.img + c * out.text + d * out.align).backward()
    values = [getattr(out, n).detach() for n in ("total", "img", "text", "align", "teacher", "harmful")]
    grads = [f.grad] + [p.grad for h in heads for p in h.parameters()]
    return values, grads


@pytest.mark.parametrize("feat_dtype,label_dtype,head_dtype,bias,frozen_teacher,mode,variant", [
    (torch.float32, torch.float32, torch.float32, True, True, "feature", "published"),
    (torch.float64, torch.float64, torch.float64, False, False, "both", "published"),
    (torch.bfloat16, torch.int64, torch.float32, True, True, "feature", "published"),  # promoted
    (torch.float64, torch.float32, torch.float32, True, True, "feature", "paper"),  # heads to f64
    (torch.float32, torch.bool, torch.float64, False, True, "none", "published"),  # heads to f32
    (torch.float16, torch.float32, torch.float32, True, False, "layer", "paper"),
])
def test_eager_entry_equals_the_op(counted, feat_dtype, label_dtype, head_dtype, bias,
                                   frozen_teacher, mode, variant):
    counts, set_eager = counted
    case = Case(5, 37, seed=41, bias=bias)
    results = {}
    for on in (True, False):
        set_eager(on)
        before = dict(counts)
        results[on] = _call(case, feat_dtype, label_dtype, head_dtype, frozen_teacher, mode,
                            variant)
        took = "eager" if on else "forward"
        assert counts[took] == before[took] + 1, f"the call did not take the {took} path"
    (v_eager, g_eager), (v_op, g_op) = results[True], results[False]
    for x, y in zip(v_eager + g_eager, v_op + g_op):
        if y is None:
            assert x is None
        else:
            assert x.dtype == y.dtype and torch.equal(x, y)
    # the student's weight gets a gradient of its own dtype; the teacher head none on either path
    assert g_eager[1] is not None and g_eager[1].dtype == head_dtype
    n_head = 2 if bias else 1
    assert all(g is None for g in g_eager[1 + n_head:1 + 2 * n_head])


def test_torch_function_mode_sees_the_op(counted):
    """Under a __torch_function__ mode the call goes through torch.ops, which the mode sees."""
    counts, _ = counted
    seen = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    case = Case(3, 11, torch.float32, seed=5)
    with Record():
        dgs_objective(case.f, case.f_t, case.t, case.labels, *case.make_heads(torch.float32),
                      backend="cpp")
    assert counts == {"forward": 1, "eager": 0}
    assert any("dgs_forward" in str(func) for func in seen)


def test_registered_entry_has_the_eager_callable():
    """What extension.py registers: the real entry, not only the torch.ops fallback."""
    op = registry.lookup("cpp", "dgs_objective")
    assert op.eager is extension._C.dgs_forward_eager
    assert op.forward is torch.ops.dgsnet.dgs_forward
