"""dgs_objective against an independent formulation of docs/method.md#2-the-stage-2-objective.

The independent formulation below uses autograd for every gradient the
design names (g_T = dL_T/df_T, g_X = dL_text/dt) and a tensor hook on the
features for the surgery. Parity is measured on the parameters of a small
real module that produces the features, not on the features alone.
"""
import pytest
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
    prob.zero_grad()
    feats = prob.net(prob.x)
    out = dgs_objective(feats, prob.teacher_feats, prob.text_feats, prob.labels,
                        prob.student_head, prob.teacher_head, prob.text_head, eps=EPS, **kwargs)
    out.total.backward()
    teacher_grads = [p.grad for p in prob.teacher_head.parameters()]
    return out, prob.grads(), teacher_grads


def independent_grads(prob, lam=0.2, project=True, variant="published", align=True):
    """docs/method.md#2-the-stage-2-objective written out literally, with autograd.grad and a feature hook."""
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


@pytest.mark.parametrize("batch,dim", [(1, 3), (5, 7), (33, 19)])
@pytest.mark.parametrize("variant", ["published", "paper"])
def test_parity_with_independent_formulation(batch, dim, variant):
    prob = Problem(batch=batch, dim=dim, seed=batch * 100 + dim)
    _, got, teacher_grads = objective_grads(prob, variant=variant)
    want, _ = independent_grads(prob, variant=variant)
    assert_grads_close(got, want)
    assert all(g is None for g in teacher_grads), "the teacher head must get no gradient"


def test_parity_catches_dropped_projection_and_misscaled_alignment():
    """The parity check is sensitive: a formulation without projection or with a
    doubled lambda differs well beyond the tolerance."""
    prob = Problem(batch=9, dim=13, seed=3)
    _, got, _ = objective_grads(prob)
    no_projection, _ = independent_grads(prob, project=False)
    double_lambda, _ = independent_grads(prob, lam=0.4)
    assert max_rel_diff(got, no_projection) > 1e-4
    assert max_rel_diff(got, double_lambda) > 1e-4


def test_loss_values_match_definitions():
    prob = Problem(batch=6, dim=5, seed=7)
    out, _, _ = objective_grads(prob, lam=0.3)
    y = prob.labels
    f = prob.net(prob.x).detach()
    img = F.binary_cross_entropy_with_logits(prob.student_head(f).squeeze(1), y)
    text = F.binary_cross_entropy_with_logits(prob.text_head(prob.text_feats).squeeze(1), y)
    teacher = F.binary_cross_entropy_with_logits(prob.teacher_head(prob.teacher_feats).squeeze(1), y)
    f_t = prob.teacher_feats.clone().requires_grad_(True)
    (g_t,) = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(prob.teacher_head(f_t).squeeze(1), y), f_t)
    align = (f * g_t.clamp(max=0)).sum() / y.shape[0]
    for got, want in [(out.img, img), (out.text, text), (out.teacher, teacher), (out.align, align),
                      (out.total, img + text + 0.3 * align)]:
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-12, atol=1e-14)
    terms = out.terms()
    assert set(terms) == {"total", "img", "text", "align", "teacher"}
    assert terms["total"] == pytest.approx(out.total.item())


def feature_grad(prob, **kwargs):
    feats = prob.net(prob.x).detach().requires_grad_(True)
    out = dgs_objective(feats, prob.teacher_feats, prob.text_feats, prob.labels,
                        prob.student_head, prob.teacher_head, prob.text_head, eps=EPS, **kwargs)
    out.total.backward()
    return feats.grad, out


def test_surgical_gradient_is_orthogonal_to_harmful_direction():
    """<G_tilde, h> = <G, h> (1 - ||h||^2): zero up to the eps in h's normaliser."""
    prob = Problem(batch=17, dim=23, seed=11)
    grad, out = feature_grad(prob)
    plain, _ = feature_grad(prob, mode="layer")  # same loss, no feature projection
    h = out.harmful
    assert (h.norm(dim=1) > 0).all()
    before = (plain * h).sum(dim=1)
    after = (grad * h).sum(dim=1)
    torch.testing.assert_close(after, before * (1 - (h * h).sum(dim=1)), rtol=1e-8, atol=1e-20)
    assert before.abs().min().item() > 1e-6  # the projection had something to remove
    assert (after.abs() < 1e-3 * before.abs()).all()


def test_rows_with_no_harmful_direction_are_not_projected():
    # w_X < 0 everywhere: for y=0, g_X = sigmoid(z)*w_X/B < 0, so relu(g_X) = 0.
    prob = Problem(batch=8, dim=6, labels=[0, 1, 0, 1, 0, 0, 1, 0], seed=5)
    with torch.no_grad():
        prob.text_head.weight.copy_(-prob.text_head.weight.abs() - 0.1)
    grad, out = feature_grad(prob)
    plain, _ = feature_grad(prob, mode="layer")
    real = prob.labels == 0
    assert out.harmful[real].abs().max().item() == 0.0
    assert (out.harmful[~real].norm(dim=1) > 0.99).all()
    torch.testing.assert_close(grad[real], plain[real], rtol=0, atol=0)
    assert (grad[~real] - plain[~real]).abs().max().item() > 1e-6


def test_all_rows_zero_harmful_direction_equals_unprojected():
    prob = Problem(batch=4, dim=5, labels=[0, 0, 0, 0], seed=2)
    with torch.no_grad():
        prob.text_head.weight.copy_(-prob.text_head.weight.abs() - 0.1)
    grad, out = feature_grad(prob)
    plain, _ = feature_grad(prob, mode="layer")
    assert out.harmful.abs().max().item() == 0.0
    torch.testing.assert_close(grad, plain, rtol=0, atol=0)


