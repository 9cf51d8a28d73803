"""`dgsnet eval` on a small synthetic benchmark, checked against an independent scoring path."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from dgsnet.cli import main
from dgsnet.demo import build_demo_dataset
from dgsnet.metrics import subset_metrics
from dgsnet.predict import TorchPredictor
from dgsnet.train import TrainConfig, train_dgs, train_teacher


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    info = build_demo_dataset(str(root / "data"), seed=3, per_class=8, test_per_class=6,
                              families=["tconv", "nearest_blur", "pixelshuffle"])
    base = dict(data=info.train_dir, model="dgs-tiny", pretrained=None, workers=0, batch_size=8,
                teacher_epochs=1, epochs=1, lr=1e-3, teacher_lr=1e-2, device="cpu")
    teacher, student = str(root / "teacher"), str(root / "student")
    train_teacher(TrainConfig(out=teacher, **base))
    train_dgs(TrainConfig(out=student, teacher=teacher, **base))
    return info, teacher, student


def _predicted_probs(run_dir, folder):
    """Probabilities from `dgsnet predict`'s path (its own loader and batching), keyed by file."""
    records = TorchPredictor(run_dir, device="cpu").predict_paths([folder], batch_size=5)
    return {os.path.realpath(r["path"]): r["probability"] for r in records if "probability" in r}


def test_eval_matches_metrics_of_independent_predictions(bench, tmp_path, capsys):
    info, _, student = bench
    out = str(tmp_path / "report")
    assert main(["eval", "--ckpt", student, "--data", info.test_dir, "--out", out, "--workers", "0",
                 "--batch-size", "4"]) == 0
    stdout = capsys.readouterr().out
    with open(os.path.join(out, "eval.json")) as fh:
        report = json.load(fh)
    rows = {r["subset"]: r for r in report["results"]["clean"]}
    assert set(rows) == {"tconv", "nearest_blur", "pixelshuffle", "mean"}
    for family in ("tconv", "nearest_blur", "pixelshuffle"):
        folder = os.path.join(info.test_dir, family)
        probs = _predicted_probs(student, folder)
        labels = {p: int(os.sep + "1_fake" + os.sep in p) for p in probs}
        keys = sorted(probs)
        want = subset_metrics(np.array([probs[k] for k in keys]), np.array([labels[k] for k in keys]))
        for metric in ("acc", "ap", "real_acc", "fake_acc", "auc"):
            assert rows[family][metric] == pytest.approx(want[metric], abs=1e-6), (family, metric)
        assert rows[family]["n"] == 12 and rows[family]["n_real"] == 6
        assert family in stdout
    assert rows["mean"]["acc"] == pytest.approx(np.mean([rows[f]["acc"] for f in
                                                         ("tconv", "nearest_blur", "pixelshuffle")]))
    with open(os.path.join(out, "eval.csv")) as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert os.path.getsize(os.path.join(out, "eval.png")) > 1000


def test_eval_perturbations_add_a_robustness_table(bench, tmp_path, capsys):
    info, _, student = bench
    out = str(tmp_path / "report")
    assert main(["eval", "--ckpt", student, "--data", info.test_dir, "--out", out, "--workers", "0",
                 "--perturb", "jpeg:50", "blur:2"]) == 0
    with open(os.path.join(out, "eval.json")) as fh:
        report = json.load(fh)
    assert report["conditions"] == ["clean", "jpeg50", "blur2"]
    clean = {r["subset"]: r["auc"] for r in report["results"]["clean"]}
    blurred = {r["subset"]: r["auc"] for r in report["results"]["blur2"]}
    assert clean != blurred  # the perturbation reached the pixels
    assert "robustness" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "eval_robustness.csv"))


def test_eval_skips_and_counts_a_corrupt_image(bench, tmp_path, caplog):
    info, teacher, _ = bench
    data = tmp_path / "data"
    shutil.copytree(os.path.join(info.test_dir, "tconv"), data / "tconv")
    (data / "tconv" / "1_fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = str(tmp_path / "report")
    assert main(["eval", "--ckpt", teacher, "--data", str(data), "--out", out, "--workers", "0"]) == 0
    with open(os.path.join(out, "eval.json")) as fh:
        rows = json.load(fh)["results"]["clean"]
    assert rows[0]["n"] == 12  # the broken file is not scored
    assert "broken.png" in caplog.text


def test_eval_errors_name_the_problem(bench, tmp_path, capsys):
    info, _, student = bench
    assert main(["eval", "--ckpt", str(tmp_path), "--data", info.test_dir]) == 2
    assert "model.json" in capsys.readouterr().err
    assert main(["eval", "--ckpt", student, "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_eval_report_says_which_layout_and_decoder_were_used(bench, tmp_path, capsys):
    info, _, student = bench
    reports = {}
    for name, extra in {"raster": [], "published": ["--preset", "published"]}.items():
        out = str(tmp_path / name)
        assert main(["eval", "--ckpt", student, "--data", info.test_dir, "--out", out, "--workers", "0",
                     "--no-plot", *extra]) == 0
        stdout = capsys.readouterr().out
        with open(os.path.join(out, "eval.json")) as fh:
            reports[name] = json.load(fh)
        assert stdout.splitlines()[0].startswith("patch layout: ")
    assert reports["raster"]["setup"]["patch layout"] == "raster"
    assert reports["raster"]["setup"]["decode"] == "dgsnet"
    assert reports["published"]["setup"]["patch layout"].startswith("shuffle (seed 100")
    assert reports["published"]["setup"]["decode"] == "pil"
    from dgsnet.evaluate import evaluate_checkpoint

    probs = [np.concatenate([s.probs for s in evaluate_checkpoint(
        student, info.test_dir, out_dir=str(tmp_path / order), workers=0, plot=False,
        patch_order=order).scores["clean"]]) for order in ("raster", "shuffle")]
    assert np.abs(probs[0] - probs[1]).max() > 1e-6  # the shuffled layout scores differently
