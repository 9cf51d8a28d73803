"""Training fails fast and leaves nothing behind: missing pretrained weights are found in a second
(not after a minute of download retries), and a run that stops before its first step leaves no
run folder."""
import os
import time

import pytest

from dgsnet.cli import main
from dgsnet.models import weights
from dgsnet.train import TrainConfig, train_teacher
from tests.train.toy_data import Unreadable

OFFLINE_HINTS = ("--pretrained openai", "--pretrained none", "--pretrained /path/to/weights.bin|.safetensors",
                 "HF_HUB_OFFLINE=1")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache and a fresh probe: what a machine that never downloaded sees."""
    import open_clip  # noqa: F401 - imported before any timing

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "_reachable", {})
    return tmp_path / "hf-cache"


def _train_teacher(tmp_path, capsys, *argv):
    out = tmp_path / "run"
    start = time.perf_counter()
    code = main(["train-teacher", "--data", str(tmp_path / "data"), "--out", str(out), *argv])
    return code, time.perf_counter() - start, capsys.readouterr().err, out


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "unreachable hub"])
def test_uncached_pretrained_weights_fail_at_once_with_the_ways_on(offline, empty_cache, tmp_path, capsys,
                                                                    make_test_set, monkeypatch):
    make_test_set(tmp_path / "data")
    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a port nothing listens on: refused at once, whatever this machine's network
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code, seconds, err, out = _train_teacher(tmp_path, capsys)  # the defaults: ViT-L-14, openai
    assert code == 2 and "Traceback" not in err and seconds < 10, (seconds, err)
    line = err.strip().splitlines()[-1]
    assert all(hint in line for hint in OFFLINE_HINTS), line
    assert "HF_HUB_OFFLINE=1 is set" in line if offline == "HF_HUB_OFFLINE" else "cannot be reached" in line
    assert not out.exists() and not empty_cache.exists()


def test_the_real_hub_without_network_fails_in_seconds(empty_cache, tmp_path, capsys, make_test_set):
    if weights.unreachable(weights.hf_endpoint()) is None:
        pytest.skip("the hub answers here: this checks the offline path")
    make_test_set(tmp_path / "data")
    code, seconds, err, out = _train_teacher(tmp_path, capsys)
    assert code == 2 and seconds < 10 and "--pretrained none" in err and not out.exists(), (seconds, err)


def test_cached_weights_are_found_without_the_network(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    where = weights.source("ViT-L-14", "openai")
    snapshot = empty_cache / f"models--{where['hf'].replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / where["files"][0]).write_bytes(b"weights")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    assert weights.check_available("ViT-L-14", "openai") == str(snapshot / where["files"][0])
    assert weights._reachable == {}  # found in the cache: no probe at all


def test_a_missing_local_weights_file_fails_before_the_run_folder(tmp_path, capsys, make_test_set):
    make_test_set(tmp_path / "data")
    code, _, err, out = _train_teacher(tmp_path, capsys, "--model", "dgs-tiny",
                                       "--pretrained", str(tmp_path / "absent.safetensors"))
    assert code == 2 and "absent.safetensors does not exist" in err and not out.exists(), err


def test_bad_data_fails_before_the_model_and_the_run_folder(tmp_path, capsys):
    code, _, err, out = _train_teacher(tmp_path, capsys, "--model", "dgs-tiny", "--pretrained", "none")
    assert code == 2 and "dataset folder does not exist" in err and not out.exists(), err
    assert "random-initialised" not in err  # no backbone was built


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(model="dgs-tiny", pretrained=None, batch_size=4, workers=0, teacher_epochs=1, out=str(out))
    with pytest.raises(RuntimeError, match="ran no training step"):
        train_teacher(cfg, Unreadable(8))
    assert not out.exists()  # no config.yaml, no logs, no folder


def test_a_failed_run_keeps_a_folder_that_was_there_before(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = TrainConfig(model="dgs-tiny", pretrained=None, batch_size=4, workers=0, teacher_epochs=1, out=str(out))
    with pytest.raises(RuntimeError, match="ran no training step"):
        train_teacher(cfg, Unreadable(8))
    assert (out / "notes.txt").read_text() == "mine"
    assert os.path.isdir(out)
