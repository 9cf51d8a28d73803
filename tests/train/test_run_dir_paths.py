"""`dgsnet train --out`: a folder the run can create, apart from its data, checked before any model
or data loads; nothing (not even an empty folder) is left by a refused run."""
import os

import pytest
from PIL import Image

from dgsnet.cli import main


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "train"
    for label, colour in (("0_real", (10, 120, 30)), ("1_fake", (220, 40, 40))):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (48, 48), (colour[0] + i, *colour[1:])).save(root / label / f"{i}.png")
    return root


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _refused(argv, capsys, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and match in err, err
    assert "random-initialised" not in err  # the check ran before the model was built
    return err


BASE = ["--model", "dgs-tiny", "--pretrained", "none", "--workers", "0", "--batch-size", "2"]


@pytest.mark.parametrize("where", [("0_real",), ("1_fake", "runs", "t"), ()])
def test_out_inside_the_training_data_is_refused(data, capsys, where):
    before = _files(data)
    out = data.joinpath(*where)
    _refused(["train-teacher", "--data", str(data), "--out", str(out), *BASE], capsys, "inside the training data")
    assert _files(data) == before and not os.path.exists(data / "1_fake" / "runs")


def test_out_inside_the_training_data_through_a_link_is_refused(data, tmp_path, capsys):
    os.symlink(data / "0_real", tmp_path / "alias")
    _refused(["train-teacher", "--data", str(data), "--out", str(tmp_path / "alias" / "run"), *BASE], capsys,
             "inside the training data")


def test_out_an_existing_file_is_refused(data, tmp_path, capsys):
    target = tmp_path / "run.txt"
    target.write_text("keep me")
    _refused(["train-teacher", "--data", str(data), "--out", str(target), *BASE], capsys, "is a file")
    assert target.read_text() == "keep me"


def test_out_under_a_file_is_refused(data, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    _refused(["train-teacher", "--data", str(data), "--out", str(blocker / "run"), *BASE], capsys,
             "is a file, not a folder")
    assert blocker.read_text() == "keep me"


def test_bad_data_fails_before_the_model_and_leaves_no_run_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    _refused(["train-teacher", "--data", str(tmp_path / "empty"), "--out", str(out), *BASE], capsys,
             str(tmp_path / "empty"))
    assert not out.exists()  # no empty run folder or config.yaml left behind
