"""Stage 2 reads the harmful direction only for layer surgery: in the feature modes the fused
objective skips writing its B x D rows, and the trainer must not form them (DGSLoss.harmful)."""
import pytest

from dgsnet.surgery.backends import extension, fused
from dgsnet.train import TrainConfig, train_dgs, train_teacher
from tests.train.toy_data import ToyDataset

BASE = dict(model="dgs-tiny", pretrained=None, workers=0, lr=2e-3, teacher_lr=2e-2, log_every=1,
            ckpt_every=100, epochs=1, batch_size=8, backend="cpp")

pytestmark = pytest.mark.skipif(not extension.available(), reason="dgsnet._C not built")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("harmful") / "teacher")
    train_teacher(TrainConfig(**BASE, out=out, teacher_epochs=1), ToyDataset(24))
    return out


@pytest.mark.parametrize("surgery", ["none", "feature", "layer", "both"])
def test_the_rows_are_formed_only_where_layer_surgery_reads_them(tmp_path, teacher, surgery,
                                                                 monkeypatch):
    formed = []
    real = fused.harmful_rows
    monkeypatch.setattr(fused, "harmful_rows", lambda *a: formed.append(1) or real(*a))
    train_dgs(TrainConfig(**BASE, out=str(tmp_path / "run"), teacher=teacher, surgery=surgery,
                          max_steps=2), ToyDataset(24))
    # layer and both get the rows from the kernel; none and feature never read them
    assert formed == []
