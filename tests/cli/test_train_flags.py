"""`dgsnet train` / `train-teacher` flags: list flags in their usual forms, and each stage offers only
the flags it reads."""
import dataclasses
import re

import pytest

from dgsnet.cli import build_parser, main
from dgsnet.train import TrainConfig
from dgsnet.train.config import config_from_args
from dgsnet.train.flags import LIST_FLAGS, STAGE_ONLY, join_list_values


def _cfg(*argv, command="train"):
    args = build_parser().parse_args(join_list_values([command, "--data", "x", *argv]))
    return config_from_args(args)


@pytest.mark.parametrize("argv", [["--betas", "0.9", "0.95"], ["--betas", "0.9,0.95"], ["--betas=0.9,0.95"],
                                  ["--betas", "0.9,", "0.95"]])
def test_betas_take_spaces_or_commas(argv):
    assert _cfg(*argv).betas == [0.9, 0.95]


@pytest.mark.parametrize("argv", [["--lora-targets", "q", "v"], ["--lora-targets", "q,v"],
                                  ["--lora-targets=q,v"]])
def test_lora_targets_take_spaces_or_commas(argv):
    assert _cfg(*argv).lora_targets == ["q", "v"]


@pytest.mark.parametrize("argv", [["--lora-blocks", "-2,-1"], ["--lora-blocks", "-2", "-1"],
                                  ["--lora-blocks=-2,-1"], ["--lora-blocks", "-2,", "-1"]])
def test_negative_lora_blocks_in_every_form(argv):
    cfg = _cfg(*argv)
    assert cfg.lora_blocks == "-2,-1" and cfg.lora().blocks == [-2, -1]


def test_lora_blocks_all_and_a_following_flag_are_kept_apart():
    cfg = _cfg("--lora-blocks", "all", "--lr", "3e-4")
    assert cfg.lora_blocks == "all" and cfg.lr == 3e-4
    cfg = _cfg("--lora-blocks", "0", "2", "--betas", "0.8", "0.9")
    assert cfg.lora_blocks == "0,2" and cfg.betas == [0.8, 0.9]


def test_negative_blocks_reach_the_command_not_an_argparse_error(tmp_path, capsys):
    # The help's own format, `--lora-blocks -2,-1`, used to stop in argparse ("expected one argument").
    code = main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--lora-blocks", "-2,-1"])
    err = capsys.readouterr().err
    assert code == 2 and "needs the stage-1 teacher" in err and "expected one argument" not in err


@pytest.mark.parametrize("argv,flag,says", [
    (["--betas", "0.95"], "--betas", "takes 2 values, got 1"),
    (["--betas", "0.9,0.95,0.99"], "--betas", "takes 2 values, got 3"),
    (["--betas", "0.9,x"], "--betas", "'x' is not a number"),
    (["--lora-targets", "q,x"], "--lora-targets", "'x' is not one of q, k, v"),
    (["--lora-targets", "q,q"], "--lora-targets", "repeated"),
    (["--lora-blocks", "all,-1"], "--lora-blocks", "'all' stands alone"),
    (["--lora-blocks", "-1.5"], "--lora-blocks", "'-1.5' is not an integer"),
])
def test_a_wrong_list_is_one_usage_error_naming_the_flag(argv, flag, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"argument {flag}:" in last and says in last, last
    assert not (tmp_path / "o").exists()


def _help(command, capsys) -> str:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("COLUMNS", "2000")  # one line a flag: argparse would also break words at hyphens
        with pytest.raises(SystemExit):
            main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def _offered(command, capsys) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", _help(command, capsys)))


def test_each_stage_offers_only_the_flags_it_reads(capsys):
    teacher, train = _offered("train-teacher", capsys), _offered("train", capsys)
    for key in STAGE_ONLY[2]:
        flag = "--" + key.replace("_", "-")
        assert flag in train and flag not in teacher, flag
    for key in STAGE_ONLY[1]:
        flag = "--" + key.replace("_", "-")
        assert flag in teacher and flag not in train, flag
    for shared in ("--data", "--model", "--pretrained", "--betas", "--batch-size", "--config", "--out"):
        assert shared in teacher and shared in train


def test_stage_only_keys_are_config_fields():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(STAGE_ONLY[1]) <= names and set(STAGE_ONLY[2]) <= names
    assert not set(STAGE_ONLY[1]) & set(STAGE_ONLY[2])


@pytest.mark.parametrize("command,argv,owner", [
    ("train-teacher", ["--lr", "1e-3"], "train"), ("train-teacher", ["--surgery", "layer"], "train"),
    ("train-teacher", ["--lora-blocks", "-2,-1"], "train"), ("train-teacher", ["--teacher", "t"], "train"),
    ("train-teacher", ["--no-fsdp"], "train"), ("train", ["--teacher-lr", "1e-3"], "train-teacher"),
    ("train", ["--teacher-epochs", "2"], "train-teacher"),
])
def test_another_stages_flag_is_unrecognized_with_a_hint(command, argv, owner, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--data", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2
    assert f"unrecognized arguments: {argv[0]}" in last and f"is a flag of dgsnet {owner};" in last, last


def test_one_config_file_serves_both_stages(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("teacher_lr: 2.0e-3\nteacher_epochs: 2\nlr: 3.0e-4\nsurgery: layer\nlora_rank: 4\n")
    args = build_parser().parse_args(["train-teacher", "--data", "x", "--config", str(path)])
    stage1 = config_from_args(args, stage=1)
    assert (stage1.teacher_lr, stage1.teacher_epochs) == (2e-3, 2)
    args = build_parser().parse_args(["train", "--data", "x", "--config", str(path)])
    stage2 = config_from_args(args, stage=2)
    assert (stage2.lr, stage2.surgery, stage2.lora_rank) == (3e-4, "layer", 4)


@pytest.mark.parametrize("command", ["train-teacher", "train"])
def test_help_shows_the_accepted_forms_of_every_list_flag(command, capsys):
    text = _help(command, capsys)
    shown = [key for key in LIST_FLAGS if "--" + key.replace("_", "-") + " " in text]
    assert "betas" in shown
    for key in shown:
        assert LIST_FLAGS[key].forms in text, key
