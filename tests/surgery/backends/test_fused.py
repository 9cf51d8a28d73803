"""Fused backends of dgs_objective from dgsnet._C (cpp here; cuda on a GPU) against the reference.

Forward values (every loss term and the harmful direction) and backward
(feature gradient, student and text head gradients, nothing for the teacher)
under an arbitrary upstream gradient on each returned term.
"""
import pytest
import torch

from dgsnet.surgery import dgs_objective
from dgsnet.surgery.backends import extension, fused
from tests.surgery.fused_cases import TOL, Case, assert_rel_close, assert_same_results, run

needs_ext = pytest.mark.skipif(not extension.available(),
                               reason=f"dgsnet._C not built: {extension.LOAD_ERROR}")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and extension.cuda_compiled()),
                                reason="needs a CUDA device and dgsnet._C built with CUDA")


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [7, 512, 768, 1000])
@pytest.mark.parametrize("batch", [1, 3, 33, 257])
def test_cpp_matches_reference(batch, dim, dtype):
    case = Case(batch, dim, dtype, seed=batch * 7919 + dim)
    assert_same_results(run(case, "cpp"), run(case, "reference"), TOL[dtype])


@needs_ext
@pytest.mark.parametrize("mode", ["none", "feature", "layer", "both"])
@pytest.mark.parametrize("variant", ["published", "paper"])
def test_cpp_modes_and_variants(mode, variant):
    case = Case(19, 45, seed=3)
    assert_same_results(run(case, "cpp", mode, variant), run(case, "reference", mode, variant),
                        TOL[torch.float64])


