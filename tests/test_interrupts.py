"""Ctrl-C, SIGTERM and kill -9 on real command processes: one line and 128 + the signal number, no
traceback, outputs whole or absent, and a training run that `--resume` finishes.

Each command runs in its own process group, as a terminal job does, and the signal goes to the whole
group (DataLoader workers included), as Ctrl-C in a terminal and SLURM's SIGTERM do. The tests wait
for a marker (a temporary output file with data in it, a checkpoint, a progress line) before they
signal, never for a fixed time.
"""
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

PREDICT = [sys.executable, "-m", "dgsnet_export.cli"]
DGSNET = [sys.executable, "-m", "dgsnet.cli"]
# dgs-tiny, random weights, 8 steps an epoch over train_data, a checkpoint after every step
TRAIN = ["--model", "dgs-tiny", "--pretrained", "none", "--batch-size", "4", "--workers", "2",
         "--ckpt-every", "1", "--device", "cpu"]
TEACHER = [*TRAIN, "--teacher-epochs", "3"]  # 24 steps: time to signal after the first checkpoint
STAGE2 = [*TRAIN, "--epochs", "1"]
OLD_TIME = 1_000_000_000  # 2001: an mtime no write of this test gives a file




# ---------------------------------------------------------------- running commands


def _child_setup(file_limit: int | None, sigint) -> None:
    # A job started from a shell has the default SIGINT; a test runner started in the background
    # passes SIGINT on ignored, and the command would rightly keep ignoring it.
    signal.signal(signal.SIGINT, sigint)
    if file_limit is not None:  # files past this many bytes fail with EFBIG (not a SIGXFSZ kill)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class Proc:
    """A command in a process group of its own, stdout and stderr collected as they come."""

    def __init__(self, argv, cwd, *, file_limit=None, sigint=signal.SIG_DFL):
        self.argv = [str(a) for a in argv]
        self.proc = subprocess.Popen(self.argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=partial(_child_setup, file_limit, sigint))
        self._out, self._err = bytearray(), bytearray()
        self._readers = [threading.Thread(target=self._drain, args=(pipe, buf), daemon=True)
                         for pipe, buf in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(pipe, buf) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            buf.extend(chunk)

    @property
    def stderr(self) -> str:
        return self._err.decode(errors="replace")

    @property
    def stdout(self) -> str:
        return self._out.decode(errors="replace")

    def wait_until(self, ready, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the command ended (status {self.proc.returncode}) before {what}:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {what} after {timeout} s:\n{self.stderr}")
            time.sleep(0.005)

    def signal(self, signum: int) -> None:
        os.killpg(self.proc.pid, signum)  # the whole job, as a terminal or SLURM signals it

    def finish(self, timeout: float = 120) -> int:
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            pytest.fail(f"still running {timeout} s after the signal:\n{self.stderr}")
        for reader in self._readers:
            reader.join(10)
        return status


def run(argv, cwd, *, file_limit=None, timeout: float = 180) -> tuple[int, str, str]:
    proc = Proc(argv, cwd, file_limit=file_limit)
    status = proc.finish(timeout)
    return status, proc.stdout, proc.stderr


def last_line(status: int, stderr: str, want: int, *fragments: str) -> str:
    """Checks the exit status and that stderr ends with one line holding every fragment, with no
    traceback anywhere (tqdm's carriage-return updates count as lines)."""
    assert status == want, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    for fragment in fragments:
        assert fragment in lines[-1], stderr
    first_word = lines[-1].split(":")[0] + ":"
    assert sum(line.startswith(first_word) and ("interrupted" in line or "error" in line)
               for line in lines) <= 1, stderr  # the one message, not one per layer
    return lines[-1]


def snapshot(*roots) -> dict:
    """path -> (sha256, size, mtime_ns) of every file under `roots` (files or folders, hidden included)."""
    files = {}
    for root in map(Path, roots):
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            st = path.stat()
            files[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return files


def leftovers(folder) -> list[str]:
    """Temporary files and folders a command left under `folder`."""
    return sorted(str(p) for p in Path(folder).rglob("*")
                  if p.name.startswith((".tmp-", "resume.tmp", "dgsnet-verify-", "dgsnet-export-")))


def old_file(path: Path, text: str) -> Path:
    path.write_text(text)
    os.utime(path, (OLD_TIME, OLD_TIME))
    return path


# ---------------------------------------------------------------- corpora


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """400 small PNGs: enough that dgsnet-predict at batch 1 runs a few seconds."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    """0_real/ and 1_fake/, 16 images each: noise, and noise with a regular grid on top."""
    from PIL import Image

    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(1)
    for label in ("0_real", "1_fake"):
        (root / label).mkdir()
        for i in range(16):
            pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
            if label == "1_fake":
                pixels[::2, ::2] = 255
            Image.fromarray(pixels).save(root / label / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def reference_teacher(train_data, tmp_path_factory):
    """The uninterrupted stage-1 run every interrupted one must end identical to."""
    out = tmp_path_factory.mktemp("reference") / "teacher"
    status, _, err = run([*DGSNET, "train-teacher", "--data", train_data, "--out", out, *TEACHER], out.parent)
    assert status == 0, err
    return out


def predict_argv(model, images, out):
    # batch 1 on one thread: hundreds of onnxruntime calls, so the signal lands mid-run
    return [*PREDICT, model, images, "--out", out, "--batch", "1", "--workers", "1", "--threads", "1",
            "--no-progress"]


def partial_output_in(folder: Path):
    """True once a temporary output file with data in it exists: predictions are being written."""
    def ready() -> bool:
        for path in folder.iterdir():
            try:
                if path.name.startswith(".tmp-") and path.stat().st_size > 0:
                    return True
            except FileNotFoundError:  # renamed or removed between listing and stat
                pass
        return False
    return ready


# ---------------------------------------------------------------- dgsnet-predict


@pytest.mark.parametrize("signum,status,old", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
                         ids=["ctrl-c-old-output", "sigterm-new-output"])
def test_a_stopped_predict_leaves_the_old_output_or_none(signum, status, old, fp32_export, images, tmp_path):
    model = fp32_export[0]
    out = tmp_path / "preds.jsonl"
    if old:
        old_file(out, '{"path": "earlier run"}\n')
    before = snapshot(tmp_path, images, model)
    proc = Proc(predict_argv(model, images, out), tmp_path)
    proc.wait_until(partial_output_in(tmp_path), "a partial output in the temporary file")
    proc.signal(signum)
    line = last_line(proc.finish(), proc.stderr, status,
                     f"dgsnet-predict: interrupted by {signal.Signals(signum).name}", f"--out {out}")
    assert ("earlier file is unchanged" if old else "no file") in line
    assert snapshot(tmp_path, images, model) == before  # the old output, the inputs and the model
    assert out.exists() == old and leftovers(tmp_path) == []


def test_a_second_ctrl_c_while_stopping_still_ends_in_one_line(fp32_export, images, tmp_path):
    model = fp32_export[0]
    out = old_file(tmp_path / "preds.jsonl", '{"path": "earlier run"}\n')
    before = snapshot(out)
    proc = Proc(predict_argv(model, images, out), tmp_path)
    proc.wait_until(partial_output_in(tmp_path), "a partial output in the temporary file")
    proc.signal(signal.SIGINT)
    proc.signal(signal.SIGINT)  # impatient: the second may land while the first unwinds
    line = last_line(proc.finish(), proc.stderr, 130, "dgsnet-predict:")
    assert "interrupted by SIGINT" in line or "SIGINT again: stopped at once" in line
    assert snapshot(out) == before
    # a forced stop may leave the hidden temporary file, never anything under the output's name
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".tmp-")} == {"preds.jsonl"}


def test_an_ignored_sigint_stays_ignored(fp32_export, images, tmp_path):
    """nohup and background jobs ignore SIGINT on purpose: the run goes on and finishes."""
    model = fp32_export[0]
    out = tmp_path / "preds.jsonl"
    proc = Proc(predict_argv(model, images, out), tmp_path, sigint=signal.SIG_IGN)
    proc.wait_until(partial_output_in(tmp_path), "a partial output in the temporary file")
    proc.signal(signal.SIGINT)
    assert proc.finish() == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 400 and leftovers(tmp_path) == []


@pytest.mark.parametrize("old", [True, False], ids=["old-output", "no-output"])
def test_kill_9_during_predict_leaves_no_partial_output(old, fp32_export, images, tmp_path):
    model = fp32_export[0]
    out = tmp_path / "preds.jsonl"
    if old:
        old_file(out, '{"path": "earlier run"}\n')
    before = snapshot(tmp_path)
    proc = Proc(predict_argv(model, images, out), tmp_path)
    proc.wait_until(partial_output_in(tmp_path), "a partial output in the temporary file")
    proc.signal(signal.SIGKILL)
    assert proc.finish() == -signal.SIGKILL
    after = snapshot(tmp_path)
    # nothing can clean up after kill -9: the hidden temporary file may stay, the output is untouched
    assert {k: v for k, v in after.items() if not Path(k).name.startswith(".tmp-")} == before
    assert out.exists() == old


# ---------------------------------------------------------------- training


def checkpoint_step(out: Path) -> int:
    """The step of the run's resume state; 0 while it is being swapped in."""
    try:
        return json.loads((out / "resume" / "state.json").read_text())["position"]["step"]
    except (OSError, ValueError):
        return 0


def resume_and_finish(command: str, data, out, args, reference=None) -> None:
    """`--resume` ends the run: the finished model is written, the resume state dropped, and the
    weights are those of the uninterrupted run, byte for byte."""
    status, _, err = run([*DGSNET, command, "--data", data, "--out", out, *args, "--resume"], out.parent)
    assert status == 0, err
    assert (out / "model.json").is_file() and not (out / "resume").exists()
    if reference is not None:
        assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_a_stopped_training_run_names_its_checkpoint_and_resumes_to_the_same_weights(
        signum, status, train_data, reference_teacher, tmp_path):
    out = tmp_path / "run"
    proc = Proc([*DGSNET, "train-teacher", "--data", train_data, "--out", out, *TEACHER], tmp_path)
    proc.wait_until((out / "resume" / "state.json").is_file, "a first checkpoint")
    proc.signal(signum)
    last_line(proc.finish(), proc.stderr, status,
              f"dgsnet train-teacher: interrupted by {signal.Signals(signum).name}",
              f"the last checkpoint is {out / 'resume'}", "--resume")
    assert not (out / "model.json").exists() and leftovers(out) == []
    resume_and_finish("train-teacher", train_data, out, TEACHER, reference_teacher)


def test_kill_9_during_training_then_resume_gives_the_uninterrupted_weights(train_data, reference_teacher,
                                                                             tmp_path):
    """The kill lands while a checkpoint is being written when the test catches that moment (its
    staging folder exists), else just after: either way the last complete checkpoint is used."""
    out = tmp_path / "run"
    proc = Proc([*DGSNET, "train-teacher", "--data", train_data, "--out", out, *TEACHER], tmp_path)
    proc.wait_until((out / "resume" / "state.json").is_file, "a first checkpoint")
    proc.wait_until(lambda: (out / "resume.tmp").exists() or checkpoint_step(out) >= 2, "the next checkpoint")
    proc.signal(signal.SIGKILL)
    assert proc.finish() == -signal.SIGKILL
    resume_and_finish("train-teacher", train_data, out, TEACHER, reference_teacher)


def test_a_stopped_stage_2_run_resumes_and_finishes(train_data, reference_teacher, tmp_path):
    out = tmp_path / "dgs"
    args = [*STAGE2, "--teacher", str(reference_teacher)]
    proc = Proc([*DGSNET, "train", "--data", train_data, "--out", out, *args], tmp_path)
    proc.wait_until((out / "resume" / "state.json").is_file, "a first checkpoint")
    proc.signal(signal.SIGINT)
    last_line(proc.finish(), proc.stderr, 130, "dgsnet train: interrupted by SIGINT",
              f"the last checkpoint is {out / 'resume'}", "--resume")
    assert not (out / "model.json").exists() and leftovers(out) == []
    resume_and_finish("train", train_data, out, args)
    meta = json.loads((out / "model.json").read_text())
    assert meta["stage"] == 2 and meta["step"] == 8  # 32 images / batch 4, one epoch


# ---------------------------------------------------------------- eval


def test_a_stopped_eval_leaves_the_old_reports(train_data, reference_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("DGSNET_PROGRESS_SECONDS", "0")  # a progress line per batch: the marker comes at once
    reports = tmp_path / "reports"
    reports.mkdir()
    for name in ("eval.csv", "eval.json", "eval_robustness.csv"):
        old_file(reports / name, f"earlier report {name}\n")
    before = snapshot(reports, train_data, reference_teacher)
    proc = Proc([*DGSNET, "eval", "--ckpt", reference_teacher, "--data", train_data, "--out", reports,
                 "--perturb", "jpeg:90", "blur:1", "--no-plot", "--workers", "0", "--batch-size", "4"], tmp_path)
    proc.wait_until(lambda: "clean/" in proc.stderr, "the first progress line")
    proc.signal(signal.SIGINT)
    last_line(proc.finish(), proc.stderr, 130, "dgsnet eval: interrupted by SIGINT", f"--out {reports}")
    assert snapshot(reports, train_data, reference_teacher) == before and leftovers(reports) == []
