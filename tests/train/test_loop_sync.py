"""The training loop reads nothing from the device between log lines: loss terms stay on the device
until a log line (or a checkpoint, a validation pass) is due, and are then exactly what a read per
step gave; a non-finite loss still stops the run, naming its step and batch, before any checkpoint
holds its weights. DataLoader workers (started anew each epoch: persistent_workers=False) see each
epoch's number. On a GPU (gpu-marked), the number of synchronisations does not grow with the steps,
also with the patch selection on the device (--patch-selection device)."""
import json
import math
import os
import warnings

import pytest
import torch

from dgsnet.models import checkpoint as ckpt
from dgsnet.train import NonFiniteLossError, TrainConfig, train_dgs, train_teacher
from dgsnet.train.sampler import EpochBatchSampler
from dgsnet.train.trainer import _TermWindow
from tests.train.toy_data import PoisonedFrom, ToyDataset

BASE = dict(model="dgs-tiny", pretrained=None, batch_size=8, workers=0, lr=2e-3, teacher_lr=2e-2,
            ckpt_every=100, lora_dropout=0.5)


@pytest.fixture(scope="module")
def data():
    return ToyDataset(48)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, data):
    out = str(tmp_path_factory.mktemp("sync_teacher"))
    train_teacher(TrainConfig(**BASE, out=out, teacher_epochs=1, log_every=1), data)
    return out


