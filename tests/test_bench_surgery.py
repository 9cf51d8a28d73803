"""bench/bench_surgery.py's launch-count target: it counts dgsnet's own kernels only, per direction.

The count itself needs a CUDA device (torch.profiler); what decides it runs here: the filter over a
profiler's kernel names (synthetic names, as CUPTI reports them for the CUDA extension's templates,
Triton's kernels and PyTorch's own), the kernel names it looks for still being defined in the
sources, and the targets built from a row. The bench scripts import `common` from their folder: it
is loaded here by file path, no sys.path change.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from tests.bench_modules import load_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_surgery(monkeypatch):
    return load_bench(monkeypatch, "bench_surgery")


# What a profiler lists for one forward and one backward (CUDA, then Triton): dgsnet's kernels among
# PyTorch's (autograd's ones-fill of the seed gradient, copies, gradient accumulation).
FORWARD_CUDA = ["void dgsnet::(anonymous namespace)::dgs_forward_kernel<float, float>"
                "(dgsnet::(anonymous namespace)::ForwardParams<float, float>)",
                "void dgsnet::(anonymous namespace)::dgs_forward_reduce_kernel<float>(float const*, long, long)",
                "Memcpy HtoD (Pageable -> Device)"]
BACKWARD_CUDA = ["void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, "
                 "std::array<char*, 1ul> >(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)",
                 "void dgsnet::(anonymous namespace)::dgs_backward_kernel<float, float>"
                 "(dgsnet::(anonymous namespace)::BackwardParams<float, float>)",
                 "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t>>",
                 "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>"]
FORWARD_TRITON = ["_forward_rows_kernel", "_forward_cols_kernel_0d1d2d3de", "triton_poi_fused_add_0"]
BACKWARD_TRITON = ["void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>",
                   "_backward_kernel", "elementwise_kernel_backward_kernel_like", "my_backward_kernel"]


def test_only_dgsnets_own_kernels_are_counted(bench_surgery):
    own = bench_surgery.own_kernels
    assert own(FORWARD_CUDA) == FORWARD_CUDA[:2]
    assert own(BACKWARD_CUDA) == [BACKWARD_CUDA[1]]  # the ones-fill and the accumulation are PyTorch's
    assert own(FORWARD_TRITON) == FORWARD_TRITON[:2]
    assert own(BACKWARD_TRITON) == ["_backward_kernel"]  # not a name that merely ends the same way
    assert own([]) == [] and own(["Memset (Device)", "dgs_forward_kernelx"]) == []


def test_the_kernel_names_it_counts_are_defined_in_the_sources(bench_surgery):
    cuda = (ROOT / "csrc" / "cuda" / "dgs_objective.cu").read_text()
    triton = (ROOT / "dgsnet" / "surgery" / "backends" / "triton" / "dgs_objective.py").read_text()
    kernels = re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(", cuda)
    defined = set(kernels) | set(re.findall(r"^def (\w+_kernel)\(", triton, re.M))
    assert set(bench_surgery.OWN_KERNELS) == defined


def test_the_launch_target_is_per_direction_and_needs_a_counted_kernel(bench_surgery):
    row = {"B": 32, "D": 768, "cuda_speedup": 12.0, "cuda_fwd_launches": 2, "cuda_bwd_launches": 1,
           "triton_speedup": 9.0, "triton_fwd_launches": 3, "triton_bwd_launches": 0}
    goals = bench_surgery.targets([row], [], ["cuda", "triton"])
    assert goals["cuda_fwd_launches_B32_D768"] == {"value": 2, "target": "1 or 2", "met": True}
    assert goals["cuda_bwd_launches_B32_D768"]["met"] is True
    assert goals["triton_fwd_launches_B32_D768"]["met"] is False  # three launches
    assert goals["triton_bwd_launches_B32_D768"]["met"] is False  # none counted: the filter missed it
    assert not any("fwd_bwd" in k for k in goals)


def test_no_count_without_cuda(bench_surgery):
    assert bench_surgery.count_launches("reference", None, None, None, torch.device("cpu")) == (None, None)


def test_speedup_targets_are_judged_on_the_paired_ratio(bench_surgery):
    """Where the step-by-step pairs were measured, they decide; the rounds' ratio otherwise."""
    rows = [{"B": 256, "D": 768, "cpp_speedup": 5.4, "cpp_speedup_paired": 4.8},
            {"B": 32, "D": 768, "cuda_speedup": 9.0, "cuda_speedup_paired": 11.0,
             "triton_speedup": 10.5}]
    overhead = [{"backend": "cpp", "fwd_us": 41.0}, {"backend": "reference", "fwd_us": 500.0}]
    goals = bench_surgery.targets(rows, overhead, ["cpp", "cuda", "triton"])
    assert goals["cpp_speedup_B256_D768"] == {"value": 4.8, "target": ">= 5", "met": False}
    assert goals["cuda_speedup_B32_D768"] == {"value": 11.0, "target": ">= 10", "met": True}
    assert goals["triton_speedup_B32_D768"] == {"value": 10.5, "target": ">= 10", "met": True}
    assert goals["cpp_fwd_us_B1"]["met"] is False
    assert "reference_fwd_us_B1" not in goals
    assert set(bench_surgery.TARGET_SHAPE) == {"cpp", "cuda", "triton"}
