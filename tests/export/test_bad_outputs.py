"""No command destroys its own inputs, a failed run leaves the old predictions, and no NaN becomes a label.

`dgsnet-predict`, `dgsnet predict` and `dgsnet export` refuse an --out that is the model, an input,
a file inside an input folder or the run directory, a link to one of those, or an existing
directory: exit status 2, one line on stderr naming both paths, and every file as it was.
"""
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from dgsnet.cli import main as dgsnet_main
from dgsnet.outputs import OutputError, check_output
from dgsnet.scoring import collect_inputs, iter_predictions
from dgsnet_export.runtime.cli import main as onnx_predict_main
from dgsnet_export.runtime.records import score_and_report


# ---------------------------------------------------------------- helpers

def snapshot(*roots) -> dict:
    """{path: (bytes, mtime_ns, mode)} of every file under `roots` (hidden ones too), links as links."""
    files = {}
    for root in map(Path, roots):
        paths = [root] if not root.is_dir() or root.is_symlink() else \
            [Path(d) / n for d, _, names in os.walk(root) for n in names]
        for p in paths:
            if p.is_symlink():
                files[str(p)] = ("link", os.readlink(p))
            else:
                st = p.stat()
                files[str(p)] = (p.read_bytes(), st.st_mtime_ns, st.st_mode)
    return files


def strict_lines(text: str) -> list[dict]:
    """JSON lines, refusing NaN / Infinity (which json.loads accepts by default)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def refused(code: int, err: str, *names) -> None:
    """Exit 2, one line on stderr, no traceback, every named path in it."""
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for name in names:
        assert str(name) in err, (name, err)
    assert "choose another --out" in err


@pytest.fixture()
def model(fp32_export, tmp_path):
    """A private copy of the exported detector: a test that fails must not damage the session's."""
    path = tmp_path / "det.onnx"
    shutil.copyfile(fp32_export[0], path)
    return path


