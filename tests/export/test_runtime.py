"""dgsnet_export: the torch-free runtime agrees with torch on real photos and survives bad inputs."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dgsnet.image import preprocess
from dgsnet.image.decode import load_rgb
from dgsnet_export import (MetadataError, ModelInfo, ModelLoadError, OnnxDetector, collect_inputs,
                           provider_chain, sigmoid)
from dgsnet_export.runtime.cli import main as predict_main
from tests.image.test_torch_free import BLOCK_TORCH  # torch unimportable in a `python -c` child

EXPORT_DIR = Path(__file__).resolve().parents[2] / "export"


def _torch_predict(detector, path) -> float:
    """What `dgsnet predict` computes: the same preprocessing, then the torch detector."""
    tile = preprocess.normalize(preprocess.select_patches(load_rgb(path)), preprocess.IMAGENET_MEAN,
                                preprocess.IMAGENET_STD)
    with torch.no_grad():
        return float(detector(torch.from_numpy(tile[None]))[0])


def test_runtime_on_real_photos_agrees_with_torch(detector, fp32_export, photo_dir):
    runtime = OnnxDetector(fp32_export[0], provider="cpu")
    records = list(runtime.predict_paths([photo_dir], batch_size=4))
    assert [Path(r["path"]).name for r in records] == sorted(p.name for p in photo_dir.iterdir())
    logits = []
    for record in records:
        expected = _torch_predict(detector, record["path"])
        assert record["logit"] == pytest.approx(expected, abs=1e-4)
        assert record["probability"] == pytest.approx(sigmoid(expected), abs=1e-5)
        assert record["label"] == ("generated" if record["probability"] >= 0.5 else "real")
        logits.append(expected)
    assert np.ptp(logits) > 0.05  # the photos get different scores: agreement is not a constant


def test_uint8_graph_gives_the_same_scores_as_the_float_graph(detector, fp32_export, photo_dir, tmp_path):
    from dgsnet_export.exporter import export_detector

    export_detector(detector, tmp_path / "tiles.onnx", with_preprocessing=True, metadata={"backbone": "dgs-tiny"})
    tiles = OnnxDetector(tmp_path / "tiles.onnx", provider="cpu")
    floats = OnnxDetector(fp32_export[0], provider="cpu")
    assert tiles.info.input_dtype == "uint8" and not tiles.preprocess.normalization
    a = [r["logit"] for r in tiles.predict_paths([photo_dir])]
    b = [r["logit"] for r in floats.predict_paths([photo_dir])]
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def _bad_inputs(photo_dir, tmp_path):
    """A folder with photos + a truncated JPEG, and explicitly named non-image and missing files."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    photos = sorted(photo_dir.iterdir())[:3]
    for p in photos:
        (folder / p.name).write_bytes(p.read_bytes())
    jpeg = next(p for p in photos if p.suffix == ".jpg").read_bytes()
    (folder / "1a_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "readme.md").write_text("not an image, skipped inside folders")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image, named explicitly")
    return folder, notes, tmp_path / "missing.png"


