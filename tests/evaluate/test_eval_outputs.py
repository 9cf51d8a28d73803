"""`dgsnet eval --out`: checked before the model loads, never over test images or the run's files,
and valid reports whatever bytes the folder names hold."""
import csv
import json
import os

import pytest

from dgsnet.cli import main

NOT_UTF8 = os.fsdecode(b"gan\xff")  # a folder name whose bytes are not UTF-8 (Latin-1 from another machine)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_tiny_run, make_test_set):
    root = tmp_path_factory.mktemp("evalout")
    make_tiny_run(root / "run", init_seed=4)
    make_test_set(root / "test", subsets=(NOT_UTF8, "ok"), colours=((9, 99, 199), (200, 20, 60)))
    return root


def _snapshot(*folders):
    out = {}
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as fh:
                    out[path] = fh.read()
    return out


def _eval(setup, out, *extra):
    return main(["eval", "--ckpt", str(setup / "run"), "--data", str(setup / "test"), "--workers", "0",
                 "--out", str(out), *extra])


def _strict_json(path):
    def refuse(token):
        raise AssertionError(f"{path}: non-standard JSON token {token}")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh, parse_constant=refuse)


@pytest.mark.parametrize("out_name", ["report", os.fsdecode(b"rep\xfeort")])
def test_non_utf8_folder_names_give_valid_reports(setup, tmp_path, capsys, out_name):
    out = tmp_path / out_name
    assert _eval(setup, out, "--no-plot") == 0
    stdout = capsys.readouterr().out
    subsets = [r["subset"] for r in _strict_json(out / "eval.json")["results"]["clean"]]
    assert subsets == ["gan\\xff", "ok", "mean"]  # the raw byte shown, not dropped or mangled
    with open(out / "eval.csv", encoding="utf-8") as fh:
        assert {row["subset"] for row in csv.DictReader(fh)} == {"gan\\xff", "ok", "mean"}
    assert "| gan\\xff |" in stdout


def _refused(setup, capsys, out, *extra, match):
    before = _snapshot(setup)
    assert _eval(setup, out, *extra) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and match in err, err
    assert err.count("\n") <= 3  # one error line (plus the random-init notice at most)
    assert _snapshot(setup) == before  # nothing under the run or the test data changed or appeared
    return err


def test_out_inside_the_test_data_is_refused(setup, capsys):
    # eval.png written among the test images would be read as a test image by the next eval
    err = _refused(setup, capsys, setup / "test" / "ok" / "0_real", match="inside the test data")
    assert str(setup / "test") in err


def test_out_inside_the_test_data_through_a_link_is_refused(setup, tmp_path, capsys):
    os.symlink(setup / "test" / "ok", tmp_path / "alias")
    _refused(setup, capsys, tmp_path / "alias" / "reports", match="inside the test data")


def test_out_an_existing_file_is_refused(setup, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    _refused(setup, capsys, target, match="is a file")
    assert target.read_text() == "keep me"


def test_out_under_a_file_is_refused_before_the_model_loads(setup, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    err = _refused(setup, capsys, blocker / "reports", match="is a file, not a folder")
    assert "random-initialised" not in err  # refused before the model was built
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_out_in_a_read_only_folder_is_refused(setup, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused(setup, capsys, locked / "reports", match="not writable")
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("report,target", [("eval.json", ("run", "model.json")),
                                           ("eval.csv", ("run", "config.yaml")),
                                           ("eval.png", ("test", "ok", "0_real", "x.png"))])
def test_a_report_file_linked_to_an_input_is_refused(setup, tmp_path, capsys, report, target):
    out = tmp_path / "linked"
    out.mkdir()
    target = setup.joinpath(*target)
    if not target.exists():
        target.write_text("norm: imagenet\n")  # config.yaml: a run's own file
    os.symlink(target, out / report)
    _refused(setup, capsys, out, match=report)


def test_running_again_into_the_same_report_folder_replaces_the_reports(setup, tmp_path, capsys):
    out = tmp_path / "again"
    assert _eval(setup, out, "--no-plot") == 0
    (out / "eval.json").write_text("stale")
    assert _eval(setup, out, "--no-plot") == 0
    assert _strict_json(out / "eval.json")["results"]["clean"][0]["subset"] == "gan\\xff"