@pytest.fixture()
def images(photo_dir, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(photo_dir, folder)
    return folder


@pytest.fixture()
def no_model_load(monkeypatch):
    """The refusals happen before any model is loaded: loading one fails the test."""
    import dgsnet.predict
    import dgsnet_export.exporter
    import dgsnet_export.runtime.detector

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(dgsnet_export.runtime.detector, "OnnxDetector", fail)
    monkeypatch.setattr(dgsnet.predict, "TorchPredictor", fail)
    monkeypatch.setattr(dgsnet_export.exporter, "export_checkpoint", fail)


def onnx_predict(argv, capsys):
    code = onnx_predict_main([str(a) for a in argv] + ["--provider", "cpu", "--no-progress"])
    return code, capsys.readouterr().err


def dgsnet(argv, capsys):
    code = dgsnet_main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- dgsnet-predict

def test_out_is_the_model(model, images, tmp_path, capsys, no_model_load):
    before = snapshot(tmp_path)
    code, err = onnx_predict([model, images, "--out", model], capsys)
    refused(code, err, model)
    assert "the model" in err
    assert snapshot(tmp_path) == before


def test_out_is_an_input_image(model, images, tmp_path, capsys, no_model_load):
    image = sorted(images.iterdir())[0]
    before = snapshot(tmp_path)
    code, err = onnx_predict([model, image, "--out", image], capsys)
    refused(code, err, image)
    assert snapshot(tmp_path) == before


def test_out_an_existing_file_inside_an_input_folder(model, images, tmp_path, capsys, no_model_load):
    out = sorted(images.iterdir())[1]
    before = snapshot(tmp_path)
    code, err = onnx_predict([model, images, "--out", out], capsys)
    refused(code, err, out, images)
    assert snapshot(tmp_path) == before  # nothing truncated, nothing created


def test_a_new_file_inside_an_input_folder_is_allowed():
    """Only existing files can be inputs: a new predictions file next to the images destroys nothing."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        open(os.path.join(folder, "a.png"), "wb").write(b"x")
        check_output(os.path.join(folder, "preds.jsonl"), [folder], "--out")


def test_out_through_a_symlink_to_the_model(model, images, tmp_path, capsys, no_model_load):
    link = tmp_path / "preds.jsonl"
    link.symlink_to(model)
    before = snapshot(tmp_path)
    code, err = onnx_predict([model, images, "--out", link], capsys)
    refused(code, err, link, model)
    assert snapshot(tmp_path) == before


def test_out_a_hard_link_to_an_image_in_an_input_folder(model, images, tmp_path, capsys, no_model_load):
    image = sorted(images.iterdir())[2]
    twin = tmp_path / "preds.jsonl"
    os.link(image, twin)
    before = snapshot(tmp_path)
    code, err = onnx_predict([model, images, "--out", twin], capsys)
    refused(code, err, twin, image)
    assert snapshot(tmp_path) == before


def test_out_an_existing_directory(model, images, tmp_path, capsys, no_model_load):
    folder = tmp_path / "results"
    folder.mkdir()
    before = snapshot(tmp_path)
    code, err = onnx_predict([model, images, "--out", folder], capsys)
    refused(code, err, folder)
    assert "existing directory" in err
    assert snapshot(tmp_path) == before


def test_a_good_out_still_works_and_replaces_an_old_file_keeping_its_mode(model, images, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    out.write_text("old\n")
    out.chmod(0o640)
    code, err = onnx_predict([model, images, "--out", out], capsys)
    assert code == 0, err
    records = strict_lines(out.read_text())
    assert len(records) == len(list(images.iterdir())) and all("label" in r for r in records)
    assert out.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.onnx", "imgs", "preds.jsonl"]  # no temp file


def test_out_a_pipe_is_written_directly(model, images, tmp_path, capsys):
    """Atomic writing renames over regular files only: a pipe (or /dev/null) is not replaced."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    code, err = onnx_predict([model, sorted(images.iterdir())[0], "--out", fifo], capsys)
    reader.join(timeout=60)
    assert code == 0, err
    assert len(strict_lines(got[0])) == 1 and fifo.is_fifo()


# ---------------------------------------------------------------- dgsnet predict / dgsnet export

def test_dgsnet_predict_out_is_the_checkpoint(run_dir, images, tmp_path, capsys, no_model_load):
    weights = run_dir / "model.safetensors"
    before = snapshot(tmp_path)
    code, err = dgsnet(["predict", "--ckpt", run_dir, images, "--out", weights], capsys)
    refused(code, err, weights, run_dir)
    assert err.startswith("dgsnet predict: error:")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["model.safetensors", "model.json", "config.yaml", "resume/x.onnx"])
def test_dgsnet_export_out_inside_the_run_directory(run_dir, tmp_path, capsys, no_model_load, name):
    out = run_dir / name
    before = snapshot(tmp_path)
    code, err = dgsnet(["export", "--ckpt", run_dir, "--out", out, "--tensorrt"], capsys)
    refused(code, err, out, run_dir)
    assert snapshot(tmp_path) == before


def test_dgsnet_export_side_files_are_checked_too(run_dir, tmp_path, capsys, no_model_load):
    """The export record and the trtexec script are written next to --out: a link there into the
    run directory is refused before the export starts."""
    out = tmp_path / "det.onnx"
    script = tmp_path / "det.trtexec.sh"
    script.symlink_to(run_dir / "model.json")
    before = snapshot(tmp_path)
    code, err = dgsnet(["export", "--ckpt", run_dir, "--out", out, "--tensorrt"], capsys)
    refused(code, err, script, run_dir)
    assert "trtexec script" in err
    assert snapshot(tmp_path) == before and not out.exists()


