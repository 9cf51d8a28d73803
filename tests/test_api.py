"""The documented Python API (dgsnet/__init__.py, dgsnet/api.py): lazy torch-free exports, load,
predict on paths / PIL images / arrays, predict_folder, and dgs_objective's default backend."""
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dgsnet
from tests.image.test_torch_free import BLOCK_TORCH  # torch unimportable in a `python -c` child

EXPORT_DIR = Path(__file__).resolve().parents[1] / "export"
API = {"load", "Detector", "dgs_objective", "TrainConfig", "train_teacher", "train_dgs",
       "evaluate_checkpoint", "export_onnx"}


@pytest.fixture(scope="module")
def run_detector(trained_run):
    return dgsnet.load(trained_run[0], device="cpu")


@pytest.fixture(scope="module")
def run_export(trained_run, tmp_path_factory):
    """The trained run exported to ONNX through the API's own export_onnx."""
    out = tmp_path_factory.mktemp("api") / "run.onnx"
    dgsnet.export_onnx(trained_run[0], out, exporter="torchscript")  # 4x quicker than dynamo here
    return out


@pytest.fixture
def photos(photo_dir):
    return sorted(photo_dir.iterdir())


# ------------------------------------------------------------------ the package's exports

def test_import_dgsnet_is_torch_free_and_lists_the_api():
    code = BLOCK_TORCH + r"""
import json
import dgsnet
names = sorted(dgsnet.__all__)
listed = all(n in dir(dgsnet) for n in names)
loaded = dgsnet.load.__module__  # dgsnet.api: torch-free itself
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "open_clip", "torchvision", "onnx"})
print(json.dumps({"names": names, "listed": listed, "loaded": loaded, "heavy": heavy}))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(EXPORT_DIR)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert API <= set(status["names"]) and status["listed"]
    assert status["loaded"] == "dgsnet.api" and status["heavy"] == []


def test_every_exported_name_resolves():
    from dgsnet.evaluate import evaluate_checkpoint
    from dgsnet.surgery import dgs_objective
    from dgsnet.train import TrainConfig, train_dgs, train_teacher
    from dgsnet_export.exporter import export_checkpoint

    for name in dgsnet.__all__:
        assert getattr(dgsnet, name) is not None, name
    assert (dgsnet.dgs_objective, dgsnet.TrainConfig, dgsnet.train_teacher, dgsnet.train_dgs,
            dgsnet.evaluate_checkpoint, dgsnet.export_onnx) == (
        dgs_objective, TrainConfig, train_teacher, train_dgs, evaluate_checkpoint, export_checkpoint)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dgsnet.nope  # noqa: B018


def test_dgs_objective_defaults_to_the_auto_backend_and_matches_the_reference():
    from tests.surgery.independent import Problem, assert_grads_close, objective_grads

    assert inspect.signature(dgsnet.dgs_objective).parameters["backend"].default == "auto"
    prob = Problem(batch=9, dim=11, seed=5)
    want_out, want, _ = objective_grads(prob, backend="reference")
    prob.zero_grad()
    feats = prob.net(prob.x)
    out = dgsnet.dgs_objective(feats, prob.teacher_feats, prob.text_feats, prob.labels, prob.student_head,
                               prob.teacher_head, prob.text_head, eps=1e-6)  # no backend: the default
    out.total.backward()
    assert_grads_close(prob.grads(), want)
    assert out.total.item() == pytest.approx(want_out.total.item(), rel=1e-9)


# ------------------------------------------------------------------ load

def test_the_run_directory_and_its_onnx_export_give_the_same_probabilities(run_detector, run_export, photo_dir):
    onnx = dgsnet.load(run_export, provider="cpu")
    assert (run_detector.engine, onnx.engine) == ("torch", "onnxruntime")
    assert run_detector.labels == onnx.labels == ("real", "generated")
    assert run_detector.threshold == onnx.threshold == 0.5
    by_torch, by_onnx = run_detector.predict_folder(photo_dir), onnx.predict_folder(photo_dir)
    assert [r["path"] for r in by_torch] == [r["path"] for r in by_onnx] and len(by_torch) == 6
    np.testing.assert_allclose([r["probability"] for r in by_onnx], [r["probability"] for r in by_torch],
                               atol=1e-4, rtol=0)
    torch_logits = np.array([r["logit"] for r in by_torch])
    np.testing.assert_allclose([r["logit"] for r in by_onnx], torch_logits, rtol=1e-4, atol=1e-4)
    assert np.ptp(torch_logits) > 1.0  # the photos score differently: agreement is not a constant
    assert [r["label"] for r in by_onnx] == [r["label"] for r in by_torch]


def test_loading_an_onnx_file_never_imports_torch(fp32_export, photos):
    code = BLOCK_TORCH + r"""
