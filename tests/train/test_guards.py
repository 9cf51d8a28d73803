"""No silently wrong "finished" run: bad step counts, nothing trainable, resumes with other settings."""
import json
import os

import pytest
import torch

from dgsnet.cli import main
from dgsnet.train import TrainConfig, train_dgs, train_teacher
from dgsnet.models import checkpoint as ckpt
from dgsnet.train import resume as resume_state
from tests.train.toy_data import DiesAfter, Interrupt, ToyDataset, Unreadable

BASE = dict(model="dgs-tiny", pretrained=None, batch_size=4, workers=0, lr=2e-3, teacher_lr=2e-2,
            log_every=1, ckpt_every=2, teacher_epochs=1, epochs=1)


@pytest.mark.parametrize("flag,value", [("teacher_epochs", 0), ("teacher_epochs", -2), ("epochs", 0),
                                        ("max_steps", 0), ("max_steps", -3)])
def test_non_positive_epochs_and_steps_are_refused(flag, value):
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**{**BASE, flag: value})


def test_cli_names_the_bad_step_count_in_one_line(tmp_path, capsys):
    code = main(["train-teacher", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--max-steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "max_steps must be >= 1" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("surgery", ["layer", "both"])
def test_compile_with_layer_surgery_is_refused_before_any_model_is_built(surgery, tmp_path):
    out = tmp_path / "dgs"
    with pytest.raises(ValueError, match=f"--compile does not work with --surgery {surgery}"):
        train_dgs(TrainConfig(**BASE, out=str(out), teacher=str(tmp_path / "no-teacher"), surgery=surgery,
                              compile=True), ToyDataset(8))
    assert not out.exists()


def test_a_stage_without_one_readable_batch_is_an_error_not_a_finished_model(tmp_path):
    out = str(tmp_path / "t")
    with pytest.raises(RuntimeError, match="ran no training step"):
        train_teacher(TrainConfig(**BASE, out=out), Unreadable(16))
    assert not os.path.exists(os.path.join(out, ckpt.META_FILE))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A stage-1 run killed after its step-2 checkpoint (24 images / 4 = 6 steps an epoch)."""
    data = ToyDataset(24)
    out = str(tmp_path_factory.mktemp("cut") / "run")
    with pytest.raises(Interrupt):
        train_teacher(TrainConfig(**BASE, out=out), DiesAfter(data, 4 * 3 + 2))
    assert json.load(open(os.path.join(out, "resume", "state.json")))["position"]["step"] == 2
    return data, out


def test_resume_with_other_result_settings_is_refused_and_changes_nothing(interrupted):
    data, out = interrupted
    before = open(os.path.join(out, "config.yaml")).read()
    for change in ({"teacher_lr": 5e-3}, {"batch_size": 6}, {"lora_rank": 4}):
        with pytest.raises(ValueError, match=f"{next(iter(change))}: run .*now"):
            train_teacher(TrainConfig(**{**BASE, **change}, out=out), data, resume=True)
    assert open(os.path.join(out, "config.yaml")).read() == before
    assert resume_state.find_resume(out) and not os.path.exists(os.path.join(out, ckpt.META_FILE))


def test_allowed_config_change_takes_effect_and_is_logged(interrupted, tmp_path):
    import shutil

    data, cut = interrupted
    out = str(tmp_path / "run")
    shutil.copytree(cut, out)
    model = train_teacher(TrainConfig(**{**BASE, "teacher_lr": 5e-3}, out=out), data, resume=True,
                          allow_changes=True)
    with open(os.path.join(out, "log.jsonl")) as fh:
        events = [json.loads(line) for line in fh]
    at = next(i for i, e in enumerate(events) if e["event"] == "config_change")
    assert events[at]["changes"]["teacher_lr"] == {"run": 2e-2, "now": 5e-3}
    lrs = [e["lr"] for e in events[at:] if e["event"] == "train"]
    assert lrs and all(lr == pytest.approx(5e-3) for lr in lrs)  # the optimizer uses the new lr
    assert TrainConfig.load(os.path.join(out, "config.yaml")).teacher_lr == 5e-3
    assert torch.isfinite(model.teacher_head.weight).all()


def test_runtime_only_settings_may_change_on_resume(interrupted, tmp_path):
    import shutil

    data, cut = interrupted
    out = str(tmp_path / "run")
    shutil.copytree(cut, out)
    train_teacher(TrainConfig(**{**BASE, "log_every": 3, "backend": "reference"}, out=out), data, resume=True)
    assert ckpt.read_metadata(out)["step"] == 6
