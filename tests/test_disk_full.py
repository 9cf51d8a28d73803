"""Outputs that cannot be written: past a file size limit (our stand-in for a full disk), under a
regular file, in a read-only folder. Each ends with exit status 2 and one line naming the path and
the fix, leaves every earlier file as it was and no temporary file behind.

A full disk needs a mount we cannot make without root; RLIMIT_FSIZE gives a real write error instead
(EFBIG, with SIGXFSZ ignored in the child): every write past N bytes fails, as on a full disk.
"""
import os
import shutil
import signal
from pathlib import Path

import pytest


from tests import test_interrupts as _shared  # the process runner, checks and corpora (one copy of them)

DGSNET, PREDICT, TEACHER = _shared.DGSNET, _shared.PREDICT, _shared.TEACHER
run, last_line, snapshot, leftovers, old_file = (_shared.run, _shared.last_line, _shared.snapshot,
                                                 _shared.leftovers, _shared.old_file)
images, train_data = _shared.images, _shared.train_data  # fixtures of those tests, shared

needs_non_root = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")


# ---------------------------------------------------------------- past the file size limit


def test_predict_past_the_size_limit_keeps_the_old_output(fp32_export, images, tmp_path):
    model = fp32_export[0]
    out = old_file(tmp_path / "preds.jsonl", '{"path": "earlier run"}\n')
    before = snapshot(tmp_path, images, model)
    # 400 records of ~100 bytes: the output passes 4 kB after a few dozen
    status, _, err = run([*PREDICT, model, images, "--out", out, "--no-progress"], tmp_path, file_limit=4096)
    last_line(status, err, 2, f"dgsnet-predict: --out {out}", "EFBIG", "choose another --out")
    assert snapshot(tmp_path, images, model) == before and leftovers(tmp_path) == []


def test_a_checkpoint_past_the_size_limit_fails_cleanly_and_the_run_resumes(train_data, tmp_path):
    out = tmp_path / "run"
    # no DataLoader workers: they pass batches through shared-memory files, which the limit also caps
    argv = [*DGSNET, "train-teacher", "--data", train_data, "--out", out, *TEACHER, "--workers", "0"]
    data_before = snapshot(train_data)
    # the config and the first log lines fit in 8 kB; the checkpoint's 20 kB of tensors do not
    status, _, err = run(argv, tmp_path, file_limit=8000)
    last_line(status, err, 2, f"dgsnet train-teacher: error: --out {out}", "EFBIG", "choose another --out")
    assert snapshot(train_data) == data_before and leftovers(out) == []
    assert not (out / "resume").exists() and not (out / "model.json").exists()
    # what is left is a run folder --resume accepts: it starts over and finishes
    status, _, err = run([*argv, "--resume"], tmp_path)
    assert status == 0 and (out / "model.json").is_file(), err


def test_export_past_the_size_limit_keeps_the_old_model(trained_run, tmp_path):
    run_dir = trained_run[0]
    out = old_file(tmp_path / "detector.onnx", "an earlier export\n")
    before = snapshot(tmp_path, run_dir)
    # the dgs-tiny graph is about 1.2 MB
    status, _, err = run([*DGSNET, "export", "--ckpt", run_dir, "--out", out], tmp_path, file_limit=200_000)
    last_line(status, err, 2, "dgsnet export: error:", str(out))
    assert snapshot(tmp_path, run_dir) == before and leftovers(tmp_path) == []


# ---------------------------------------------------------------- outputs that cannot be created


def _command(kind: str, folder: Path, fp32_export, trained_run, images, train_data) -> tuple[list, list]:
    """(argv of one command writing into `folder`, the inputs it reads)."""
    model, run_dir = fp32_export[0], trained_run[0]
    if kind == "dgsnet-predict":
        return [*PREDICT, model, images, "--out", folder / "preds.jsonl", "--no-progress"], [model, images]
    if kind == "train-teacher":
        return [*DGSNET, "train-teacher", "--data", train_data, "--out", folder / "run", *TEACHER], [train_data]
    if kind == "eval":
        return ([*DGSNET, "eval", "--ckpt", run_dir, "--data", train_data, "--out", folder / "reports", "--no-plot"],
                [run_dir, train_data])
    return [*DGSNET, "export", "--ckpt", run_dir, "--out", folder / "detector.onnx"], [run_dir]


@pytest.mark.parametrize("kind", ["dgsnet-predict", "train-teacher", "eval", "export"])
def test_an_output_under_a_regular_file_is_one_line(kind, fp32_export, trained_run, images, train_data, tmp_path):
    blocker = old_file(tmp_path / "notes.txt", "a file where a folder is needed\n")
    argv, inputs = _command(kind, blocker / "sub", fp32_export, trained_run, images, train_data)
    before = snapshot(tmp_path, *inputs)
    status, _, err = run(argv, tmp_path)
    last_line(status, err, 2, str(blocker))
    assert snapshot(tmp_path, *inputs) == before and leftovers(tmp_path) == []


@needs_non_root
@pytest.mark.parametrize("kind", ["dgsnet-predict", "train-teacher"])
def test_an_output_in_a_read_only_folder_is_one_line(kind, fp32_export, trained_run, images, train_data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    old = old_file(locked / "kept.txt", "an earlier file\n")
    argv, inputs = _command(kind, locked, fp32_export, trained_run, images, train_data)
    before = snapshot(tmp_path, *inputs)
    locked.chmod(0o500)
    try:
        status, _, err = run(argv, tmp_path)
    finally:
        locked.chmod(0o700)
    last_line(status, err, 2, str(locked))
    assert snapshot(tmp_path, *inputs) == before and old.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- what is reported


def test_predict_names_what_the_folder_walk_left_out(fp32_export, images, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(next(images.iterdir()), folder / "a.png")
    (folder / "sub" / "loop").symlink_to(folder)  # a folder that holds the link
    (folder / "elsewhere").symlink_to(images)  # a link leading outside the folder
    status, out, err = run([*PREDICT, fp32_export[0], folder, "--no-progress"], tmp_path)
    assert status == 0 and len(out.splitlines()) == 1, err  # a.png once, nothing through the links
    notes = [line for line in err.splitlines() if "left out" in line]
    assert len(notes) == 1, err  # the command's own line; the library's warning is held back
    assert notes[0].startswith("dgsnet-predict: left out 2 path(s)")
    assert str(folder / "sub" / "loop") in notes[0] and str(folder / "elsewhere") in notes[0]
    assert "follow_outside=True" not in err  # a Python argument is no fix on the command line


def test_debug_shows_the_traceback_instead(fp32_export, images, trained_run, tmp_path):
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN where the tests run as a shell's background job
    out = tmp_path / "preds.jsonl"
    status, _, err = run([*PREDICT, fp32_export[0], images, "--out", out, "--no-progress", "--debug"], tmp_path,
                         file_limit=4096)
    assert status == 1 and "Traceback" in err and "File too large" in err, err
    assert not out.exists() and leftovers(tmp_path) == []

    from dgsnet.cli import main

    blocker = old_file(tmp_path / "notes.txt", "a file\n")
    with pytest.raises((OSError, ValueError)):
        main(["--debug", "export", "--ckpt", str(trained_run[0]), "--out", str(blocker / "x.onnx")])
    assert main(["export", "--ckpt", str(trained_run[0]), "--out", str(blocker / "x.onnx")]) == 2
    assert signal.getsignal(signal.SIGINT) is handler  # handlers put back in-process
