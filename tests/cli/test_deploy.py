"""`dgsnet export` and `dgsnet predict` on a trained run directory (dgsnet.cli.deploy)."""
import argparse
import json
import os
import shlex
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dgsnet.cli.deploy import add_commands
from dgsnet_export.runtime.cli import main as onnx_predict_main

from tests.conftest import write_trained_run


def dgsnet(argv):
    """What dgsnet.cli does with the subcommands add_commands registers."""
    parser = argparse.ArgumentParser(prog="dgsnet")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("cli") / "detector.onnx"
    assert dgsnet(["export", "--ckpt", run_dir, "--out", out, "--tensorrt", "--opt-batch", "8",
                   "--max-batch", "32"]) == 0
    return out


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_exported_checkpoint_is_the_student_with_lora_merged(trained_run, exported):
    _, model = trained_run
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((5, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():  # the unmerged model: LoRA applied on the fly, as in training
        student = model.student_head(model.student_features(images)).squeeze(-1).numpy()
        teacher = model.teacher_head(model.teacher_features(images)).squeeze(-1).numpy()
        lora_off = model.student_head(model.teacher_features(images)).squeeze(-1).numpy()
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probabilities"], {"images": images.numpy()})
    np.testing.assert_allclose(logits, student, atol=1e-4 * max(1.0, np.abs(student).max()), rtol=0)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-student)), atol=1e-5, rtol=0)
    assert np.abs(student - lora_off).max() > 0.1 and np.abs(student - teacher).max() > 0.1  # LoRA matters


def test_export_records_checkpoint_metadata_report_and_tensorrt_command(trained_run, exported, capsys):
    run_dir, model = trained_run
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert props["backbone"] == "dgs-tiny" and props["checkpoint"] == str(run_dir) and props["head"] == "student"
    assert json.loads(props["normalization"])["name"] == "imagenet" and float(props["threshold"]) == 0.5
    assert json.loads(props["lora"]) == model.lora_config.to_dict() and props["stage"] == "2"
    assert props["visual_fingerprint"] == model.visual_fingerprint
    record = json.loads(exported.with_suffix(".export.json").read_text())
    assert record["batch_sizes"] == [1, 7] and record["max_rel_error"] <= record["atol"] == 1e-4
    command = shlex.split(record["tensorrt"]["command"])
    assert command[0] == "trtexec" and "--fp16" in command
    assert {"--minShapes=images:1x3x224x224", "--optShapes=images:8x3x224x224",
            "--maxShapes=images:32x3x224x224", f"--onnx={exported}"} <= set(command)
    assert record["tensorrt"]["command"] in exported.with_suffix(".trtexec.sh").read_text()
    assert os.access(exported.with_suffix(".trtexec.sh"), os.X_OK)  # a script, ready to run
    assert record["tensorrt"]["engine"] is None  # no TensorRT on this machine: said, not built
    assert not exported.with_suffix(".engine").exists()


def test_torch_predict_and_onnx_runtime_give_the_same_records(trained_run, exported, photo_dir, tmp_path):
    run_dir, _ = trained_run
    folder = tmp_path / "inputs"
    folder.mkdir()
    for p in sorted(photo_dir.iterdir()):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "2_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # corrupt image
    (folder / "list.csv").write_text("a,b\n")  # not an image: skipped inside a folder
    text = tmp_path / "note.txt"
    text.write_text("named explicitly, so it is tried and reported")
    torch_out, onnx_out = tmp_path / "torch.jsonl", tmp_path / "onnx.jsonl"
    assert dgsnet(["predict", "--ckpt", run_dir, folder, text, "--out", torch_out, "--batch", "3"]) == 1
    assert onnx_predict_main([str(exported), str(folder), str(text), "--out", str(onnx_out), "--batch", "4",
                              "--provider", "cpu"]) == 1
    by_torch, by_onnx = _jsonl(torch_out), _jsonl(onnx_out)
    assert [r["path"] for r in by_torch] == [r["path"] for r in by_onnx]
    errors = {Path(r["path"]).name for r in by_torch if "error" in r}
    assert errors == {"2_broken.png", "note.txt"} == {Path(r["path"]).name for r in by_onnx if "error" in r}
    scored = [(a, b) for a, b in zip(by_torch, by_onnx) if "error" not in a]
    assert len(scored) == len(list(photo_dir.iterdir()))
    for a, b in scored:
        assert b["logit"] == pytest.approx(a["logit"], abs=1e-4 * max(1.0, abs(a["logit"])))
        assert b["probability"] == pytest.approx(a["probability"], abs=1e-5)
        assert a["label"] == ("generated" if a["probability"] >= 0.5 else "real")
        assert b["label"] == a["label"] or abs(a["probability"] - 0.5) < 1e-5
    assert np.ptp([a["logit"] for a, _ in scored]) > 0.1  # the photos are told apart


