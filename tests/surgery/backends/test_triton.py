"""Triton backend (dgsnet_triton::*) against the reference.

On the CPU the kernels run through Triton's interpreter (~0.1-1 s a call), so
these cases are small odd shapes that still cross every tile edge of the
interpreter's block sizes (8 rows x 64 columns; 16 x 64 in the column pass, whose
row chunks are whole 16-row quanta).
On a GPU the same tests run compiled, plus the full size grid.
"""
import importlib.util

import pytest
import torch

from dgsnet.surgery.backends import triton_usable
from tests.surgery.fused_cases import TOL, Case, assert_same_results, run

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
usable, why = triton_usable(DEVICE)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None or not usable,
                                reason=why or "triton is not installed")


def _on(case: Case, device) -> Case:
    if device.type == "cpu":
        return case
    moved = Case.__new__(Case)
    moved.__dict__.update(case.__dict__)
    moved.f, moved.f_t, moved.t, moved.labels = (x.to(device) for x in
                                                 (case.f, case.f_t, case.t, case.labels))
    moved.make_heads = lambda dtype: [h.to(device) for h in Case.make_heads(case, dtype)]
    return moved


def _cpu(result):
    values, grads, teacher = result
    return ({k: v.cpu() for k, v in values.items()},
            {k: None if v is None else v.cpu() for k, v in grads.items()}, teacher)


def triton_run(case, *args, **kwargs):
    return _cpu(run(_on(case, DEVICE), "triton", *args, **kwargs))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,dim", [(1, 7), (3, 130), (33, 65)])
def test_triton_matches_reference(batch, dim, dtype):
    case = Case(batch, dim, dtype, seed=batch * 31 + dim)
    assert_same_results(triton_run(case), run(case, "reference"), TOL[dtype])


@pytest.mark.parametrize("mode,variant", [("none", "published"), ("layer", "paper"),
                                          ("both", "published"), ("feature", "paper")])
def test_triton_modes_and_variants(mode, variant):
    case = Case(9, 45, seed=3)
    assert_same_results(triton_run(case, mode, variant), run(case, "reference", mode, variant),
                        TOL[torch.float64])


def test_triton_frozen_features_train_the_heads_without_the_row_pass():
    """Features that need no gradient: head gradients as the reference's, no backward kernel."""
    case = Case(5, 23, seed=4)

    def backward_calls(**kw):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            result = triton_run(case, **kw)
        return result, sum(e.name.endswith("::dgs_backward") for e in prof.events())

    got, calls = backward_calls(frozen_features=True)
    assert_same_results(got, run(case, "reference", frozen_features=True), TOL[torch.float64])
    assert got[1]["f"] is None and calls == 0
    assert backward_calls()[1] == 1  # trainable features: the kernel runs


@pytest.mark.parametrize("labels", ["real", "fake"])
def test_triton_edge_rows(labels):
    """All-real / all-fake batches with no harmful direction on real rows; no bias."""
    y = [0] * 6 if labels == "real" else [1] * 6
    case = Case(6, 37, labels=y, harmless_text=True, bias=False, seed=5)
    got = triton_run(case)
    assert_same_results(got, run(case, "reference"), TOL[torch.float64])
    norms = got[0]["harmful"].norm(dim=1)
    assert (norms == 0).all() if labels == "real" else (norms > 0.99).all()


def test_triton_saturated_logits():
    case = Case(9, 30, scale=200.0, bias=False, seed=8)  # as the cpp test: no ill-conditioned bias sum
    got = triton_run(case)
    assert_same_results(got, run(case, "reference"), TOL[torch.float64])
    assert all(torch.isfinite(v).all() for v in got[0].values())


def test_triton_non_contiguous_features():
    case = Case(5, 13, seed=11)
    want = run(case, "reference")
    case.t = torch.cat([case.t, case.t], dim=1)[:, :13]  # row stride 26, read in place
    case.f_t = case.f_t.t().contiguous().t()  # column-major: copied once
    assert_same_results(triton_run(case), want, TOL[torch.float64])