import json
import numpy as np
from PIL import Image
import dgsnet
model, photo = sys.argv[2:4]
det = dgsnet.load(model, device="cpu")
records = det.predict([photo, np.asarray(Image.open(photo).convert("RGB"))])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "open_clip", "torchvision", "onnx"})
print(json.dumps({"engine": det.engine, "p": [r["probability"] for r in records], "heavy": heavy}))
"""
    photo = next(p for p in photos if p.suffix == ".png" and "camera" not in p.name)
    proc = subprocess.run([sys.executable, "-c", code, str(EXPORT_DIR), str(fp32_export[0]), str(photo)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status["engine"] == "onnxruntime" and status["heavy"] == []
    assert status["p"][0] == status["p"][1]  # the file and its pixels


def test_a_path_that_is_neither_a_run_nor_an_onnx_file_is_one_clear_error(tmp_path):
    expected = r"run directory \(model.safetensors \+ model.json.*\.onnx"
    with pytest.raises(dgsnet.DetectorLoadError, match=f"{tmp_path / 'missing'}: does not exist; .*{expected}"):
        dgsnet.load(tmp_path / "missing")
    (tmp_path / "model.pt").write_bytes(b"\0")
    with pytest.raises(dgsnet.DetectorLoadError, match=f"model.pt: is a file without the .onnx suffix; .*{expected}"):
        dgsnet.load(tmp_path / "model.pt")
    (tmp_path / "run" / "resume").mkdir(parents=True)
    with pytest.raises(dgsnet.DetectorLoadError, match=r"run: a folder without model.json and model.safetensors "
                                                       r"\(its run has not finished: continue it with --resume\)"):
        dgsnet.load(tmp_path / "run")


def test_options_that_do_not_apply_are_refused(trained_run, fp32_export):
    with pytest.raises(dgsnet.DetectorLoadError, match="head= and pretrained= apply to run directories"):
        dgsnet.load(fp32_export[0], head="teacher")
    with pytest.raises(dgsnet.DetectorLoadError, match="provider='cuda' picks onnxruntime's provider"):
        dgsnet.load(trained_run[0], provider="cuda")
    with pytest.raises(ValueError, match="threshold=1.5: give a probability"):
        dgsnet.load(fp32_export[0], threshold=1.5)


def test_threshold_decides_the_label(trained_run, run_detector, photos):
    default = run_detector.predict(photos[:4])
    probabilities = sorted(r["probability"] for r in default)
    middle = (probabilities[1] + probabilities[2]) / 2  # half the photos above it
    strict = dgsnet.load(trained_run[0], device="cpu", threshold=middle)
    assert strict.threshold == middle
    high = strict.predict(photos[:4])
    assert [r["probability"] for r in high] == [r["probability"] for r in default]
    assert [r["label"] for r in high] == ["generated" if r["probability"] >= middle else "real" for r in high]
    assert sorted(r["label"] for r in high) == ["generated"] * 2 + ["real"] * 2


# ------------------------------------------------------------------ predict

def test_path_pil_and_numpy_inputs_of_one_image_score_identically(run_detector, photos, tmp_path):
    rgba = tmp_path / "rgba.png"
    pixels = np.asarray(Image.open(photos[1]).convert("RGB"))[:300, :300]
    alpha = np.tile(np.linspace(0, 255, 300).astype(np.uint8), (300, 1))[..., None]
    Image.fromarray(np.concatenate([pixels, alpha], axis=2), "RGBA").save(rgba)
    grey = next(p for p in photos if "camera" in p.name)
    for path in (photos[0], photos[1], grey, rgba):
        image = Image.open(path)
        array = np.asarray(image)
        assert array.ndim == (2 if path == grey else 3)
        # one call each: the same batch size, so equal inputs give bit-equal logits
        (by_path,), (by_pil,), (by_array,) = (run_detector.predict(x) for x in (path, image, array))
        assert by_path["path"] == str(path) and "path" not in by_pil and "path" not in by_array
        assert by_path["logit"] == by_pil["logit"] == by_array["logit"], path
        assert by_path["probability"] == by_pil["probability"] == by_array["probability"]
        assert by_path["label"] == by_pil["label"] == by_array["label"]
    # alpha is composited on white as for the file, not dropped
    dropped = run_detector.predict(np.asarray(Image.open(rgba))[..., :3].copy())[0]
    assert abs(dropped["logit"] - run_detector.predict(rgba)[0]["logit"]) > 1e-3


def test_a_list_keeps_its_order_and_one_image_gives_a_list_of_one(run_detector, photos):
    singles = [run_detector.predict(p)[0] for p in photos[:4]]
    assert all(set(r) == {"path", "logit", "probability", "label"} for r in singles)
    mixed = [photos[2], np.asarray(Image.open(photos[0]).convert("RGB")), photos[1], Image.open(photos[3]),
             photos[2]]
    records = run_detector.predict(mixed, batch_size=2)
    # other batch sizes than the singles': float32 rounding may differ in the last bits
    assert [r["logit"] for r in records] == pytest.approx([singles[i]["logit"] for i in (2, 0, 1, 3, 2)],
                                                          rel=1e-5)
    assert [r.get("path") for r in records] == [str(photos[2]), None, str(photos[1]), None, str(photos[2])]
    assert len({round(r["logit"], 6) for r in records}) == 4  # different images: order is observable
    assert run_detector.predict([]) == []


def test_a_bad_input_raises_naming_its_index(run_detector, photos, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(dgsnet.ImageInputError, match=f"input 1: {broken}: not an image format"):
        run_detector.predict([photos[0], broken])
    with pytest.raises(dgsnet.ImageInputError, match="input 2: a numpy image must be uint8"):
        run_detector.predict([photos[0], photos[1], np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(dgsnet.ImageInputError, match="input 0: a int; give an image path"):
        run_detector.predict([3])
    with pytest.raises(dgsnet.ImageInputError, match=r"input 0: a numpy image must be HxW .* got shape \(8, 8, 2\)"):
        run_detector.predict(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(dgsnet.ImageInputError, match=f"input 0 \\({tmp_path}\\): a folder; .*predict_folder"):
        run_detector.predict(tmp_path)


def test_predict_folder_covers_every_image_and_reports_an_unreadable_one(run_detector, photos, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for photo in photos[:2]:
        shutil.copy(photo, folder / photo.name)
    shutil.copy(photos[2], folder / "sub" / photos[2].name)
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "notes.txt").write_text("not an image")
    records = run_detector.predict_folder(folder)
    by_name = {Path(r["path"]).name: r for r in records}
    assert sorted(by_name) == sorted([photos[0].name, photos[1].name, photos[2].name, "broken.jpg"])
    assert set(by_name["broken.jpg"]) == {"path", "error"} and "broken.jpg" in by_name["broken.jpg"]["error"]
    assert by_name[photos[1].name]["logit"] == run_detector.predict(photos[1])[0]["logit"]
    top = run_detector.predict_folder(folder, recursive=False)
    assert sorted(Path(r["path"]).name for r in top) == sorted([photos[0].name, photos[1].name])
    with pytest.raises(dgsnet.ImageInputError, match="not a folder; score single images with predict"):
        run_detector.predict_folder(photos[0])