def test_published_layout_agrees_between_torch_and_onnx_and_moves_scores(trained_run, exported, photo_dir,
                                                                          tmp_path):
    """--preset published (shuffled layout per file name, PIL decoding) in both predict commands."""
    run_dir, _ = trained_run
    outs = {}
    for name, argv in {"torch": ["predict", "--ckpt", run_dir, photo_dir, "--preset", "published"],
                       "raster": ["predict", "--ckpt", run_dir, photo_dir]}.items():
        outs[name] = tmp_path / f"{name}.jsonl"
        assert dgsnet([*argv, "--out", outs[name]]) == 0
    outs["onnx"] = tmp_path / "onnx.jsonl"
    assert onnx_predict_main([str(exported), str(photo_dir), "--out", str(outs["onnx"]), "--provider", "cpu",
                              "--patch-order", "shuffle", "--decode", "pil"]) == 0
    shuffled, onnx, raster = (_jsonl(outs[k]) for k in ("torch", "onnx", "raster"))
    for a, b in zip(shuffled, onnx):
        assert a["path"] == b["path"] and b["logit"] == pytest.approx(a["logit"], abs=1e-4 * max(1.0, abs(a["logit"])))
    assert max(abs(a["logit"] - r["logit"]) for a, r in zip(shuffled, raster)) > 1e-3  # the layout matters


def test_stage1_run_predicts_with_the_teacher_probe(tmp_path, photo_dir):
    model = write_trained_run(tmp_path / "stage1", stage=1, seed=2)
    photo = sorted(photo_dir.iterdir())[1]
    out = tmp_path / "p.jsonl"
    assert dgsnet(["predict", "--ckpt", tmp_path / "stage1", photo, "--out", out]) == 0
    (record,) = _jsonl(out)
    from dgsnet.image.decode import load_rgb
    from dgsnet.image.preprocess import Preprocess

    x = torch.from_numpy(Preprocess("imagenet")(load_rgb(photo))[None])
    with torch.no_grad():
        expected = float(model.teacher_head(model.teacher_features(x)))
        student = float(model.student_head(model.student_features(x)))
    assert record["logit"] == pytest.approx(expected, abs=1e-4 * max(1.0, abs(expected)))
    assert abs(expected - student) > 1e-3  # the teacher was really used
    with pytest.raises(ValueError, match="stage-1 run"):
        dgsnet(["predict", "--ckpt", tmp_path / "stage1", photo, "--head", "student"])


def test_bad_arguments_fail_with_one_clear_error(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        dgsnet(["export", "--ckpt", tmp_path / "absent", "--out", tmp_path / "d.onnx"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.json"):
        dgsnet(["export", "--ckpt", tmp_path / "empty", "--out", tmp_path / "d.onnx"])
    with pytest.raises(ValueError, match=r"\*\.onnx"):
        dgsnet(["export", "--ckpt", run_dir, "--out", tmp_path / "d.txt"])
    with pytest.raises(ValueError, match="min <= opt <= max"):
        dgsnet(["export", "--ckpt", run_dir, "--out", tmp_path / "d.onnx", "--opt-batch", "128"])
    with pytest.raises(FileNotFoundError, match="no image files"):
        dgsnet(["predict", "--ckpt", run_dir, tmp_path / "empty"])
    with pytest.raises(SystemExit):
        dgsnet(["predict", "--ckpt", run_dir, tmp_path, "--threshold", "1.5"])
    assert "not a probability" in capsys.readouterr().err
    assert not (tmp_path / "d.onnx").exists()
