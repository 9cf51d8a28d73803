"""--val-data: validation passes, <out>/best/, --early-stop, and their state across --resume."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dgsnet.cli import main
from dgsnet.models import BackboneSpec, DGSNetModel, LoRAConfig
from dgsnet.models import checkpoint as ckpt
from dgsnet.train import TrainConfig, train_dgs, train_teacher
from tests.train.toy_data import DiesAfter, Interrupt, ToyDataset

BASE = dict(model="dgs-tiny", pretrained=None, batch_size=8, workers=0, lr=2e-3, teacher_lr=2e-2,
            log_every=1, ckpt_every=2, lora_dropout=0.5)


def write_val_set(root, per_class=4, size=64):
    """root/{0_real,1_fake}/*.png: smooth images vs the same with a checkerboard on top."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    checker = ((yy + xx) % 2)[..., None] * 80
    for i in range(per_class):
        smooth = np.kron(rng.integers(40, 200, (4, 4, 3)), np.ones((size // 4, size // 4, 1)))
        for label, pixels in (("0_real", smooth), ("1_fake", np.clip(smooth + checker - 40, 0, 255))):
            os.makedirs(os.path.join(root, label), exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(root, label, f"{i}.png"))
    return str(root)


@pytest.fixture(scope="module")
def data():
    return ToyDataset(32)


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    return write_val_set(tmp_path_factory.mktemp("val"))


def records(run_dir, event):
    with open(os.path.join(run_dir, "log.jsonl")) as fh:
        return [r for r in map(json.loads, fh) if r["event"] == event]


def expected_stop(values, metric, patience):
    """The step at which --early-stop should end a run, from the logged validation values."""
    best, since = None, 0
    for step, value in values:
        if best is None or (value < best if metric == "loss" else value > best):
            best, since = value, 0
        else:
            since += 1
        if since >= patience:
            return step
    return None


def test_best_is_the_best_logged_validation_and_the_final_weights_are_untouched(tmp_path, data, val_dir):
    cfg = dict(BASE, teacher_epochs=2, val_data=val_dir, val_every=2, best_metric="loss")
    out = str(tmp_path / "t")
    train_teacher(TrainConfig(**cfg, out=out), data)
    vals = records(out, "val")
    assert [r["step"] for r in vals] == [2, 4, 6, 8]
    assert all(r["val_n"] == 8 and 0 <= r["val_acc"] <= 1 for r in vals)
    best_meta = ckpt.read_metadata(os.path.join(out, "best"))
    want = min(vals, key=lambda r: r["val_loss"])
    assert best_meta["best"]["metric"] == "loss"
    assert best_meta["best"]["value"] == pytest.approx(want["val_loss"], rel=1e-12)
    assert best_meta["step"] == best_meta["best"]["step"] == want["step"]
    assert os.path.isfile(os.path.join(out, "best", "config.yaml"))
    # validating changes nothing about training: the same run without --val-data ends identically
    plain = str(tmp_path / "plain")
    train_teacher(TrainConfig(**dict(BASE, teacher_epochs=2), out=plain), data)
    a, b = ckpt.read_model_tensors(out), ckpt.read_model_tensors(plain)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_stage2_best_checkpoint_evaluates_and_validation_keeps_the_trajectory(tmp_path, data, val_dir, capsys):
    teacher = str(tmp_path / "teacher")
    model = DGSNetModel(BackboneSpec("dgs-tiny", None, init_seed=0), LoRAConfig())
    ckpt.write_model(teacher, model, 1, {"norm": "imagenet"}, step=1)
    cfg = dict(BASE, teacher=teacher, epochs=1)
    out, plain = str(tmp_path / "v"), str(tmp_path / "p")
    train_dgs(TrainConfig(**cfg, out=out, val_data=val_dir), data)  # validates at the epoch's end
    train_dgs(TrainConfig(**cfg, out=plain), data)
    a, b = ckpt.read_model_tensors(out), ckpt.read_model_tensors(plain)
    for k in a:  # stage 2 has LoRA dropout: validation must not move the random stream
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    vals = records(out, "val")
    assert [r["step"] for r in vals] == [4] and vals[0]["best"] is True
    best = os.path.join(out, "best")
    assert ckpt.read_metadata(best)["best"]["value"] == pytest.approx(vals[0]["val_ap"], rel=1e-12)
    capsys.readouterr()
    assert main(["eval", "--ckpt", best, "--data", val_dir, "--out", str(tmp_path / "eval")]) == 0
    assert os.path.isfile(tmp_path / "eval" / "eval.json")


def _stalled(out, val_dir):
    """A stage-1 run whose lr is too small to change its accuracy: every validation after the
    first is 'no improvement'."""
    return TrainConfig(**dict(BASE, teacher_lr=1e-12, teacher_epochs=3, val_data=val_dir, val_every=1,
                              best_metric="acc", early_stop=2), out=out)


def test_early_stop_ends_the_run_at_the_right_validation(tmp_path, data, val_dir):
    out = str(tmp_path / "s")
    train_teacher(_stalled(out, val_dir), data)
    vals = [(r["step"], r["val_acc"]) for r in records(out, "val")]
    stop = expected_stop(vals, "acc", 2)
    assert stop == 3 and vals[-1][0] == 3  # 12 steps were planned
    assert ckpt.read_metadata(out)["step"] == 3  # finished normally: the final files are written
    assert not os.path.exists(os.path.join(out, "resume"))
    (early,) = records(out, "early_stop")
    assert early["step"] == 3 and early["best_step"] == 1
    assert "early stop at step 3" in open(os.path.join(out, "log.txt")).read()


def test_best_value_and_patience_survive_resume(tmp_path, data, val_dir):
    cut = str(tmp_path / "cut")
    with pytest.raises(Interrupt):  # dies inside step 3, after the checkpoint of step 2
        train_teacher(_stalled(cut, val_dir), DiesAfter(data, 20))
    state = json.load(open(os.path.join(cut, "resume", "state.json")))
    assert state["validation"]["since"] == 1 and state["validation"]["step"] == 1
    train_teacher(_stalled(cut, val_dir), data, resume=True)
    # without the restored patience the resumed run would count again and stop at step 5
    assert ckpt.read_metadata(cut)["step"] == 3
    assert records(cut, "early_stop")[-1]["step"] == 3
    assert ckpt.read_metadata(os.path.join(cut, "best"))["best"]["step"] == 1


@pytest.mark.parametrize("case", ["missing", "layout", "one_class"])
def test_bad_val_data_fails_before_the_model_is_built(case, tmp_path, val_dir, capsys):
    val = tmp_path / "val"
    if case == "layout":
        (val / "images").mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(val / "images" / "a.png")
    elif case == "one_class":
        (val / "0_real").mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(val / "0_real" / "a.png")
    out = tmp_path / "run"
    code = main(["train-teacher", "--model", "dgs-tiny", "--pretrained", "none", "--data", val_dir,
                 "--val-data", str(val), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "--val-data" in err and str(val) in err, err
    assert not out.exists()  # no run folder, no config.yaml: nothing ran


@pytest.mark.parametrize("flag", [["--best-metric", "auc"], ["--early-stop", "3"]])
def test_selection_flags_without_val_data_are_an_error(flag, tmp_path, val_dir, capsys):
    out = tmp_path / "run"
    code = main(["train-teacher", "--data", val_dir, "--out", str(out), *flag])
    err = capsys.readouterr().err
    assert code == 2 and flag[0] in err and "--val-data" in err, err
    assert not out.exists()


def test_tracker_maximises_minimises_and_ignores_nan():
    from dgsnet.train.validation import BestTracker

    ap = BestTracker("ap")
    assert [ap.update({"ap": v}, s) for s, v in enumerate([0.5, float("nan"), 0.7, 0.6])] == [True, False, True, False]
    assert (ap.value, ap.step, ap.since) == (0.7, 2, 1)
    loss = BestTracker("loss")
    assert [loss.update({"loss": v}, s) for s, v in enumerate([0.7, 0.6, 0.65])] == [True, True, False]
    # resumed for the same metric and set it continues; another metric or set starts over
    assert BestTracker.from_state(ap.state(), "ap", None).value == 0.7
    assert BestTracker.from_state(ap.state(), "auc", None).value is None
    assert BestTracker.from_state(ap.state(), "ap", "other/val").value is None
