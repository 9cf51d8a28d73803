"""The fused multi-tensor projection project_params_ (docs/method.md section 3) against
the per-tensor reference loop, for every available backend."""
import importlib.util

import pytest
import torch

from dgsnet.surgery import available_backends, project_params_, reference
from dgsnet.surgery.backends import extension

CPU = torch.device("cpu")
GPU = torch.device("cuda") if torch.cuda.is_available() else None
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def _backends():
    found = [("cpp", CPU)] if "cpp" in available_backends(CPU) else []
    if importlib.util.find_spec("triton") is not None and "triton" in available_backends(GPU or CPU):
        found.append(("triton", GPU or CPU))
    if GPU is not None and "cuda" in available_backends(GPU):
        found.append(("cuda", GPU))
    return found


BACKENDS = _backends()
ids = [b for b, _ in BACKENDS]


def lora_like(n_blocks, width, rank, dtype, seed):
    """q, k, v LoRA A (rank x width) and B (width x rank) per block, plus odd sizes."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [s for _ in range(n_blocks) for s in [(rank, width), (width, rank)] * 3]
    shapes += [(1,), (7, 3), (40000,), (16384,), (16385,)]
    grads = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    dirs = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    return grads, dirs


def check(backend, device, grads, dirs, eps, dtype):
    want = [g.clone() for g in grads]
    reference.project_params_(want, dirs, eps)
    got = [g.clone().to(device) for g in grads]
    project_params_(got, [u.to(device) for u in dirs], eps=eps, backend=backend)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a.cpu(), b, **TOL[dtype], msg=lambda m: f"tensor {i}: {m}")
    return [g.cpu() for g in got]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend,device", BACKENDS, ids=ids)
def test_matches_per_tensor_loop(backend, device, dtype):
    blocks = 2 if backend == "triton" and device.type == "cpu" else 12
    grads, dirs = lora_like(blocks, 96, 6, dtype, seed=1)
    got = check(backend, device, grads, dirs, 1e-12, dtype)
    # each projected gradient keeps no component along its direction
    for g, g0, u in zip(got, grads, dirs):
        cos = (g * u).sum() / (g0.norm() * u.norm())
        assert abs(cos.item()) < (1e-10 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=ids)
def test_zero_direction_and_empty_tensors_are_untouched(backend, device):
    grads = [torch.randn(n, dtype=torch.float64) for n in (5, 0, 33, 3)]
    dirs = [torch.randn_like(g) for g in grads]
    dirs[2].zero_()
    got = check(backend, device, grads, dirs, 1e-12, torch.float64)
    assert torch.equal(got[2], grads[2])
    assert not torch.equal(got[0], grads[0])


@pytest.mark.parametrize("backend,device", BACKENDS, ids=ids)
def test_many_tensors(backend, device):
    """More tensors than any per-launch table of a fixed-size kernel argument would hold."""
    n = 40 if backend == "triton" and device.type == "cpu" else 300
    gen = torch.Generator().manual_seed(3)
    sizes = torch.randint(1, 200, (n,), generator=gen).tolist()
    grads = [torch.randn(s, generator=gen) for s in sizes]
    dirs = [torch.randn(s, generator=gen) for s in sizes]
    check(backend, device, grads, dirs, 1e-12, torch.float32)


@pytest.mark.skipif(not extension.available(), reason="dgsnet._C not built")
def test_cpp_rejects_mismatched_lists():
    with pytest.raises(RuntimeError, match="differ in shape"):
        torch.ops.dgsnet.project_params_([torch.zeros(3)], [torch.zeros(4)], 1e-12)
    with pytest.raises(RuntimeError, match="not contiguous"):
        torch.ops.dgsnet.project_params_([torch.zeros(3, 4).t()], [torch.zeros(3, 4).t()], 1e-12)
    with pytest.raises(ValueError, match="2 gradients but 1 directions"):
        project_params_([torch.zeros(3), torch.zeros(3)], [torch.zeros(3)], backend="cpp")


@pytest.mark.skipif(not extension.available(), reason="dgsnet._C not built")
def test_cpp_project_params_op_registration():
    grads = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    dirs = [torch.randn_like(g) for g in grads]
    torch.library.opcheck(torch.ops.dgsnet.project_params_.default, (grads, dirs, 1e-12))


@pytest.mark.gpu
@pytest.mark.skipif(GPU is None or not extension.cuda_compiled(), reason="needs CUDA and dgsnet._C with CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_gradients(dtype):
    grads, dirs = lora_like(2, 64, 6, torch.float32, seed=4)
    want = [g.clone().double() for g in grads]
    reference.project_params_(want, [u.double() for u in dirs], 1e-12)
    got = [g.to(GPU, dtype) for g in grads]
    project_params_(got, [u.to(GPU, dtype) for u in dirs], eps=1e-12, backend="cuda")
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double().cpu(), b, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not any(b == "triton" for b, _ in BACKENDS), reason="triton not usable here")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_per_tensor_coefficient_over_many_chunk_blocks(dtype, monkeypatch):
    """The middle step adds a tensor's chunk partials COEF_BLOCK at a time: with a block of 2
    chunks, tensors of 1, 2, 3 and 5 chunks cross its edges (and one follows an empty tensor)."""
    from dgsnet.surgery.backends.triton import project_params as pp

    monkeypatch.setattr(pp, "_COEF_BLOCK", 2)
    gen = torch.Generator().manual_seed(7)
    sizes = [5, pp.CHUNK * 2, 0, pp.CHUNK * 2 + 1, pp.CHUNK * 4 + 3, 1]
    grads = [torch.randn(n, generator=gen, dtype=dtype) for n in sizes]
    dirs = [torch.randn(n, generator=gen, dtype=dtype) for n in sizes]
    device = dict(BACKENDS)["triton"]
    check("triton", device, grads, dirs, 1e-12, dtype)


@pytest.mark.skipif(not any(b == "triton" for b, _ in BACKENDS), reason="triton not usable here")
def test_triton_eps_is_a_runtime_value():
    device = dict(BACKENDS)["triton"]
    grads = [torch.randn(40, dtype=torch.float64) * 1e-3]
    dirs = [torch.randn(40, dtype=torch.float64) * 1e-3]
    for eps in (1e-12, 1e-5):  # eps comparable to ||u||^2: the coefficient changes with it
        check("triton", device, grads, dirs, eps, torch.float64)


@pytest.mark.gpu
@pytest.mark.skipif(GPU is None, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_project_params_refuses_graph_capture(backend):
    if backend not in available_backends(GPU):
        pytest.skip(f"{backend} not available")
    grads = [torch.randn(100, device=GPU)]
    dirs = [torch.randn(100, device=GPU)]
    project_params_(grads, dirs, eps=1e-12, backend=backend)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        with torch.cuda.graph(graph):
            project_params_(grads, dirs, eps=1e-12, backend=backend)
