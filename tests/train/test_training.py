"""The two training stages on a tiny random open_clip model and a learnable in-memory set."""
import json
import os

import pytest
import torch

from dgsnet.models import DGSNetModel
from dgsnet.train import TrainConfig, train_dgs, train_teacher
from dgsnet.models import checkpoint as ckpt
from tests.train.toy_data import DiesAfter, Interrupt, ToyDataset

BASE = dict(model="dgs-tiny", pretrained=None, batch_size=8, workers=0, lr=2e-3, teacher_lr=2e-2,
            log_every=1, ckpt_every=2, lora_dropout=0.5)


@pytest.fixture(scope="module")
def data():
    return ToyDataset(48)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, data):
    out = str(tmp_path_factory.mktemp("teacher"))
    train_teacher(TrainConfig(**BASE, out=out, teacher_epochs=4), data)
    return out


def train_losses(run_dir, key):
    with open(os.path.join(run_dir, "log.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    return [r[key] for r in rows if r["event"] == "train"]


def test_stage1_reduces_the_teacher_loss(teacher_dir):
    losses = train_losses(teacher_dir, "loss_teacher")
    assert len(losses) == 4 * 6
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    meta = ckpt.read_metadata(teacher_dir)
    assert meta["stage"] == 1 and meta["backbone"]["model"] == "dgs-tiny"
    assert not os.path.exists(os.path.join(teacher_dir, "resume"))


@pytest.mark.parametrize("surgery", ["none", "feature"])
def test_stage2_reduces_the_task_loss_and_records_every_term(tmp_path, data, teacher_dir, surgery):
    out = str(tmp_path / "dgs")
    train_dgs(TrainConfig(**BASE, out=out, teacher=teacher_dir, epochs=3, surgery=surgery), data)
    losses = train_losses(out, "loss_img")
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    with open(os.path.join(out, "log.jsonl")) as fh:
        row = [json.loads(line) for line in fh if '"train"' in line][0]
    for key in ("loss_total", "loss_img", "loss_text", "loss_align", "loss_teacher", "lr",
                "images_per_s", "memory_mb"):
        assert key in row
    # the teacher head is the stage-1 one, untouched by stage 2
    teacher = ckpt.read_model_tensors(teacher_dir)
    final = ckpt.read_model_tensors(out)
    torch.testing.assert_close(final["teacher_head.weight"], teacher["teacher_head.weight"], rtol=0, atol=0)
    assert (final["student_head.weight"] - teacher["student_head.weight"]).abs().max() > 0
    assert os.path.isfile(os.path.join(out, "config.yaml"))


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path, data, teacher_dir, accum):
    cfg = dict(BASE, teacher=teacher_dir, epochs=2, accum=accum, batch_size=4, ckpt_every=2)
    full = str(tmp_path / "full")
    train_dgs(TrainConfig(**cfg, out=full), data)
    cut = str(tmp_path / "cut")
    # 48 images / 4 = 12 batches an epoch; dying inside epoch 1 leaves a mid-epoch checkpoint.
    with pytest.raises(Interrupt):
        train_dgs(TrainConfig(**cfg, out=cut), DiesAfter(data, 4 * 19))
    state = json.load(open(os.path.join(cut, "resume", "state.json")))
    assert state["position"]["epoch"] == 1 and state["position"]["batch"] > 0
    with pytest.raises(FileExistsError, match="--resume"):
        train_dgs(TrainConfig(**cfg, out=cut), data)
    train_dgs(TrainConfig(**cfg, out=cut), data, resume=True)
    want, got = ckpt.read_model_tensors(full), ckpt.read_model_tensors(cut)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_stage2_refuses_a_teacher_from_another_backbone(tmp_path, data, teacher_dir):
    cfg = TrainConfig(**dict(BASE, model="dgs-small"), out=str(tmp_path / "x"), teacher=teacher_dir)
    with pytest.raises(ValueError, match="another backbone.*model: checkpoint 'dgs-tiny' vs this run 'dgs-small'"):
        train_dgs(cfg, data)
    cfg = TrainConfig(**dict(BASE, init_seed=7), out=str(tmp_path / "y"), teacher=teacher_dir)
    with pytest.raises(ValueError, match="visual_fingerprint"):
        train_dgs(cfg, data)


def test_stage2_refuses_a_stage2_checkpoint_as_teacher(tmp_path, data, teacher_dir):
    out = str(tmp_path / "s2")
    train_dgs(TrainConfig(**BASE, out=out, teacher=teacher_dir, max_steps=1), data)
    with pytest.raises(ValueError, match="stage-2 checkpoint"):
        train_dgs(TrainConfig(**BASE, out=str(tmp_path / "s3"), teacher=out), data)


def test_strict_loading_names_missing_and_unexpected_keys(teacher_dir):
    model = DGSNetModel(TrainConfig(**BASE).backbone(), TrainConfig(**BASE).lora())
    state = ckpt.read_model_tensors(teacher_dir)
    state.pop("student_head.bias")
    state["visual.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['student_head.bias'\].*unexpected \['visual.extra'\]"):
        model.load_trained_state_dict(state, source="x")
    with pytest.raises(FileNotFoundError, match="not a dgsnet checkpoint"):
        ckpt.read_metadata(os.path.dirname(teacher_dir))


def test_text_encoder_runs_once_per_distinct_caption(tmp_path, data, teacher_dir, monkeypatch):
    encoded = []
    real = DGSNetModel.encode_captions

    def counting(self, captions):
        encoded.extend(captions)
        return real(self, captions)

    monkeypatch.setattr(DGSNetModel, "encode_captions", counting)
    train_dgs(TrainConfig(**BASE, out=str(tmp_path / "c"), teacher=teacher_dir, epochs=2), data)
    assert sorted(encoded) == sorted(set(data.captions))


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, data, teacher_dir):
    class Poisoned(torch.utils.data.Dataset):
        captions = data.captions

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            img, y, c, p = data[i]
            return img * float("nan"), y, c, p

    with pytest.raises(RuntimeError, match="the loss is nan at step 0.*Lower --lr"):
        train_dgs(TrainConfig(**BASE, out=str(tmp_path / "n"), teacher=teacher_dir), Poisoned())
