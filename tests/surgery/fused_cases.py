"""Shared inputs and comparison for the fused-backend parity tests.

`run` evaluates dgs_objective on fresh copies of one random problem and
backpropagates an arbitrary weighted sum of the loss terms (as a GradScaler
or gradient accumulation would), returning every forward value and every
gradient the objective produces, so backends can be compared term by term.
"""
from __future__ import annotations

import torch
from torch import nn

from dgsnet.surgery import dgs_objective

EPS = 1e-6
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


class Case:
    def __init__(self, batch, dim, dtype=torch.float64, seed=0, labels=None, harmless_text=False,
                 bias=True, scale=1.0):
        gen = torch.Generator().manual_seed(seed)

        def randn(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float64)

        self.dtype = dtype
        self.f = (randn(batch, dim) * scale).to(dtype)
        self.f_t = (randn(batch, dim) * scale).to(dtype)
        self.t = (randn(batch, dim) * scale).to(dtype)
        if labels is None:
            labels = torch.randint(0, 2, (batch,), generator=gen)
        self.labels = torch.as_tensor(labels).to(dtype)
        self.heads = []
        for _ in range(3):
            w = randn(1, dim) / dim ** 0.5
            b = randn(1) if bias else None
            self.heads.append((w, b))
        if harmless_text:  # w_X < 0: relu(g_X) = 0 on every real row
            w, b = self.heads[2]
            self.heads[2] = (-w.abs() - 0.1, b)
        # Upstream gradient of each loss term: total, img, text, align.
        self.upstream = (randn(4) * 2).tolist()

    def make_heads(self, dtype):
        heads = []
        for w, b in self.heads:
            lin = nn.Linear(w.shape[1], 1, bias=b is not None).to(dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            heads.append(lin)
        return heads


def run(case: Case, backend: str, mode="feature", variant="published", dtype=None, upstream=None,
        frozen_features=False):
    """Forward values and gradients of one dgs_objective call with `backend` (with frozen
    features only the heads get gradients: grads["f"] is None)."""
    dtype = dtype or case.dtype
    f = case.f.to(dtype).clone().requires_grad_(not frozen_features)
    heads = case.make_heads(dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    out = dgs_objective(f, case.f_t.to(dtype), case.t.to(dtype), case.labels, *heads, eps=EPS,
                        mode=mode, variant=variant, backend=backend)
    a, b, c, d = case.upstream if upstream is None else upstream
    (a * out.total + b * out.img + c * out.text + d * out.align).backward()
    student, teacher, text = heads
    values = {name: getattr(out, name).detach() for name in ("total", "img", "text", "align",
                                                              "teacher", "harmful")}
    grads = {"f": f.grad, "student.weight": student.weight.grad, "text.weight": text.weight.grad}
    if student.bias is not None:
        grads["student.bias"] = student.bias.grad
        grads["text.bias"] = text.bias.grad
    teacher_grads = [p.grad for p in teacher.parameters()]
    return values, grads, teacher_grads


def assert_rel_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str = "") -> None:
    """Elementwise within tol relative, with an absolute floor of tol times the largest entry."""
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype,
                                                                 got.shape, want.shape)
    floor = tol * float(want.abs().max()) + 1e-300
    torch.testing.assert_close(got, want, rtol=tol, atol=floor, msg=lambda m: f"{what}: {m}")


def assert_same_results(got, want, tol):
    values, grads, teacher_grads = got
    want_values, want_grads, _ = want
    for name, value in want_values.items():
        assert_rel_close(values[name], value, tol, name)
    assert set(grads) == set(want_grads)
    for name, grad in want_grads.items():
        if grad is None:  # frozen features: none in either
            assert grads[name] is None, f"{name} got a gradient it should not have"
            continue
        assert grads[name] is not None, f"{name} got no gradient"
        assert_rel_close(grads[name], grad, tol, f"grad {name}")
    assert all(g is None for g in teacher_grads), "the teacher head must get no gradient"