def test_check_output_unit(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    check_output(None, [tmp_path], "--out")  # stdout
    check_output(tmp_path / "b.jsonl", [tmp_path / "a.png"], "--out")  # a sibling is fine
    with pytest.raises(OutputError, match="a.png"):
        check_output(tmp_path / "." / "a.png", [tmp_path / "a.png"], "--out")
    with pytest.raises(OutputError, match="inside"):
        check_output(tmp_path / "x" / ".." / "a.png", [(tmp_path, "the run directory")], "--out")
    with pytest.raises(OutputError, match="checkpoint file"):
        check_output(tmp_path / "model.json", [(tmp_path, "the run directory")], "--out")  # even when new
    check_output(tmp_path / "x" / ".." / "c.jsonl", [(tmp_path, "the run directory")], "--out")
    assert issubclass(OutputError, ValueError)  # dgsnet's CLI turns it into exit status 2


# ---------------------------------------------------------------- atomic writes

class Boom(RuntimeError):
    pass


def _failing_logits(fail_on_call: int, exc=Boom):
    calls = []

    def logits(batch):
        calls.append(len(batch))
        if len(calls) == fail_on_call:
            raise exc("the engine died midway")
        return np.linspace(-2.0, 2.0, len(batch))

    return logits


def _preprocess(image, path=None):
    return np.zeros((3, 8, 8), np.float32)


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_an_interrupted_run_keeps_the_old_predictions(photo_dir, tmp_path, exc):
    out = tmp_path / "preds.jsonl"
    out.write_text('{"path": "old.png", "logit": 1.0}\n')
    before = snapshot(tmp_path)
    found = collect_inputs([photo_dir])
    assert len(found.paths) >= 4
    with pytest.raises(exc):
        score_and_report(found, _failing_logits(2, exc), _preprocess, labels=("real", "generated"),
                         threshold=0.5, batch_size=2, workers=1, out=str(out), progress=False,
                         prog="test", engine="fake")
    assert snapshot(tmp_path) == before  # old file as it was, no partial or temporary file left


def test_a_finished_run_replaces_the_old_predictions(photo_dir, tmp_path):
    out = tmp_path / "preds.jsonl"
    out.write_text("old\n")
    found = collect_inputs([photo_dir])
    tally = score_and_report(found, _failing_logits(0), _preprocess, labels=("real", "generated"),
                             threshold=0.5, batch_size=2, workers=1, out=str(out), progress=False,
                             prog="test", engine="fake")
    assert tally.scored == len(found.paths) == len(strict_lines(out.read_text()))
    assert [p.name for p in tmp_path.iterdir()] == ["preds.jsonl"]


# ---------------------------------------------------------------- non-finite scores

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_logit_is_an_error_record_not_a_label(photo_dir, bad):
    paths = sorted(photo_dir.iterdir())

    def logits(batch):
        values = np.linspace(-1.0, 1.0, len(batch))
        values[1] = bad
        return values

    records = list(iter_predictions(paths[:3], logits, _preprocess, batch_size=3, workers=1))
    assert [r["path"] for r in records] == [str(p) for p in paths[:3]]
    assert "label" in records[0] and "label" in records[2]
    assert set(records[1]) == {"path", "error"}
    assert f"non-finite score ({bad})" in records[1]["error"] and "broken" in records[1]["error"]


@pytest.mark.parametrize("to_file", [True, False])
def test_onnx_predict_with_a_nan_detector_exits_1_with_strict_json(model, images, tmp_path, capsys,
                                                                   monkeypatch, to_file):
    import dgsnet_export.runtime.detector

    real = dgsnet_export.runtime.detector.OnnxDetector.logits
    calls = []

    def nan_on_third(self, batch):  # --batch 1: the third image scores NaN
        calls.append(1)
        values = real(self, batch)
        return np.full_like(values, np.nan) if len(calls) == 3 else values

    monkeypatch.setattr(dgsnet_export.runtime.detector.OnnxDetector, "logits", nan_on_third)
    out = tmp_path / "preds.jsonl"
    code = onnx_predict_main([str(model), str(images), "--provider", "cpu", "--no-progress", "--batch", "1",
                              "--workers", "1", *(["--out", str(out)] if to_file else [])])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "Traceback" not in captured.err
    records = strict_lines(out.read_text() if to_file else captured.out)
    assert len(records) == len(list(images.iterdir()))
    errors = [r for r in records if "error" in r]
    assert len(errors) == 1 and errors[0]["path"] == str(sorted(images.iterdir())[2])
    assert "non-finite score (nan)" in errors[0]["error"] and "label" not in errors[0]
    assert "non-finite score (nan)" in captured.err
