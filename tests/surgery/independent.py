"""A small problem and an independent formulation of docs/method.md section 2, shared by
test_reference.py and test_objective.py.

The independent formulation uses autograd for every gradient the design names
(g_T = dL_T/df_T, g_X = dL_text/dt) and a tensor hook on the features for the
surgery. Parity is measured on the parameters of a small real module that
produces the features, not on the features alone.
"""
import torch
import torch.nn.functional as F
from torch import nn

from dgsnet.surgery import dgs_objective

EPS = 1e-6


class Problem:
    """A feature extractor, three heads and a batch, all in float64."""

    def __init__(self, batch=5, dim=7, in_dim=4, labels=None, seed=0, dtype=torch.float64):
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(in_dim, 11), nn.Tanh(), nn.Linear(11, dim)).to(dtype)
        self.student_head = nn.Linear(dim, 1).to(dtype)
        self.teacher_head = nn.Linear(dim, 1).to(dtype)
        self.text_head = nn.Linear(dim, 1).to(dtype)
        self.x = torch.randn(batch, in_dim, generator=gen, dtype=dtype)
        self.teacher_feats = torch.randn(batch, dim, generator=gen, dtype=dtype)
        self.text_feats = torch.randn(batch, dim, generator=gen, dtype=dtype)
        if labels is None:
            labels = torch.randint(0, 2, (batch,), generator=gen)
        self.labels = torch.as_tensor(labels).to(dtype)

    def trainable(self):
        return [*self.net.parameters(), *self.student_head.parameters(), *self.text_head.parameters()]

    def zero_grad(self):
        for p in [*self.trainable(), *self.teacher_head.parameters()]:
            p.grad = None

    def grads(self):
        return [p.grad.clone() if p.grad is not None else None for p in self.trainable()]


def objective_grads(prob, **kwargs):
    kwargs.setdefault("backend", "reference")  # the specification unless a test names another
    prob.zero_grad()
    feats = prob.net(prob.x)
    out = dgs_objective(feats, prob.teacher_feats, prob.text_feats, prob.labels,
                        prob.student_head, prob.teacher_head, prob.text_head, eps=EPS, **kwargs)
    out.total.backward()
    teacher_grads = [p.grad for p in prob.teacher_head.parameters()]
    return out, prob.grads(), teacher_grads


def independent_grads(prob, lam=0.2, project=True, variant="published", align=True):
    """docs/method.md section 2 written out literally, with autograd.grad and a feature hook."""
    prob.zero_grad()
    y = prob.labels
    batch = y.shape[0]
    # g_T = dL_T / df_T and g_X = dL_text / dt, by autograd on leaf copies.
    f_t = prob.teacher_feats.clone().requires_grad_(True)
    loss_t = F.binary_cross_entropy_with_logits(prob.teacher_head(f_t).squeeze(1), y)
    (g_t,) = torch.autograd.grad(loss_t, f_t)
    t = prob.text_feats.clone().requires_grad_(True)
    (g_x,) = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(prob.text_head(t).squeeze(1), y), t)
    b = torch.minimum(g_t, torch.zeros_like(g_t))
    r = torch.relu(g_x)
    h = r / (r.norm(dim=1, keepdim=True) + EPS)

    def surgery(grad):
        return grad - (grad * h).sum(dim=1, keepdim=True) * h

    f = prob.net(prob.x)
    task_input = f
    if project and variant == "published":
        f.register_hook(surgery)
    elif project:
        task_input = f * 1.0  # a separate node whose gradient is the task gradient alone
        task_input.register_hook(surgery)
    loss_img = F.binary_cross_entropy_with_logits(prob.student_head(task_input).squeeze(1), y)
    loss_text = F.binary_cross_entropy_with_logits(prob.text_head(prob.text_feats).squeeze(1), y)
    loss = loss_img + loss_text
    if align:
        loss = loss + lam * (f * b).sum() / batch
    loss.backward()
    return prob.grads(), h


def assert_grads_close(got, want, rtol=1e-10, atol=1e-14):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


def max_rel_diff(a, b):
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b))


def feature_grad(prob, **kwargs):
    kwargs.setdefault("backend", "reference")
    feats = prob.net(prob.x).detach().requires_grad_(True)
    out = dgs_objective(feats, prob.teacher_feats, prob.text_feats, prob.labels,
                        prob.student_head, prob.teacher_head, prob.text_head, eps=EPS, **kwargs)
    out.total.backward()
    return feats.grad, out
