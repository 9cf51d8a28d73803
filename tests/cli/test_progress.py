"""Progress on stderr: a bar on a terminal, plain periodic lines in logs and pipes, nothing with --no-progress."""
import io
import re

import pytest

from dgsnet import progress
from dgsnet.cli import main as dgsnet_main
from dgsnet_export.runtime.cli import main as onnx_predict

LINE = re.compile(r"^(?P<desc>.+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+) \(\d+%\), [\d.e+-]+ \w+/s, "
                  r"(eta \d+ s|\d+ s)")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr in an interactive shell does."""

    def isatty(self):
        return True


@pytest.fixture
def every_update(monkeypatch):
    monkeypatch.setenv(progress.ENV_SECONDS, "0")


def _lines(text: str, desc: str) -> list[re.Match]:
    found = [LINE.match(line) for line in text.splitlines()]
    return [m for m in found if m and m["desc"] == desc]


def test_a_log_gets_plain_lines_and_a_last_one(every_update):
    log = io.StringIO()
    with progress.reporter(5, "eval", stream=log) as bar:
        bar.update(2)
        bar.set_postfix({"loss": "0.41"})
        bar.update(3)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].startswith("eval: 2/5 images (40%), ") and ", eta " in lines[0]
    assert lines[1].startswith("eval: 5/5 images (100%), ") and lines[1].endswith(", loss 0.41")
    assert lines[2].startswith("eval: 5/5 images (100%), ") and ", eta" not in lines[2]  # the last one


def test_a_job_cut_short_says_so(every_update):
    log = io.StringIO()
    progress.reporter(5, "eval", stream=log).close()
    assert log.getvalue().startswith("eval: 0/5 images (0%), ") and ", stopped after " in log.getvalue()


def test_lines_wait_for_the_period(monkeypatch):
    monkeypatch.setenv(progress.ENV_SECONDS, "3600")
    log = io.StringIO()
    with progress.reporter(100, "eval", stream=log) as bar:
        for _ in range(100):
            bar.update(1)
    assert len(log.getvalue().splitlines()) == 1  # only the last line


def test_a_terminal_gets_a_bar(every_update):
    tty = Terminal()
    with progress.reporter(5, "eval", stream=tty) as bar:
        bar.update(5)
    assert "\r" in tty.getvalue() and "5/5" in tty.getvalue()


def test_a_terminal_without_tqdm_gets_lines(every_update, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # the torch-free runtime does not require tqdm
    tty = Terminal()
    with progress.reporter(5, "dgsnet-predict", stream=tty) as bar:
        bar.update(5)
    assert "\r" not in tty.getvalue() and tty.getvalue().startswith("dgsnet-predict: 5/5 images (100%)")


def test_disabled_says_nothing(every_update):
    for stream in (io.StringIO(), Terminal()):
        with progress.reporter(5, "eval", stream=stream, enabled=False) as bar:
            bar.update(5)
        previous = progress.set_enabled(False)
        try:
            with progress.reporter(5, "eval", stream=stream) as bar:
                bar.update(5)
        finally:
            progress.set_enabled(previous)
        assert stream.getvalue() == ""


def test_iterate_counts_items_of_a_batched_loader(every_update, capsys):
    batches = [[1, 2, 3], [4, 5, 6], [7]]
    assert list(progress.iterate(batches, "eval", total=7, step=3)) == batches
    counts = [(int(m["n"]), int(m["total"])) for m in _lines(capsys.readouterr().err, "eval")]
    assert counts == [(3, 7), (6, 7), (7, 7), (7, 7)]


def test_a_bad_period_is_one_error_line(monkeypatch, fp32_export, photo_dir, capsys):
    monkeypatch.setenv(progress.ENV_SECONDS, "soon")
    assert onnx_predict([str(fp32_export[0]), str(photo_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DGSNET_PROGRESS_SECONDS='soon'" in err[0]
    assert dgsnet_main(["predict", "--ckpt", str(photo_dir), str(photo_dir)]) == 2
    assert "DGSNET_PROGRESS_SECONDS" in capsys.readouterr().err
    # --no-progress needs no period
    assert onnx_predict([str(fp32_export[0]), str(photo_dir), "--no-progress", "--provider", "cpu"]) == 0


def test_onnx_predict_in_a_pipe_prints_progress_lines(every_update, fp32_export, photo_dir, capsys):
    args = [str(fp32_export[0]), str(photo_dir), "--provider", "cpu", "--batch-size", "4"]
    assert onnx_predict(args) == 0
    err = capsys.readouterr().err
    counts = [int(m["n"]) for m in _lines(err, "dgsnet-predict")]
    assert counts == [4, 6, 6] and "\r" not in err
    assert onnx_predict([*args, "--no-progress"]) == 0
    assert _lines(capsys.readouterr().err, "dgsnet-predict") == []


def test_eval_in_a_pipe_prints_progress_lines(every_update, make_tiny_run, make_test_set, tmp_path, capsys):
    run, data = make_tiny_run(tmp_path / "run"), make_test_set(tmp_path / "test")
    common = ["eval", "--ckpt", str(run), "--data", str(data), "--workers", "0", "--no-plot"]
    assert dgsnet_main([*common, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert [int(m["n"]) for m in _lines(err, "eval clean/gan")] == [2, 2] and "\r" not in err
    assert dgsnet_main([*common, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert _lines(capsys.readouterr().err, "eval clean/gan") == []
    assert progress._enabled  # the flag does not outlive its command


def test_training_in_a_pipe_prints_step_lines(every_update, tmp_path, capsys):
    from dgsnet.train import TrainConfig, train_teacher
    from tests.train.toy_data import ToyDataset

    cfg = dict(model="dgs-tiny", pretrained=None, batch_size=4, workers=0, teacher_epochs=1, max_steps=2)
    train_teacher(TrainConfig(**cfg, out=str(tmp_path / "a")), ToyDataset(8))
    lines = _lines(capsys.readouterr().err, "stage 1")
    assert [(m["n"], m["unit"]) for m in lines] == [("1", "steps"), ("2", "steps"), ("2", "steps")]
    previous = progress.set_enabled(False)  # what --no-progress does
    try:
        train_teacher(TrainConfig(**cfg, out=str(tmp_path / "b")), ToyDataset(8))
    finally:
        progress.set_enabled(previous)
    assert _lines(capsys.readouterr().err, "stage 1") == []


def test_onnx_predict_on_a_real_terminal_draws_a_bar(fp32_export, photo_dir):
    import os
    import pty
    import subprocess
    import sys

    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 wide
    try:
        proc = subprocess.run([sys.executable, "-m", "dgsnet_export.runtime.cli", str(fp32_export[0]),
                               str(photo_dir), "--provider", "cpu", "--batch-size", "2"],
                              stdout=subprocess.DEVNULL, stderr=follower, timeout=120,
                              env={**os.environ, progress.ENV_SECONDS: "0"})
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err
    assert "6/6 [" in err and "it/s]" not in err  # tqdm's bar, counting images
    assert _lines(err.replace("\r", "\n"), "dgsnet-predict") == []  # and not the log lines