@needs_ext
@pytest.mark.parametrize("labels", ["real", "fake", "mixed"])
def test_cpp_edge_rows(labels):
    """All-real / all-fake batches, and rows with no harmful direction (relu(g_X) = 0)."""
    batch = 12
    y = {"real": [0] * batch, "fake": [1] * batch, "mixed": [0, 1] * (batch // 2)}[labels]
    case = Case(batch, 37, labels=y, harmless_text=True, seed=5)
    got = run(case, "cpp")
    assert_same_results(got, run(case, "reference"), TOL[torch.float64])
    harmful = got[0]["harmful"]
    real = case.labels == 0
    assert harmful[real].abs().max().item() == 0.0 if real.any() else True
    if (~real).any():  # fake rows: c_X < 0, so relu(-|w_X|) has mass
        assert (harmful[~real].norm(dim=1) > 0.99).all()


@needs_ext
def test_cpp_saturated_logits_and_no_bias():
    """Large features saturate the sigmoids; heads without bias."""
    case = Case(9, 30, scale=200.0, bias=False, seed=8)
    got = run(case, "cpp")
    assert_same_results(got, run(case, "reference"), TOL[torch.float64])
    assert all(torch.isfinite(v).all() for v in got[0].values())


@needs_ext
def test_each_upstream_gradient_is_used():
    """Only img, only text, only align, only total: each must reach its gradients alone."""
    case = Case(6, 11, seed=9)
    for upstream in ([0, 1.5, 0, 0], [0, 0, -2.0, 0], [0, 0, 0, 3.0], [0.25, 0, 0, 0]):
        got = run(case, "cpp", upstream=upstream)
        assert_same_results(got, run(case, "reference", upstream=upstream), TOL[torch.float64])
    _, grads, _ = run(case, "cpp", upstream=[0, 0, 1.0, 0])  # text only: no feature gradient
    assert grads["f"].abs().max().item() == 0.0 and grads["student.weight"].abs().max().item() == 0.0


def _backward_kernel_calls(case, backend, **kw):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = run(case, backend, **kw)
    return result, sum(e.name.endswith("::dgs_backward") for e in prof.events())


@needs_ext
@pytest.mark.parametrize("mode", ["feature", "none", "both"])
def test_cpp_frozen_features_train_the_heads_without_the_row_pass(mode):
    """Features that need no gradient (heads trained on fixed features): the head gradients
    equal the reference's, and the (B, D) backward kernel is not run at all."""
    case = Case(13, 29, seed=21)
    got, calls = _backward_kernel_calls(case, "cpp", mode=mode, frozen_features=True)
    assert_same_results(got, run(case, "reference", mode, frozen_features=True), TOL[torch.float64])
    assert got[1]["f"] is None and got[1]["student.weight"].abs().max() > 0
    assert calls == 0
    _, calls = _backward_kernel_calls(case, "cpp", mode=mode)  # trainable features: the kernel runs
    assert calls == 1


@needs_ext
def test_cpp_head_gradients_are_laid_out_like_their_parameters_and_accumulate():
    """The head gradients are strided views of one kernel buffer: each must have its
    parameter's shape and row-major strides (so AccumulateGrad keeps it without a copy), none
    may overlap another, a second backward must add to them exactly as the reference's do, and
    the teacher head, which the objective never differentiates, is no edge of the graph."""
    case = Case(9, 21, seed=5)
    grads = {}
    for backend in ("cpp", "reference"):
        f = case.f.clone().requires_grad_(True)
        heads = case.make_heads(torch.float64)
        for _ in range(2):  # the second call's gradients accumulate onto the first's
            out = dgs_objective(f, case.f_t, case.t, case.labels, *heads, backend=backend)
            out.total.backward()
        params = {f"{n}.{k}": p for n, h in zip(("student", "teacher", "text"), heads)
                  for k, p in h.named_parameters()}
        grads[backend] = {n: p.grad for n, p in params.items()}
        if backend == "cpp":
            edges = {id(fn.variable) for fn, _ in out.total.grad_fn.next_functions
                     if fn is not None and hasattr(fn, "variable")}
            assert id(heads[1].weight) not in edges and id(heads[1].bias) not in edges
            assert id(heads[0].weight) in edges and id(heads[2].bias) in edges
    for name, g in grads["cpp"].items():
        ref = grads["reference"][name]
        if name.startswith("teacher"):
            assert g is None and ref is None
            continue
        assert g.shape == ref.shape and g.stride() == ref.stride(), name
        assert_rel_close(g, ref, TOL[torch.float64])
    trained = [g for n, g in grads["cpp"].items() if g is not None]
    before = [g.clone() for g in trained]
    trained[0].add_(1.0)  # writing one gradient leaves the others alone
    assert all(torch.equal(g, b) for g, b in zip(trained[1:], before[1:]))


@needs_ext
@pytest.mark.parametrize("frozen_features", [False, True])
def test_cpp_create_graph_gives_first_order_gradients_and_refuses_a_second(frozen_features):
    """Under create_graph=True the gradients are the usual ones, but the op has no second
    derivative: a backward through them must stop with a message naming the way out (the
    reference backend), not return nothing as PyTorch's fallback for ops without autograd does."""
    case = Case(6, 13, seed=8)
    heads = case.make_heads(torch.float64)
    f = case.f.clone().requires_grad_(not frozen_features)
    out = dgs_objective(f, case.f_t, case.t, case.labels, *heads, backend="cpp")
    wrt = [heads[0].weight, heads[2].weight] + ([] if frozen_features else [f])
    grads = torch.autograd.grad(out.total, wrt, create_graph=True)
    out = dgs_objective(f, case.f_t, case.t, case.labels, *heads, backend="cpp")
    plain = torch.autograd.grad(out.total, wrt)
    for g, p in zip(grads, plain):
        assert g.requires_grad and torch.equal(g.detach(), p)
    with pytest.raises(RuntimeError, match="no second derivative.*backend='reference'"):
        sum(g.sum() for g in grads).backward()


@needs_ext
def test_cpp_half_precision_features_promote_to_float32():
    case = Case(5, 24, torch.float32, seed=10)
    got = run(case, "cpp", dtype=torch.bfloat16)
    want = run(case, "reference", dtype=torch.bfloat16)
    assert got[1]["f"].dtype == torch.bfloat16 and got[0]["harmful"].dtype == torch.float32
    assert_same_results(got, want, 1e-5)


@needs_ext
def test_cpp_non_contiguous_features():
    case = Case(8, 13, seed=11)
    want = run(case, "reference")
    case.f_t = case.f_t.t().contiguous().t()  # column-major copy: same values, other strides
    case.t = torch.cat([case.t, case.t], dim=1)[:, :13]  # row stride 26
    assert not case.f_t.is_contiguous() and not case.t.is_contiguous()
    assert_same_results(run(case, "cpp"), want, TOL[torch.float64])


@needs_ext
def test_cpp_is_deterministic_across_thread_counts():
    case = Case(300, 200, torch.float32, seed=12)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(case, "cpp")
        torch.set_num_threads(max(2, threads))
        many = run(case, "cpp")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(list(one[0].values()) + list(one[1].values()),
                    list(many[0].values()) + list(many[1].values())):
        assert torch.equal(a, b)


def _op_inputs(batch=4, dim=7, dtype=torch.float64, grad=True):
    case = Case(batch, dim, dtype, seed=13)
    (w_s, b_s), (w_t, b_t), (w_x, b_x) = case.heads
    f = case.f.clone().requires_grad_(grad)
    return (f, case.f_t, case.t, case.labels, w_s.clone().requires_grad_(grad), w_t,
            w_x.clone().requires_grad_(grad), b_s.clone().requires_grad_(grad), b_t,
            b_x.clone().requires_grad_(grad), 0.2, 1e-6, True, True, True)


@needs_ext
@pytest.mark.parametrize("variant", [True, False])
def test_dgs_op_registration(variant):
    """Schemas, fake kernels and the autograd formula agree (torch.library.opcheck)."""
    args = list(_op_inputs())
    args[-1] = variant
    torch.library.opcheck(torch.ops.dgsnet.dgs_forward.default, tuple(args))
    coef = torch.rand(4, 4, dtype=torch.float64)
    sums = torch.rand(2, 8, dtype=torch.float64)
    w = [torch.randn(1, 7, dtype=torch.float64) for _ in range(3)]
    d = torch.tensor(1.5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.dgsnet.dgs_backward.default,
                          (coef, sums, *w, d, None, d, None, 0.2, True, True, variant, torch.float64))


@needs_ext
def test_dgs_op_registration_without_harmful_rows():
    """want_harmful=False: the fake kernel's (0, D) harmful output matches the kernel's."""
    torch.library.opcheck(torch.ops.dgsnet.dgs_forward.default, (*_op_inputs(5, 9), False))


def _without_harmful_rows(args, tol):
    """dgs_forward with and without the harmful rows on `args` (batch, dim from args[0]): only
    harmful differs, (0, D) without, and fused.harmful_rows forms the kernel's rows from coef.
    Returns (formed rows, the kernel's rows)."""
    batch, dim = args[0].shape
    full = torch.ops.dgsnet.dgs_forward(*args, True)
    lean = torch.ops.dgsnet.dgs_forward(*args, False)
    assert lean[5].shape == (0, dim) and full[5].shape == (batch, dim)
    for i in (0, 1, 2, 3, 4, 6, 7):
        assert torch.equal(full[i], lean[i]), i
    rows = fused.harmful_rows(lean[6], args[6])
    torch.testing.assert_close(rows, full[5], rtol=tol, atol=tol * float(full[5].abs().max()))
    return rows, full[5]


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,dim", [(1, 7), (33, 65), (300, 768)])
def test_without_harmful_rows_the_rest_is_the_same(batch, dim, dtype):
    """want_harmful=False changes only the harmful output, which is then (0, D), and the rows
    the caller forms from coef and w_x (fused.harmful_rows) are the kernel's; with several
    row blocks (300 x 768) too."""
    args = [a.to(dtype) if torch.is_tensor(a) else a for a in _op_inputs(batch, dim, grad=False)]
    rows, kernel_rows = _without_harmful_rows(args, TOL[dtype])
    assert torch.equal(rows == 0, kernel_rows == 0)  # the same rows and entries are zero


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("batch,dim", [(1, 7), (300, 768)])
def test_cuda_without_harmful_rows_the_rest_is_the_same(batch, dim):
    _without_harmful_rows([a.cuda() if torch.is_tensor(a) else a
                           for a in _op_inputs(batch, dim, grad=False)], 1e-10)


@needs_ext
@pytest.mark.parametrize("mode", ["none", "feature", "layer", "both"])
def test_harmful_is_formed_on_first_use_outside_the_layer_modes(mode):
    case = Case(6, 13, seed=17)
    out = dgs_objective(case.f, case.f_t, case.t, case.labels, *case.make_heads(torch.float64),
                        mode=mode, backend="cpp")
    assert isinstance(out._harmful, torch.Tensor) == (mode in ("layer", "both"))
    first = out.harmful
    assert out.harmful is first  # formed once
    want = run(case, "reference", mode)[0]["harmful"]
    assert_rel_close(first, want, TOL[torch.float64], "harmful")


@needs_ext
def test_harmful_is_never_formed_from_a_changed_weight():
    """h formed on first use needs the text head's weight as it was at the forward: read
    after an in-place change (an optimizer step) it is refused, never silently wrong; read
    before, it stays what it was."""
    case = Case(5, 11, seed=23)
    heads = case.make_heads(torch.float64)
    out = dgs_objective(case.f, case.f_t, case.t, case.labels, *heads, backend="cpp")
    kept = dgs_objective(case.f, case.f_t, case.t, case.labels, *heads, backend="cpp")
    first = kept.harmful
    with torch.no_grad():
        heads[2].weight.mul_(-3.0)  # what an optimizer step does, in place
    with pytest.raises(RuntimeError, match="read .harmful before changing the weight|Read .harmful"):
        out.harmful
    assert kept.harmful is first
    assert_rel_close(first, run(case, "reference")[0]["harmful"], TOL[torch.float64], "harmful")


@needs_ext
def test_dgs_op_gradcheck():
    """The autograd formula is the derivative of the forward (numerically, float64), with
    the projection off: the surgery deliberately is not a derivative."""
    args = list(_op_inputs(3, 5))
    args[13] = False  # project

    def terms(f, w_s, w_x, b_s, b_x):
        full = list(args)
        full[0], full[4], full[6], full[7], full[9] = f, w_s, w_x, b_s, b_x
        total, img, text, align, *_ = torch.ops.dgsnet.dgs_forward(*full)
        return total, img, text, align

    assert torch.autograd.gradcheck(terms, (args[0], args[4], args[6], args[7], args[9]))


@needs_ext
@pytest.mark.parametrize("compiler,dynamic", [("aot_eager", False), ("inductor", True)])
def test_dgs_objective_under_torch_compile(compiler, dynamic):
    """fullgraph: the fused op pair is one node each, no graph break; with dynamic shapes
    one compiled graph serves two batch/width sizes."""
    def step(f, f_t, t, y, hs, ht, hx):
        out = dgs_objective(f, f_t, t, y, hs, ht, hx, backend="cpp", check_labels=False)
        return out.total

    compiled = torch.compile(step, backend=compiler, fullgraph=True, dynamic=dynamic)
    for batch, dim in ([(6, 10), (9, 13)] if dynamic else [(6, 10)]):
        case = Case(batch, dim, torch.float32, seed=14)
        results = []
        for fn in (step, compiled):
            f = case.f.clone().requires_grad_(True)
            heads = case.make_heads(torch.float32)
            total = fn(f, case.f_t, case.t, case.labels, *heads)
            total.backward()
            results.append([total.detach(), f.grad, heads[0].weight.grad, heads[2].bias.grad])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@needs_ext
def test_forward_only_under_no_grad():
    case = Case(5, 9, seed=15)
    with torch.no_grad():
        got = dgs_objective(case.f, case.f_t, case.t, case.labels, *case.make_heads(torch.float64),
                            backend="cpp")
    want = run(case, "reference")[0]
    assert not got.total.requires_grad
    torch.testing.assert_close(got.total, want["total"], rtol=1e-10, atol=0)


@needs_ext
def test_dgs_forward_rejects_bad_arguments():
    args = list(_op_inputs(grad=False))
    bad = list(args)
    bad[1] = args[1][:, :5]
    with pytest.raises(RuntimeError, match="teacher features"):
        torch.ops.dgsnet.dgs_forward(*bad)
    bad = list(args)
    bad[4] = args[4].float()
    with pytest.raises(RuntimeError, match="student head weight must be Double"):
        torch.ops.dgsnet.dgs_forward(*bad)
    half = [a.half() if i < 3 else a.float() if torch.is_tensor(a) else a for i, a in enumerate(args)]
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.dgsnet.dgs_forward(*half)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [7, 512, 768, 1000])
@pytest.mark.parametrize("batch", [1, 3, 33, 257])
def test_cuda_matches_reference(batch, dim, dtype):
    case = Case(batch, dim, dtype, seed=batch * 7919 + dim)
    got = _to_cpu(run(_on_cuda(case), "cuda"))
    assert_same_results(got, run(case, "reference"), TOL[dtype])


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["none", "feature", "layer", "both"])
@pytest.mark.parametrize("variant", ["published", "paper"])
def test_cuda_modes_variants_and_edges(mode, variant):
    for case in (Case(19, 45, seed=3), Case(12, 37, labels=[0, 1] * 6, harmless_text=True, seed=5),
                 Case(9, 30, scale=200.0, bias=False, seed=8)):
        got = _to_cpu(run(_on_cuda(case), "cuda", mode, variant))
        assert_same_results(got, run(case, "reference", mode, variant), TOL[torch.float64])


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch,dim", [(3, 7), (257, 1000)])
def test_cuda_half_inputs_accumulate_in_float32(batch, dim, dtype):
    """Half features are read as they are; the result matches the reference on the
    same (rounded) values promoted to float32."""
    case = Case(batch, dim, torch.float32, seed=batch + dim)
    for name in ("f", "f_t", "t"):
        setattr(case, name, getattr(case, name).to(dtype).float())
    got = _to_cpu(run(_on_cuda(case), "cuda", dtype=dtype))
    want = run(case, "reference", dtype=dtype)
    assert got[1]["f"].dtype == dtype and got[0]["harmful"].dtype == torch.float32
    for name in ("total", "img", "text", "align", "harmful"):
        assert_rel_close(got[0][name], want[0][name], 1e-5, name)
    for name in ("student.weight", "student.bias", "text.weight", "text.bias"):
        assert_rel_close(got[1][name], want[1][name], 1e-5, name)
    # the feature gradient is returned in the features' half type: one rounding
    assert_rel_close(got[1]["f"].float(), want[1]["f"].float(), 1e-2, "grad f")