def test_corrupt_and_non_image_inputs_do_not_stop_the_batch(fp32_export, photo_dir, tmp_path, capsys):
    folder, notes, missing = _bad_inputs(photo_dir, tmp_path)
    out = tmp_path / "preds.jsonl"
    code = predict_main([str(fp32_export[0]), str(notes), str(folder), str(missing), "--out", str(out),
                         "--batch", "2", "--provider", "cpu"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = {Path(r["path"]).name: r["error"] for r in records if "error" in r}
    scored = [r for r in records if "error" not in r]
    assert code == 1  # some inputs failed; the others were all scored
    assert set(errors) == {"notes.txt", "1a_truncated.jpg", "missing.png"}
    assert "notes.txt" in errors["notes.txt"] and "does not exist" in errors["missing.png"]
    assert len(scored) == 3 and all(0.0 < r["probability"] < 1.0 for r in scored)
    assert Path(records[0]["path"]).name == "notes.txt"  # input order is kept
    summary = capsys.readouterr().err
    assert "3 images scored" in summary and "3 unreadable" in summary and "1 non-image files" in summary


def test_cli_prints_json_lines_to_stdout(fp32_export, photo_dir, capsys):
    code = predict_main([str(fp32_export[0]), str(photo_dir), "--provider", "cpu", "--threshold", "0.999"])
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert code == 0 and len(records) == len(list(photo_dir.iterdir()))
    assert all(set(r) == {"path", "logit", "probability", "label"} for r in records)
    assert all(r["label"] == ("generated" if r["probability"] >= 0.999 else "real") for r in records)


def test_cli_refuses_a_model_without_dgsnet_metadata(tmp_path, photo_dir, capsys):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 3, 224, 224])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 3, 224, 224])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    assert predict_main([str(tmp_path / "m.onnx"), str(photo_dir)]) == 2
    assert "dgsnet export" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="no such model file"):
        OnnxDetector(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match="junk.onnx"):
        OnnxDetector(tmp_path / "junk.onnx")


def test_unwritable_output_is_one_clear_error(fp32_export, photo_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "preds.jsonl"
    assert predict_main([str(fp32_export[0]), str(photo_dir), "--out", str(out), "--provider", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "writable" in err[0]


def test_metadata_errors_name_the_problem():
    with pytest.raises(MetadataError, match="dgsnet export"):
        ModelInfo.from_props({})
    with pytest.raises(MetadataError, match="newer"):
        ModelInfo.from_props({"format": "dgsnet-detector/9"})
    with pytest.raises(MetadataError, match="'backbone' is missing|is missing"):
        ModelInfo.from_props({"format": "dgsnet-detector/1"})


def test_provider_chain_falls_back_tensorrt_cuda_cpu():
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain("auto", everything) == (everything, [])
    assert provider_chain("cuda", everything) == (everything[1:], [])
    assert provider_chain("cpu", everything) == (["CPUExecutionProvider"], [])
    chain, notes = provider_chain("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert chain == everything[1:] and "TensorrtExecutionProvider" in notes[0]
    chain, notes = provider_chain("cuda", ["CPUExecutionProvider"])
    assert chain == ["CPUExecutionProvider"] and "onnxruntime-gpu" in notes[0]
    assert provider_chain("auto", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], [])
    with pytest.raises(ValueError, match="--provider"):
        provider_chain("gpu", everything)


def test_collect_inputs_expands_folders_and_keeps_named_files(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.PNG", "1.jpg", ".hidden.jpg", "notes.txt", "b/3.webp"):
        (tmp_path / name).write_bytes(b"x")
    found = collect_inputs([tmp_path / "notes.txt", tmp_path, tmp_path / "1.jpg"])
    assert [p.relative_to(tmp_path).as_posix() for p in found.paths] == ["notes.txt", "1.jpg", "b/2.PNG", "b/3.webp"]
    assert [p.name for p in found.skipped] == ["notes.txt"]


def test_sigmoid_is_stable_for_large_logits():
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
    assert sigmoid(0.3) == pytest.approx(1 / (1 + math.exp(-0.3)))


NO_TORCH = BLOCK_TORCH + r"""
import json
model, photo = sys.argv[2:4]
import dgsnet_export
from dgsnet_export.cli import main
code = main([model, photo, "--provider", "cpu", "--no-progress"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision", "onnx"))
try:  # the block has teeth: torch really cannot be imported in this process
    import torch
    blocked = False
except ImportError:
    blocked = True
print(json.dumps({"code": code, "heavy": heavy, "torch_blocked": blocked}), file=sys.stderr)
"""


def test_runtime_runs_where_torch_cannot_be_imported(detector, fp32_export, photo_dir):
    photo = sorted(photo_dir.iterdir())[0]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(EXPORT_DIR), str(fp32_export[0]), str(photo)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status == {"code": 0, "heavy": [], "torch_blocked": True}
    (record,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert record["logit"] == pytest.approx(_torch_predict(detector, photo), abs=1e-4)
