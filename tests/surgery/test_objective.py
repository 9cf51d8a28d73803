"""dgs_objective: the checks of its inputs, and its dispatch to a backend."""
import pytest
import torch
from torch import nn

from dgsnet.surgery import dgs_objective
from tests.surgery.independent import Problem, assert_grads_close, objective_grads


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
