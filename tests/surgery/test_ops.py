"""Backends of the surgery ops against the plain-PyTorch reference."""
import pytest
import torch

from dgsnet import _ext
from dgsnet.surgery import project_rows, reference, resolve_backend

needs_ext = pytest.mark.skipif(not _ext.available(), reason=f"dgsnet._C not built: {_ext.LOAD_ERROR}")
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def unit_rows(rows, dim, dtype, zero_rows=()):
    h = torch.randn(rows, dim, dtype=dtype)
    h = h / h.norm(dim=1, keepdim=True)
    h[list(zero_rows)] = 0
    return h


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows,dim", [(1, 7), (3, 512), (33, 768), (257, 1000)])
def test_cpp_project_rows_matches_reference(rows, dim, dtype):
    torch.manual_seed(rows * dim)
    g = torch.randn(rows, dim, dtype=dtype)
    h = unit_rows(rows, dim, dtype, zero_rows=[0] if rows > 1 else [])
    got = project_rows(g, h, backend="cpp")
    want = reference.project_rows(g, h)
    torch.testing.assert_close(got, want, **TOL[dtype])
    # orthogonal to h, and rows with h = 0 untouched
    assert (got * h).sum(dim=1).abs().max().item() < 1e-4 if dtype == torch.float32 else 1e-10
    if rows > 1:
        assert torch.equal(got[0], g[0])


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpp_project_rows_backward_matches_reference(dtype):
    torch.manual_seed(1)
    g = torch.randn(5, 9, dtype=dtype, requires_grad=True)
    h = unit_rows(5, 9, dtype)
    w = torch.randn(5, 9, dtype=dtype)
    (got,) = torch.autograd.grad((project_rows(g, h, backend="cpp") * w).sum(), g)
    (want,) = torch.autograd.grad((reference.project_rows(g, h) * w).sum(), g)
    torch.testing.assert_close(got, want, **TOL[dtype])


@needs_ext
def test_cpp_project_rows_non_contiguous_input():
    g = torch.randn(9, 6, dtype=torch.float64).t()  # (6, 9), non-contiguous
    h = unit_rows(6, 9, torch.float64)
    torch.testing.assert_close(project_rows(g, h, backend="cpp"), reference.project_rows(g, h),
                               **TOL[torch.float64])


@needs_ext
def test_project_rows_op_registration():
    """Schema, fake kernel and autograd formula agree (torch.library.opcheck)."""
    g = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    h = unit_rows(4, 7, torch.float64)
    torch.library.opcheck(torch.ops.dgsnet.project_rows.default, (g, h))


@needs_ext
def test_project_rows_rejects_bad_arguments():
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.dgsnet.project_rows(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(RuntimeError, match="g is Float but h is Double"):
        torch.ops.dgsnet.project_rows(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64))


def test_auto_backend_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == ("cpp" if _ext.available() else "reference")


def test_cuda_backend_refuses_cpu_tensors():
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        resolve_backend("cuda", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,dim", [(1, 7), (33, 768), (257, 1000)])
def test_cuda_project_rows_matches_reference(rows, dim, dtype):
    g = torch.randn(rows, dim, device="cuda").to(dtype)
    h = unit_rows(rows, dim, torch.float32).cuda().to(dtype)
    got = project_rows(g, h, backend="cuda").double()
    want = reference.project_rows(g.double(), h.double())
    tol = TOL.get(dtype, dict(rtol=2e-2, atol=2e-2))
    torch.testing.assert_close(got, want, **tol)
