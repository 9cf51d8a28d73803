"""--accum k on batches of b is the same optimiser step as one batch of k*b, alignment term included."""
import pytest
import torch

from dgsnet.train import TrainConfig, train_dgs, train_teacher
from dgsnet.models import checkpoint as ckpt
from tests.train.toy_data import ToyDataset

# No dropout or flips: the two runs would draw different random masks.
BASE = dict(model="dgs-tiny", pretrained=None, workers=0, lr=2e-3, teacher_lr=2e-2, log_every=1,
            ckpt_every=100, lora_dropout=0.0, flip_prob=0.0, epochs=1, max_steps=3, lam=5.0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("accum") / "teacher")
    train_teacher(TrainConfig(**{**BASE, "max_steps": None}, out=out, batch_size=8, teacher_epochs=1),
                  ToyDataset(48))
    return out


def _weights(run):
    return ckpt.read_model_tensors(run)


@pytest.mark.parametrize("surgery", ["feature", "both"])
def test_accumulated_micro_batches_match_the_combined_batch(tmp_path, teacher, surgery):
    runs = {}
    for name, batch, accum in (("one", 8, 1), ("accum", 4, 2), ("unscaled", 4, 2)):
        cfg = TrainConfig(**BASE, out=str(tmp_path / name), teacher=teacher, surgery=surgery,
                          batch_size=batch, accum=accum)
        runs[name] = cfg.out
        if name == "unscaled":  # what --accum did before: lam and eps of the micro-batch
            cfg.lam, cfg.eps = cfg.lam * accum, cfg.eps / accum
        train_dgs(cfg, ToyDataset(48))
    one, acc, unscaled = (_weights(runs[k]) for k in ("one", "accum", "unscaled"))
    for key in one:
        torch.testing.assert_close(acc[key], one[key], rtol=1e-4, atol=2e-6, msg=key)
    # the scaling matters: the micro-batch's own lam and eps end elsewhere
    assert any(not torch.allclose(unscaled[k], one[k], rtol=1e-4, atol=2e-6) for k in one)