def test_triton_op_registration():
    """Schema, fake kernel and autograd formula of dgsnet_triton::dgs_forward agree."""
    case = Case(3, 7, seed=13)
    (w_s, b_s), (w_t, b_t), (w_x, b_x) = case.heads
    args = (case.f.clone().to(DEVICE).requires_grad_(True), case.f_t.to(DEVICE), case.t.to(DEVICE),
            case.labels.to(DEVICE), w_s.to(DEVICE).requires_grad_(True), w_t.to(DEVICE),
            w_x.to(DEVICE).requires_grad_(True), b_s.to(DEVICE), b_t.to(DEVICE),
            b_x.to(DEVICE).requires_grad_(True), 0.2, 1e-6, True, True, True)
    import dgsnet.surgery.backends.triton  # noqa: F401  (registers the ops)

    torch.library.opcheck(torch.ops.dgsnet_triton.dgs_forward.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(torch.ops.dgsnet_triton.dgs_forward.default, (*args, False),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    with torch.no_grad():
        full = torch.ops.dgsnet_triton.dgs_forward(*args, True)
        lean = torch.ops.dgsnet_triton.dgs_forward(*args, False)
    assert lean[5].shape == (0, 7) and full[5].shape == (3, 7)
    for i in (0, 1, 2, 3, 4, 6, 7):  # want_harmful changes the harmful output only
        assert torch.equal(full[i], lean[i]), i


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [7, 512, 768, 1000])
@pytest.mark.parametrize("batch", [1, 3, 33, 257])
def test_triton_gpu_full_grid(batch, dim, dtype):
    case = Case(batch, dim, dtype, seed=batch * 7919 + dim)
    assert_same_results(triton_run(case), run(case, "reference"), TOL[dtype])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_gpu_half_features(dtype):
    case = Case(65, 768, torch.float32, seed=2)
    for name in ("f", "f_t", "t"):
        setattr(case, name, getattr(case, name).to(dtype).float())
    got = triton_run(case, dtype=dtype)
    want = run(case, "reference", dtype=dtype)
    assert got[1]["f"].dtype == dtype
    for name in ("total", "img", "text", "align", "harmful"):
        torch.testing.assert_close(got[0][name], want[0][name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1]["f"].float(), want[1]["f"].float(), rtol=1e-2, atol=1e-4)


# --- tuning, runtime scalars and the chunked column pass (issue 17 item 4 (b), (c), (e)) ---

def _kernels():
    from dgsnet.surgery.backends.triton import dgs_objective as obj
    from dgsnet.surgery.backends.triton import project_params as pp

    return {"forward rows": obj._FORWARD_ROWS, "forward cols": obj._FORWARD_COLS,
            "backward": obj._BACKWARD, "chunk dot/norm": pp._CHUNK_DOT_NORM}


@pytest.mark.parametrize("name", ["forward rows", "forward cols", "backward", "chunk dot/norm"])
def test_pinned_switch_selects_one_config(name, monkeypatch):
    """DGSNET_TRITON_PINNED=1: the GPU launch path holds the kernel's one pinned config (a
    single-config autotuner never benchmarks); unset, it tunes over every config."""
    kernel = _kernels()[name]
    monkeypatch.setenv("DGSNET_TRITON_PINNED", "1")
    chosen = kernel.select(interpret=False)
    assert chosen.configs == [kernel.pinned]
    monkeypatch.setenv("DGSNET_TRITON_PINNED", "0")
    tuned = kernel.select(interpret=False)
    assert len(tuned.configs) > 1 and tuned.configs == kernel.configs
    assert kernel.pinned in kernel.configs  # the pinned config is one the tuner would consider
    # the interpreter always runs its own single config
    assert kernel.select(interpret=True).configs == [kernel.interpreted]


def test_autotune_keys_on_width_and_batch_bucket():
    from dgsnet.surgery.backends.triton.dgs_objective import B_BUCKET_CAP, bucket

    for name in ("forward rows", "forward cols", "backward"):
        assert _kernels()[name].tuned.keys == ["D", "B_BUCKET"], name
    assert [bucket(n) for n in (0, 1, 2, 3, 4, 5, 32, 33, 1000)] == [1, 1, 2, 4, 4, 8, 32, 64, 1024]
    assert bucket(10 ** 6) == B_BUCKET_CAP == bucket(B_BUCKET_CAP + 1)


def test_lam_is_a_runtime_value():
    """Two lam values through the same compiled kernels, each equal to the reference."""
    from dgsnet.surgery import dgs_objective

    case = Case(7, 21, seed=17)
    got = {}
    for lam in (0.2, 0.73):
        results = []
        for backend in ("triton", "reference"):
            f = case.f.clone().to(DEVICE if backend == "triton" else "cpu").requires_grad_(True)
            dev = f.device
            heads = [h.to(dev) for h in case.make_heads(torch.float64)]
            out = dgs_objective(f, case.f_t.to(dev), case.t.to(dev), case.labels.to(dev), *heads,
                                lam=lam, eps=1e-6, backend=backend)
            out.total.backward()
            results.append((out.total.detach().cpu(), f.grad.cpu()))
        (tot, grad), (tot_ref, grad_ref) = results
        torch.testing.assert_close(tot, tot_ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-14)
        got[lam] = tot
    assert not torch.equal(got[0.2], got[0.73])  # lam reached the kernels


def test_scalars_are_exact_and_cached():
    from dgsnet.surgery.backends.triton.dgs_objective import scalars

    a = scalars((0.1, 1e-6), torch.float64, DEVICE)
    assert a.dtype == torch.float64 and a.tolist() == [0.1, 1e-6]  # float64 bits, not float32's
    assert scalars((0.1, 1e-6), torch.float64, DEVICE) is a
    assert scalars((0.1, 1e-6), torch.float32, DEVICE).dtype == torch.float32


@pytest.mark.parametrize("mode,variant", [("feature", "published"), ("both", "paper")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_column_pass_in_several_chunks(mode, variant, dtype):
    """The 2-D column pass with several row chunks (a short last one) and its reduce."""
    from dgsnet.surgery.backends.triton.dgs_objective import _row_chunks

    batch, dim = 50, 70
    rows, chunks = _row_chunks(batch, dim, DEVICE)
    if chunks < 2:
        pytest.skip(f"this device puts B={batch} in one chunk")
    assert batch % rows != 0
    case = Case(batch, dim, dtype, seed=23)
    assert_same_results(triton_run(case, mode, variant), run(case, "reference", mode, variant),
                        TOL[dtype])


def test_triton_column_pass_is_deterministic():
    case = Case(50, 70, torch.float32, seed=29)
    first, second = triton_run(case), triton_run(case)
    for name, value in first[0].items():
        assert torch.equal(value, second[0][name]), name
    assert torch.equal(first[1]["student.weight"], second[1]["student.weight"])


def _compiled_variants(autotuner) -> int:
    """Kernels compiled for a jitted function (Triton's per-device caches)."""
    fn = autotuner.fn
    caches = getattr(fn, "device_caches", None)
    if caches is None:
        pytest.skip("this Triton keeps no device_caches to count compiled kernels in")
    return sum(len(entry[0]) for entry in caches.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_gpu_pinned_compiles_once_for_every_batch_and_lam(monkeypatch):
    """Pinned: no compile after the first call, for B in {1, 32, 33, 257} and three lam values."""
    from dgsnet.surgery import dgs_objective
    from dgsnet.surgery.backends.triton import dgs_objective as obj

    monkeypatch.setenv("DGSNET_TRITON_PINNED", "1")
    counts = []
    for batch, lam in [(1, 0.2), (32, 0.2), (33, 0.5), (257, 0.9), (33, 0.2)]:
        case = Case(batch, 768, torch.float32, seed=batch)
        f = case.f.cuda().requires_grad_(True)
        heads = [h.cuda() for h in case.make_heads(torch.float32)]
        out = dgs_objective(f, case.f_t.cuda(), case.t.cuda(), case.labels.cuda(), *heads, lam=lam,
                            backend="triton")
        out.total.backward()
        counts.append(tuple(_compiled_variants(k.one) for k in
                            (obj._FORWARD_ROWS, obj._FORWARD_COLS, obj._BACKWARD)))
    # the first call may compile (or find the config compiled by an earlier tuning run)
    assert counts[-1] == counts[0], counts


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_gpu_pinned_bits_match_across_processes(tmp_path):
    """With DGSNET_TRITON_PINNED=1 two processes produce the same bits."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from tests.surgery.fused_cases import Case, run\n"
        "case = Case(300, 768, torch.float32, seed=5)\n"
        "case.f, case.f_t, case.t, case.labels = (x.cuda() for x in (case.f, case.f_t, case.t, case.labels))\n"
        "make = Case.make_heads\n"
        "case.make_heads = lambda d: [h.cuda() for h in make(case, d)]\n"
        "values, grads, _ = run(case, 'triton')\n"
        "torch.save({**{k: v.cpu() for k, v in values.items()}, **{'g_' + k: v.cpu() for k, v in grads.items()}}, sys.argv[1])\n")
    env = dict(__import__("os").environ, DGSNET_TRITON_PINNED="1")
    root = __import__("pathlib").Path(__file__).resolve().parents[3]
    outs = []
    for i in range(2):
        path = tmp_path / f"run{i}.pt"
        proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(torch.load(path))
    for name, value in outs[0].items():
        assert torch.equal(value, outs[1][name]), name
