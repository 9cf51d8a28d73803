"""One spelling per flag: --batch-size everywhere (--batch still accepted, not shown), --no-progress wherever
progress is shown."""
import pytest

from dgsnet.cli import build_parser, main as dgsnet_main
from dgsnet_export.runtime.cli import build_parser as onnx_parser

# each command with its required arguments
COMMANDS = {
    "check": ["check"],
    "eval": ["eval", "--ckpt", "run", "--data", "test"],
    "predict": ["predict", "--ckpt", "run", "images"],
    "train": ["train", "--data", "d", "--out", "o"],
    "train-teacher": ["train-teacher", "--data", "d", "--out", "o"],
    "demo": ["demo"],
}
BATCHED = ("check", "eval", "predict", "train", "train-teacher")
PROGRESS = ("eval", "predict", "train", "train-teacher", "demo")


def _parse(name, *extra):
    if name == "dgsnet-predict":
        return onnx_parser().parse_args(["model.onnx", "images", *extra])
    return build_parser().parse_args([*COMMANDS[name], *extra])


def _help(name, capsys) -> str:
    with pytest.raises(SystemExit):
        _parse(name, "--help")
    return capsys.readouterr().out


@pytest.mark.parametrize("name", [*BATCHED, "dgsnet-predict"])
def test_every_batched_command_takes_batch_size_and_shows_only_that(name, capsys):
    assert _parse(name, "--batch-size", "3").batch_size == 3
    text = _help(name, capsys)
    assert "--batch-size" in text and "--batch " not in text and "--batch\n" not in text


@pytest.mark.parametrize("name", ["check", "eval", "predict", "dgsnet-predict"])
def test_the_old_batch_spelling_still_works(name):
    assert _parse(name, "--batch", "5").batch_size == 5


@pytest.mark.parametrize("name", ["check", "predict", "dgsnet-predict", "eval"])
@pytest.mark.parametrize("flag", ["--batch-size", "--batch"])
def test_a_batch_size_below_one_is_refused_by_the_parser(name, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        _parse(name, flag, "0")
    assert stop.value.code == 2 and "is not a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("name", [*PROGRESS, "dgsnet-predict"])
def test_every_command_that_shows_progress_takes_no_progress(name, capsys):
    assert _parse(name, "--no-progress").no_progress is True
    assert _parse(name).no_progress is False
    assert "DGSNET_PROGRESS_SECONDS" in _help(name, capsys)


def test_eval_spells_strict_data_as_training_does(capsys):
    assert _parse("eval", "--strict-data").strict and _parse("eval", "--strict").strict  # the old one still works
    assert not _parse("eval").strict
    text = _help("eval", capsys)
    assert "--strict-data" in text and "--strict " not in text


def test_check_runs_with_batch_size(capsys):
    assert dgsnet_main(["check", "--batch-size", "2", "--backend", "reference"]) == 0
    assert "check: OK" in capsys.readouterr().err


# ---------------------------------------------------------------- the README's examples use the code's spellings


def _readme_section(title: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_spells_the_batch_flag_one_way():
    import re

    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for line in text.splitlines():
        if re.search(r"(dgsnet|dgsnet-predict) .*--batch\b(?!-)", line):
            pytest.fail(f"README example with --batch instead of --batch-size: {line}")


def test_the_readme_objective_example_runs_and_shows_the_defaults():
    import ast
    import inspect

    import torch
    from torch import nn

    from dgsnet.surgery import dgs_objective

    code = _readme_section("Using the objective").split("```python\n", 1)[1].split("```", 1)[0]
    call = next(node for node in ast.walk(ast.parse(code))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "dgs_objective")
    defaults = inspect.signature(dgs_objective).parameters
    for keyword in call.keywords:  # the example writes out the defaults: they must be the code's
        assert ast.literal_eval(keyword.value) == defaults[keyword.arg].default, keyword.arg
    logged = []
    dim = 8
    feats = torch.randn(4, dim, requires_grad=True)
    scope = {"student_feats": feats, "teacher_feats": torch.randn(4, dim), "text_feats": torch.randn(4, dim),
             "labels": torch.tensor([0.0, 1.0, 0.0, 1.0]), "student_head": nn.Linear(dim, 1),
             "teacher_head": nn.Linear(dim, 1), "text_head": nn.Linear(dim, 1), "log": logged.append}
    exec(code, scope)
    import re

    keys = ast.literal_eval(re.search(r"terms\(\)\)\s*#\s*(\{.*\})", code).group(1))  # the comment's set
    assert feats.grad is not None and set(logged[0]) == keys
