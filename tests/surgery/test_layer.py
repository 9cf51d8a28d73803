"""Per-layer (parameter-space) surgery, docs/method.md section 3: dgsnet.surgery.layer,
and training with --surgery layer and both. (Its projection against the per-tensor
reference: test_reference.py and backends/test_project_params.py.)"""
import json
import os

import pytest
import torch

from dgsnet.models import BackboneSpec, DGSNetModel, LoRAConfig, lora_modules
from dgsnet.surgery import dgs_objective
from dgsnet.surgery.layer import LayerSurgery
from dgsnet.train import TrainConfig, train_dgs, train_teacher
from dgsnet.models import checkpoint as ckpt
from tests.train.toy_data import ToyDataset

BASE = dict(model="dgs-tiny", pretrained=None, batch_size=8, workers=0, lr=2e-3, teacher_lr=2e-2,
            log_every=1, ckpt_every=2, lora_dropout=0.5)


def tiny_float64_model():
    m = DGSNetModel(BackboneSpec("dgs-tiny", None), LoRAConfig(dropout=0.0)).double()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in lora_modules(m.visual):
            for _, a, b in mod.lora_pairs():
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * 0.05)
    m.set_stage(2)
    return m


def harmful_sum(model, images, harmful):
    return (model.student_features(images) * harmful).sum()


def test_projected_update_leaves_harmful_alignment_unchanged_to_first_order():
    torch.manual_seed(0)
    model = tiny_float64_model()
    images = torch.randn(4, 3, 224, 224, dtype=torch.float64)
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    teacher = model.teacher_features(images)
    text = torch.randn(4, model.dim, dtype=torch.float64)
    feats = model.student_features(images)
    out = dgs_objective(feats, teacher, text, labels, model.student_head, model.teacher_head,
                        model.text_head, mode="layer")
    params = model.lora_parameters()
    surgery = LayerSurgery(params, eps=1e-30)
    heads = [*model.student_head.parameters(), *model.text_head.parameters()]
    surgery.backward(feats, out.total, heads, out.harmful, with_directions=True)
    surgery.finish_directions()
    raw = [p.grad.clone() for p in params]
    surgery.project_()
    harmful = out.harmful.detach()
    with torch.no_grad():
        phi0 = harmful_sum(model, images, harmful)
        checked = 0
        for p, g_raw in zip(params, raw):
            if g_raw.abs().max() == 0:
                continue
            step = 1e-4 / g_raw.norm()
            changes = []
            for g in (g_raw, p.grad):
                p.sub_(step * g)
                changes.append((harmful_sum(model, images, harmful) - phi0).abs().item())
                p.add_(step * g)
            unprojected, projected = changes
            assert unprojected > 1e-9, "this tensor's update moved the features along h"
            assert projected < 1e-3 * unprojected
            checked += 1
    assert checked == len(params)


def test_batched_backward_equals_two_separate_backward_passes():
    model = tiny_float64_model()
    images = torch.randn(3, 3, 224, 224, dtype=torch.float64)
    harmful = torch.randn(3, model.dim, dtype=torch.float64)
    params = model.lora_parameters()
    feats = model.student_features(images)
    loss = model.student_head(feats).square().sum()
    want_g = torch.autograd.grad(loss, params, retain_graph=True)
    want_u = torch.autograd.grad(feats, params, grad_outputs=harmful, retain_graph=True)
    surgery = LayerSurgery(params)
    surgery.backward(feats, loss, list(model.student_head.parameters()), harmful, with_directions=True)
    surgery.finish_directions()
    for p, g, u, got_u in zip(params, want_g, want_u, surgery.directions):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(got_u, u, rtol=1e-10, atol=1e-14)
    assert model.student_head.weight.grad is not None


@pytest.fixture(scope="module")
def data():
    return ToyDataset(48)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, data):
    out = str(tmp_path_factory.mktemp("teacher"))
    train_teacher(TrainConfig(**BASE, out=out, teacher_epochs=2), data)
    return out


@pytest.mark.parametrize("surgery", ["layer", "both"])
def test_layer_modes_train(tmp_path, data, teacher_dir, surgery):
    out = str(tmp_path / surgery)
    train_dgs(TrainConfig(**BASE, out=out, teacher=teacher_dir, epochs=3, surgery=surgery), data)
    with open(os.path.join(out, "log.jsonl")) as fh:
        losses = [json.loads(line)["loss_img"] for line in fh if '"train"' in line]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_refresh_every_k_reuses_directions(data, teacher_dir, tmp_path, monkeypatch):
    seen = []
    real = LayerSurgery.project_

    def spy(self):
        seen.append((self.refreshes, [id(u) for u in self.directions]))
        return real(self)

    monkeypatch.setattr(LayerSurgery, "project_", spy)
    train_dgs(TrainConfig(**BASE, out=str(tmp_path / "k3"), teacher=teacher_dir, surgery="layer",
                          layer_refresh=3, max_steps=5), data)
    assert [r for r, _ in seen] == [1, 1, 1, 2, 2]
    assert seen[0][1] == seen[2][1] and seen[3][1] == seen[4][1] and seen[0][1] != seen[3][1]


def test_resume_with_refresh_every_k_is_exact(tmp_path, data, teacher_dir):
    cfg = dict(BASE, teacher=teacher_dir, epochs=1, surgery="both", layer_refresh=3, ckpt_every=2,
               batch_size=4)
    full = str(tmp_path / "full")
    train_dgs(TrainConfig(**cfg, out=full), data)
    cut = str(tmp_path / "cut")

    class Dies(torch.utils.data.Dataset):
        captions = data.captions
        fetched = 0

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            Dies.fetched += 1
            if Dies.fetched > 4 * 5:  # dies in step 6: last checkpoint at step 4, between refreshes
                raise KeyboardInterrupt
            return data[i]

    with pytest.raises(KeyboardInterrupt):
        train_dgs(TrainConfig(**cfg, out=cut), Dies())
    train_dgs(TrainConfig(**cfg, out=cut), data, resume=True)
    want, got = ckpt.read_model_tensors(full), ckpt.read_model_tensors(cut)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