def _records(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as fh:
        return [r for r in map(json.loads, fh) if r["event"] == "train"]


# ---------------------------------------------------------------- the window itself

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("count", [1, 7, 13])
def test_window_sums_equal_a_read_per_step(dtype, count):
    gen = torch.Generator().manual_seed(count)
    keys = ("total", "img", "text")
    window, want = _TermWindow(), {k: 0.0 for k in keys}
    for step in range(count):
        terms = {k: (torch.randn((), generator=gen, dtype=dtype) * 10 ** (i - 1)) for i, k in enumerate(keys)}
        window.add(step, terms["total"].clone(), terms, [f"p{step}"], 3)
        for k in keys:  # what the loop did before: float() of every term, summed in order
            want[k] += float(terms[k])
    assert window.drain() is None and len(window.rows) == count
    assert window.sums() == want  # exact, not approximately
    assert window.images == 3 * count and (window.first_step, window.last_step) == (0, count - 1)
    assert window.drain() is None and window.sums() == want  # a second drain adds nothing


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_window_finds_the_first_non_finite_loss(bad):
    window = _TermWindow()
    for step in range(9):
        loss = torch.tensor(bad if step in (4, 6) else 0.5 + step)
        window.add(step, loss, {"img": torch.tensor(float(step))}, [f"s{step}/{i}" for i in range(5)], 1)
        if step == 2:
            assert window.drain() is None  # an early drain (a checkpoint) keeps what follows
    found = window.drain()
    assert found["step"] == 4 and found["paths"] == ["s4/0", "s4/1", "s4/2"]
    assert found["terms"] == {"img": 4.0} and (math.isnan(found["loss"]) if bad != bad else found["loss"] == bad)
    assert len(window.rows) == 4  # the steps before the bad one, nothing after it
    assert window.drain() is found


def test_window_of_an_empty_step_range():
    window = _TermWindow()
    assert window.drain() is None and window.sums() == {} and window.rows == []


# ---------------------------------------------------------------- a real run

def test_log_lines_are_the_exact_means_of_their_steps(tmp_path, data, teacher_dir):
    """A run logging every step and the same run logging every 4th: each window's means are the
    float64 means of its steps' values, and logging does not change the weights."""
    runs = {}
    for every in (1, 4):
        out = str(tmp_path / f"every{every}")
        train_dgs(TrainConfig(**BASE, out=out, teacher=teacher_dir, epochs=2, log_every=every), data)
        runs[every] = out
    per_step, windows = _records(runs[1]), _records(runs[4])
    assert len(per_step) == 12 and [r["step"] for r in windows] == [4, 8, 12]
    for r in windows:
        steps = per_step[r["step"] - 4:r["step"]]
        for key in ("loss_total", "loss_img", "loss_text", "loss_align", "loss_teacher"):
            total = 0.0
            for s in steps:
                total += s[key]
            assert r[key] == total / 4, (r["step"], key)
            assert r[key] == pytest.approx(math.fsum(s[key] for s in steps) / 4, rel=1e-12, abs=1e-15)
        assert r["images_per_s"] > 0 and r["lr"] == steps[-1]["lr"]
    want, got = ckpt.read_model_tensors(runs[1]), ckpt.read_model_tensors(runs[4])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_a_nan_loss_between_log_lines_stops_before_the_next_checkpoint(tmp_path, data, teacher_dir):
    """48 images / 8 = 6 steps an epoch; NaN from step 6 (epoch 1, batch 0). Logs every 5 steps,
    checkpoints every 7: the check before step 7's checkpoint stops the run, which leaves the
    epoch-end checkpoint of step 6, all finite."""
    out = str(tmp_path / "nan")
    cfg = TrainConfig(**{**BASE, "ckpt_every": 7}, out=out, teacher=teacher_dir, epochs=3, log_every=5)
    with pytest.raises(NonFiniteLossError) as err:
        train_dgs(cfg, PoisonedFrom(data, 6 * 8))
    first = EpochBatchSampler(48, 8, cfg.seed, 1).order()[:3]
    paths = [f"toy/{i:03d}.png" for i in first]
    msg = str(err.value)
    assert f"the loss is nan at step 6 (the first non-finite of steps 5-6, checked every --log-every 5" in msg
    assert f"batch starts with {paths}" in msg and "Lower --lr" in msg and "resume with --resume" in msg
    assert os.path.join(out, "resume") in msg  # the last good checkpoint is named
    state = json.load(open(os.path.join(out, "resume", "state.json")))
    assert state["position"]["step"] == 6
    from safetensors.torch import load_file
    for name in os.listdir(os.path.join(out, "resume")):
        if name.endswith(".safetensors"):
            for k, v in load_file(os.path.join(out, "resume", name)).items():
                assert torch.isfinite(v).all(), (name, k)
    assert [r["step"] for r in _records(out)] == [5]  # the window with the bad step is not logged


def test_a_nan_loss_at_the_first_step_names_step_0(tmp_path, data, teacher_dir):
    with pytest.raises(NonFiniteLossError, match=r"the loss is nan at step 0 \(the first non-finite of "
                                                 r"steps 0-2, .*Last good checkpoint: none yet"):
        train_dgs(TrainConfig(**BASE, out=str(tmp_path / "n0"), teacher=teacher_dir, log_every=3),
                  PoisonedFrom(data, 0))


# ---------------------------------------------------------------- workers and epochs

class EpochShifted(torch.utils.data.Dataset):
    """Images that depend on the epoch set through set_epoch, as augmentation does."""

    def __init__(self, inner):
        self.inner, self.epoch = inner, 0
        self.captions = inner.captions

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        img, y, c, p = self.inner[i]
        return img + 0.5 * self.epoch, y, c, p


def test_workers_see_every_epoch(tmp_path, data, teacher_dir):
    """Workers hold their own copy of the dataset; the weights equal those of the in-process
    loader only if each worker used the epoch the main process was in."""
    runs = {}
    for workers in (0, 2):
        out = str(tmp_path / f"w{workers}")
        cfg = TrainConfig(**{**BASE, "workers": workers, "lora_dropout": 0.0}, out=out, teacher=teacher_dir,
                          epochs=3, log_every=6)
        train_dgs(cfg, EpochShifted(data))
        runs[workers] = out
    want, got = ckpt.read_model_tensors(runs[0]), ckpt.read_model_tensors(runs[2])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    assert [r["loss_total"] for r in _records(runs[0])] == [r["loss_total"] for r in _records(runs[2])]


# ---------------------------------------------------------------- GPU: no synchronisation per step

def _sync_warnings(cfg, data) -> int:
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_dgs(cfg, data) if data is not None else train_dgs(cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.gpu
def test_no_device_synchronisation_per_step(tmp_path, data):
    """Synchronisations (torch.cuda's sync debug mode warns on each) do not grow with the number of
    steps between log lines: 4 more steps in a run add none."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    teacher = str(tmp_path / "t")
    train_teacher(TrainConfig(**BASE, out=teacher, teacher_epochs=1, device="cuda", amp="off"), data)
    counts = {}
    for steps in (2, 6):
        cfg = TrainConfig(**{**BASE, "lora_dropout": 0.0}, out=str(tmp_path / f"s{steps}"), teacher=teacher,
                          device="cuda", amp="off", max_steps=steps, log_every=1000)
        counts[steps] = _sync_warnings(cfg, data)
    assert counts[6] == counts[2], counts


def _folder(root, sizes) -> str:
    """A folder dataset of 24 images per class, of the given sizes in turn."""
    import numpy as np
    from PIL import Image

    from tests.data.test_select_device import textured

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for label in (0, 1):
        sub = root / ("0_real", "1_fake")[label]
        sub.mkdir()
        for i in range(24):
            h, w = sizes[(i + label) % len(sizes)]
            Image.fromarray(textured(rng, h, w)).save(sub / f"{i}.png")
    return str(root)


@pytest.mark.gpu
@pytest.mark.parametrize("same_size", [True, False], ids=["stacked", "mixed-sizes"])
def test_no_synchronisation_per_step_with_device_patch_selection(tmp_path, same_size):
    """--patch-selection device: the selection queued each step reads nothing back (its doubt flags
    are copied to pinned memory and read one batch later, an event wait that leaves the previous
    step queued); 4 more steps add no synchronisation. Same-size batches take the stacked path."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    sizes = [(256, 256)] if same_size else [(224, 224), (257, 311), (100, 57), (300, 240)]
    folder = _folder(tmp_path / "data", sizes)
    common = dict(BASE, batch_size=4, data=folder, device="cuda", amp="off", patch_selection="device",
                  lora_dropout=0.0)
    teacher = str(tmp_path / "t")
    train_teacher(TrainConfig(**common, out=teacher, teacher_epochs=1))
    counts = {steps: _sync_warnings(TrainConfig(**common, out=str(tmp_path / f"s{steps}"), teacher=teacher,
                                                max_steps=steps, log_every=1000), None)
              for steps in (2, 6)}
    assert counts[6] == counts[2], counts


# ---------------------------------------------------------------- worker threads

class ThreadWidths(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        from dgsnet.blas import set_blas_threads

        blas = set_blas_threads(1)  # the width the worker had (setting 1 again changes nothing here)
        return torch.get_num_threads(), -1 if blas is None else blas


def test_workers_run_one_torch_and_one_blas_thread():
    from dgsnet.blas import set_blas_threads
    from dgsnet.data.dataset import worker_init

    main_blas = set_blas_threads(os.cpu_count())  # the main process keeps (or gets back) a full pool
    if main_blas is None:
        pytest.skip("numpy's BLAS here is not an OpenBLAS this process can size")
    set_blas_threads(main_blas)
    loader = torch.utils.data.DataLoader(ThreadWidths(), batch_size=None, num_workers=2, worker_init_fn=worker_init)
    assert [list(x) for x in loader] == [[1, 1], [1, 1]]
    if os.cpu_count() > 1:  # without it a worker inherits the machine-wide pool
        plain = torch.utils.data.DataLoader(ThreadWidths(), batch_size=None, num_workers=1)
        assert [blas for _, blas in plain][0] == main_blas > 1