@needs_cuda
@pytest.mark.gpu
def test_cuda_repeated_calls_and_streams_agree():
    """The kernel's cross-block counters reset themselves: many calls, two streams."""
    case = _on_cuda(Case(4096, 768, torch.float32, seed=16))
    first = run(case, "cuda")
    side = torch.cuda.Stream()
    for _ in range(5):
        with torch.cuda.stream(side):
            again = run(case, "cuda")
        torch.cuda.synchronize()
        for a, b in zip(first[1].values(), again[1].values()):
            assert torch.equal(a, b)


def _on_cuda(case: Case) -> Case:
    moved = Case.__new__(Case)
    moved.__dict__.update(case.__dict__)
    moved.f, moved.f_t, moved.t = (x.cuda() for x in (case.f, case.f_t, case.t))
    moved.labels = case.labels.cuda()
    moved.make_heads = lambda dtype: [h.cuda() for h in Case.make_heads(case, dtype)]
    return moved


def _to_cpu(result):
    values, grads, teacher = result
    return ({k: v.cpu() for k, v in values.items()}, {k: v.cpu() for k, v in grads.items()}, teacher)


@needs_cuda
@pytest.mark.gpu
def test_cuda_forward_and_backward_are_one_launch_each():
    from torch.profiler import ProfilerActivity, profile

    case = _on_cuda(Case(257, 768, torch.float32, seed=17))
    run(case, "cuda")  # first call on this stream clears its ticket once
    torch.cuda.synchronize()
    f = case.f.clone().requires_grad_(True)
    heads = case.make_heads(torch.float32)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = dgs_objective(f, case.f_t, case.t, case.labels, *heads, backend="cuda",
                            check_labels=False)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    assert sum("dgs_forward_kernel" in k for k in kernels) == 1, kernels
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out.total.backward()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    assert sum("dgs_backward_kernel" in k for k in kernels) == 1, kernels
