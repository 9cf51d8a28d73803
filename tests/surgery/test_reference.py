"""The specification, dgsnet/surgery/reference.py, against an independent formulation of
docs/method.md section 2 (tests/surgery/independent.py), and its per-layer projection
(section 3). backend="reference" (named here; the default is "auto") runs reference.objective.
"""
import pytest
import torch
import torch.nn.functional as F

from dgsnet.surgery import dgs_objective, reference
from tests.surgery.independent import (Problem, assert_grads_close, feature_grad, independent_grads,
                                       max_rel_diff, objective_grads)


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
                        prob.labels, prob.student_head, prob.teacher_head, prob.text_head,
                        backend="reference")
    out.total.backward()
    assert out.total.dtype == torch.float32 and out.harmful.dtype == torch.float32
    assert feats.grad.dtype == torch.bfloat16 and torch.isfinite(feats.grad.float()).all()


def test_reference_projection_makes_each_gradient_orthogonal_to_its_direction():
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(6, 7), (7, 6), (5,)]]
    dirs = [torch.randn(g.shape, generator=gen, dtype=torch.float64) for g in grads]
    dirs[2].zero_()  # a zero direction leaves its gradient as it was
    before = [g.clone() for g in grads]
    reference.project_params_(grads, dirs, eps=1e-30)
    for g, u in zip(grads[:2], dirs[:2]):
        assert abs((g * u).sum().item()) < 1e-12 * g.norm().item() * u.norm().item()
    torch.testing.assert_close(grads[2], before[2], rtol=0, atol=0)
