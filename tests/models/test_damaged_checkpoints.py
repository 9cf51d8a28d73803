"""Damaged or forged checkpoint files: every command stops with one line naming the file."""
import hashlib
import json
import os
import pickle
import struct

import pytest

from dgsnet.cli import main
from dgsnet.models import checkpoint as ckpt


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, make_tiny_run, make_test_set):
    root = tmp_path_factory.mktemp("good")
    run = make_tiny_run(root / "run", step=3)
    return run, make_test_set(root / "test", colours=((10, 200, 30), (10, 200, 30)), name="a.png")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creates the marker file when unpickled


def _meta_text(run):
    return (run / ckpt.META_FILE).read_text()


def _damage(run, case):
    meta = json.loads(_meta_text(run))
    model = run / ckpt.MODEL_FILE
    if case == "meta_not_json":
        (run / ckpt.META_FILE).write_text("{ not json")
    elif case == "meta_list":
        (run / ckpt.META_FILE).write_text("[1, 2]")
    elif case == "backbone_string":
        meta["backbone"] = "dgs-tiny"
        (run / ckpt.META_FILE).write_text(json.dumps(meta))
    elif case == "stage_missing":
        del meta["stage"]
        (run / ckpt.META_FILE).write_text(json.dumps(meta))
    elif case == "tensors_truncated":
        model.write_bytes(model.read_bytes()[:100])
    elif case == "tensors_empty":
        model.write_bytes(b"")
    elif case == "tensors_huge_header":
        model.write_bytes(struct.pack("<Q", 2 ** 60) + b"{}")
    elif case == "tensors_missing":
        model.unlink()
    elif case == "pretrained_pickle":  # a pickle that would run code if loaded without weights_only
        (run / "weights.pt").write_bytes(pickle.dumps(_Exploit(str(run.parent / "pwned"))))
        meta["backbone"]["pretrained"] = "weights.pt"
        (run / ckpt.META_FILE).write_text(json.dumps(meta))
        return "weights.pt"
    elif case == "pretrained_folder":
        (run / "weights.safetensors").mkdir()
        meta["backbone"]["pretrained"] = "weights.safetensors"
        (run / ckpt.META_FILE).write_text(json.dumps(meta))
        return "weights.safetensors"
    return {"meta_not_json": ckpt.META_FILE, "meta_list": ckpt.META_FILE, "backbone_string": ckpt.META_FILE,
            "stage_missing": ckpt.META_FILE}.get(case, ckpt.MODEL_FILE)


CASES = ["meta_not_json", "meta_list", "backbone_string", "stage_missing", "tensors_truncated", "tensors_empty",
         "tensors_huge_header", "tensors_missing", "pretrained_pickle", "pretrained_folder"]


def _digest(folder):
    return {p: hashlib.sha256(open(os.path.join(folder, p), "rb").read()).hexdigest()
            for p in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, p))}


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
@pytest.mark.parametrize("case", CASES)
def test_damaged_checkpoint_gives_one_line_naming_the_file(good_run, tmp_path, capsys, case, command):
    import shutil

    src, test_root = good_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    bad_file = _damage(run, case)
    before = _digest(run)
    argv = {"eval": ["eval", "--ckpt", str(run), "--data", str(test_root), "--out", str(tmp_path / "rep"),
                     "--workers", "0"],
            "predict": ["predict", "--ckpt", str(run), str(test_root), "--out", str(tmp_path / "p.jsonl")],
            "export": ["export", "--ckpt", str(run), "--out", str(tmp_path / "d.onnx")]}[command]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len([l for l in err.splitlines() if "error" in l]) == 1, err
    assert bad_file in err, err
    assert _digest(run) == before  # nothing in the run was changed
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "d.onnx").exists()
    assert not (tmp_path / "pwned").exists()  # no code from a checkpoint ran


def test_damaged_resume_state_is_named(tmp_path, capsys):
    from dgsnet.train import TrainConfig, train_teacher
    from tests.train.toy_data import DiesAfter, Interrupt, ToyDataset

    base = dict(model="dgs-tiny", pretrained=None, batch_size=4, workers=0, ckpt_every=1, teacher_epochs=1)
    out = str(tmp_path / "run")
    with pytest.raises(Interrupt):
        train_teacher(TrainConfig(**base, out=out), DiesAfter(ToyDataset(16), 4 * 2 + 1))
    state = os.path.join(out, "resume", "state.json")
    open(state, "w").write("[]")
    with pytest.raises(ValueError, match="state.json"):
        train_teacher(TrainConfig(**base, out=out), ToyDataset(16), resume=True)
