"""Triton backend (dgsnet_triton::*) against the reference.

On the CPU the kernels run through Triton's interpreter (~0.1-1 s a call), so
these cases are small odd shapes that still cross every tile edge of the
interpreter's block sizes (8 rows x 64 columns, 32 rows in the column pass).
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
    return ({k: v.cpu() for k, v in values.items()}, {k: v.cpu() for k, v in grads.items()}, teacher)


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