def test_lambda_zero_removes_alignment():
    prob = Problem(batch=7, dim=9, seed=4)
    _, got, _ = objective_grads(prob, lam=0.0)
    want, _ = independent_grads(prob, align=False)
    assert_grads_close(got, want)
    _, with_align, _ = objective_grads(prob, lam=0.2)
    assert max_rel_diff(with_align, got) > 1e-4


def test_mode_none_is_plain_fine_tuning():
    prob = Problem(batch=7, dim=9, seed=8)
    out, got, _ = objective_grads(prob, mode="none")
    want, _ = independent_grads(prob, project=False, align=False)
    assert_grads_close(got, want)
    assert out.align.item() == 0.0


def test_mode_layer_has_alignment_but_no_feature_projection():
    prob = Problem(batch=7, dim=9, seed=9)
    _, got, _ = objective_grads(prob, mode="layer")
    want, _ = independent_grads(prob, project=False)
    assert_grads_close(got, want)
    _, both, _ = objective_grads(prob, mode="both")
    feature_want, _ = independent_grads(prob)
    assert_grads_close(both, feature_want)


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_batches(label):
    prob = Problem(batch=6, dim=8, labels=[label] * 6, seed=20 + label)
    _, got, _ = objective_grads(prob)
    want, _ = independent_grads(prob)
    assert_grads_close(got, want)


def test_the_two_orderings_differ_by_the_alignment_component():
    """published - paper = -(lam/B) <b_i, h_i> h_i per row, exactly."""
    prob = Problem(batch=10, dim=12, seed=13)
    lam = 0.2
    published, out = feature_grad(prob, lam=lam, variant="published")
    paper, _ = feature_grad(prob, lam=lam, variant="paper")
    y = prob.labels
    z_t = prob.teacher_head(prob.teacher_feats).squeeze(1).detach()
    g_t = (torch.sigmoid(z_t) - y)[:, None] * prob.teacher_head.weight.detach() / y.shape[0]
    a = lam / y.shape[0] * g_t.clamp(max=0)
    h = out.harmful
    expected = -(a * h).sum(dim=1, keepdim=True) * h
    torch.testing.assert_close(published - paper, expected, rtol=1e-10, atol=1e-16)
    assert expected.abs().max().item() > 1e-8


def test_half_precision_features_get_float32_surgery():
    prob = Problem(batch=5, dim=7, seed=30, dtype=torch.float32)
    feats = prob.net(prob.x).detach().to(torch.bfloat16).requires_grad_(True)
    out = dgs_objective(feats, prob.teacher_feats.bfloat16(), prob.text_feats.bfloat16(),
                        prob.labels, prob.student_head, prob.teacher_head, prob.text_head)
    out.total.backward()
    assert out.total.dtype == torch.float32 and out.harmful.dtype == torch.float32
    assert feats.grad.dtype == torch.bfloat16 and torch.isfinite(feats.grad.float()).all()


@pytest.mark.parametrize("backend", ["cpp", "auto"])
def test_cpp_backend_matches_reference(backend):
    pytest.importorskip("dgsnet._C", reason="dgsnet._C is not built")
    prob = Problem(batch=33, dim=19, seed=40)
    _, want, _ = objective_grads(prob)
    _, got, _ = objective_grads(prob, backend=backend)
    assert_grads_close(got, want)


class TestValidation:
    def setup_method(self):
        self.prob = Problem(batch=4, dim=5)
        self.feats = self.prob.net(self.prob.x)

    def call(self, **over):
        p = self.prob
        args = dict(student_feats=self.feats, teacher_feats=p.teacher_feats, text_feats=p.text_feats,
                    labels=p.labels, student_head=p.student_head, teacher_head=p.teacher_head,
                    text_head=p.text_head)
        args.update(over)
        return dgs_objective(**args)

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="teacher_feats has shape"):
            self.call(teacher_feats=self.prob.teacher_feats[:3])

    def test_not_a_matrix(self):
        with pytest.raises(ValueError, match=r"must be \(B, D\)"):
            self.call(student_feats=self.feats[0])

    def test_labels_out_of_range(self):
        with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
            self.call(labels=torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64))

    def test_labels_shape(self):
        with pytest.raises(ValueError, match="labels must have shape"):
            self.call(labels=self.prob.labels[:, None])

    def test_integer_features(self):
        with pytest.raises(TypeError, match="floating-point"):
            self.call(text_feats=torch.zeros(4, 5, dtype=torch.long))

    def test_wrong_head(self):
        with pytest.raises(ValueError, match=r"text_head must be nn.Linear\(5, 1\)"):
            self.call(text_head=nn.Linear(5, 2).double())

    def test_bad_mode_variant_backend(self):
        with pytest.raises(ValueError, match="mode="):
            self.call(mode="features")
        with pytest.raises(ValueError, match="variant="):
            self.call(variant="figure")
        with pytest.raises(ValueError, match="backend="):
            self.call(backend="fast")
        with pytest.raises(ValueError, match="lam"):
            self.call(lam=float("nan"))

    def test_integer_and_bool_labels_accepted(self):
        want = self.call().total.item()
        assert self.call(labels=self.prob.labels.long()).total.item() == pytest.approx(want)
        assert self.call(labels=self.prob.labels.bool()).total.item() == pytest.approx(want)
