"""--report-to: parsing, the missing-package error, old `tensorboard:` configs, and the W&B calls."""
import importlib.machinery
import os
import sys
import types

import pytest
import yaml

from dgsnet.cli import build_parser, main
from dgsnet.train import TrainConfig
from dgsnet.train.config import config_from_args
from dgsnet.train.logger import RunLogger


@pytest.mark.parametrize("argv, want", [
    (["--report-to", "tensorboard,wandb"], ["tensorboard", "wandb"]),
    (["--report-to", "wandb", "tensorboard"], ["wandb", "tensorboard"]),
    (["--report-to", "none"], []),
    ([], []),
    (["--tensorboard"], ["tensorboard"]),  # the old switch, hidden but still working
])
def test_report_to_flags(argv, want):
    from dgsnet.cli.train import with_legacy_switches

    args = build_parser().parse_args(["train", *argv])
    assert with_legacy_switches(args, config_from_args(args)).report_to == want


def test_old_tensorboard_switch_is_hidden_from_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--report-to" in text and "--tensorboard" not in text


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match="'mlflow' is not a target.*tensorboard, wandb"):
        TrainConfig(report_to=["mlflow"])


@pytest.mark.parametrize("target, flag", [("wandb", ["--report-to", "wandb"]),
                                          ("tensorboard", ["--report-to", "none,tensorboard"]),
                                          ("tensorboard", ["--tensorboard"])])
def test_missing_package_fails_at_startup_naming_it(target, flag, tmp_path, capsys):
    from tests.train.test_validation import write_val_set

    data = write_val_set(tmp_path / "data", per_class=1)
    out = tmp_path / "run"
    code = main(["train-teacher", "--model", "dgs-tiny", "--pretrained", "none", "--data", data,
                 "--out", str(out), *flag])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"--report-to {target} needs the {target} package: pip install {target}" in err, err
    assert not out.exists()  # before the model, the data or the run folder


@pytest.mark.parametrize("old, want", [(True, ["tensorboard"]), (False, [])])
def test_a_config_saved_with_the_old_tensorboard_key_still_loads(old, want, tmp_path):
    values = TrainConfig(model="dgs-tiny", pretrained=None).to_dict()
    for key in ("report_to", "wandb_project", "val_data", "val_every", "best_metric", "early_stop"):
        del values[key]  # as an older dgsnet wrote it
    values["tensorboard"] = old
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    assert TrainConfig.load(str(path)).report_to == want
    args = build_parser().parse_args(["train", "--config", str(path)])
    assert config_from_args(args).report_to == want
    # resuming an old run: its saved config (with `tensorboard`) is not a change of result
    from dgsnet.train.config import result_changes

    assert result_changes(values, TrainConfig.load(str(path)).to_dict()) == {}


def test_old_tensorboard_key_must_be_a_boolean(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("tensorboard: yes please\n")
    with pytest.raises(ValueError, match=r"config.yaml: tensorboard: 'yes please' is not a boolean"):
        TrainConfig.load(str(path))


def test_wandb_run_gets_project_name_config_and_step_records(tmp_path, monkeypatch):
    """wandb cannot be installed offline: a minimal stand-in module records the calls (the one
    allowed fake; it checks dgsnet's use of the wandb API, not wandb itself)."""
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    run_dir = str(tmp_path / "my-run")
    cfg = TrainConfig(report_to=["wandb"])
    log = RunLogger(run_dir, report_to=cfg.report_to, config=cfg.to_dict())
    log.record("train", stage=2, step=5, lr=0.1, loss_total=0.5, epoch=0)
    log.record("start", stage=2, total_steps=9)  # no step: not a W&B point
    log.close()
    init = calls[0]
    assert init[0] == "init" and init[1]["project"] == "from-env" and init[1]["name"] == "my-run"
    assert init[1]["config"]["report_to"] == ["wandb"]
    assert calls[1] == ("log", {"train/lr": 0.1, "train/loss_total": 0.5, "train/epoch": 0}, 5)
    assert calls[2:] == [("finish",)]
    # --wandb-project wins over the environment; other ranks (enabled=False) never start a run
    calls.clear()
    RunLogger(str(tmp_path / "r2"), report_to=["wandb"], wandb_project="mine").close()
    RunLogger(str(tmp_path / "r3"), enabled=False, report_to=["wandb"]).close()
    assert [c[1]["project"] for c in calls if c[0] == "init"] == ["mine"]
    assert not os.path.exists(tmp_path / "r3")
