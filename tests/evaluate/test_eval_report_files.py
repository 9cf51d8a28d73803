"""`dgsnet eval`'s report folder: per-image scores, EER columns, ROC / PR curves, one-class subsets,
--threshold, no caption warnings, and the torch-free eval of an exported .onnx detector."""
import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgsnet.cli import main
from dgsnet.metrics import subset_metrics
from tests.image.test_torch_free import BLOCK_TORCH  # torch unimportable in a `python -c` child

ROOT = Path(__file__).resolve().parents[2]
# (subset, label folder) -> indices into the sorted photo files; "onlyfake" has generated images only
LAYOUT = {("alpha", "0_real"): (0, 1, 2), ("alpha", "1_fake"): (3, 4, 5),
          ("beta", "0_real"): (3, 4, 5), ("beta", "1_fake"): (0, 1, 2), ("onlyfake", "1_fake"): (1, 4)}
N_IMAGES = sum(len(v) for v in LAYOUT.values())


@pytest.fixture(scope="module")
def test_root(tmp_path_factory, photo_dir):
    root = tmp_path_factory.mktemp("evaldata") / "test"
    photos = sorted(Path(photo_dir).iterdir())
    for (subset, label), picks in LAYOUT.items():
        folder = root / subset / label
        folder.mkdir(parents=True)
        for i in picks:  # small copies (just over the 224 px tile): keeps the tests fast
            with Image.open(photos[i]) as img:
                img.convert("RGB").resize((232, 240)).save(folder / photos[i].name, quality=95)
    return root


@pytest.fixture(scope="module")
def report(trained_run, test_root, tmp_path_factory):
    """One eval of the trained run with a perturbation: (out folder, stdout, stderr, log records)."""
    out = tmp_path_factory.mktemp("report") / "out"
    run_dir, _ = trained_run
    handler = _Records()
    logging.getLogger().addHandler(handler)
    try:
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        stdout, stderr = StringIO(), StringIO()
        with redirect_stdout(stdout), redirect_stderr(stderr):
            code = main(["eval", "--ckpt", str(run_dir), "--data", str(test_root), "--out", str(out),
                         "--workers", "0", "--perturb", "jpeg:50"])
    finally:
        logging.getLogger().removeHandler(handler)
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue(), handler.messages


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _scores(out, condition="clean"):
    with open(out / "scores.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if condition is None or r["condition"] == condition]


def _json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh, parse_constant=lambda token: pytest.fail(f"{path}: non-standard JSON {token}"))


def test_per_image_scores_one_row_per_image_and_condition(report):
    out, *_ = report
    rows = _scores(out, None)
    assert len(rows) == 2 * N_IMAGES  # clean and jpeg50
    assert list(rows[0]) == ["condition", "subset", "path", "label", "logit", "probability"]
    assert {r["condition"] for r in rows} == {"clean", "jpeg50"}
    clean = _scores(out)
    assert len({r["path"] for r in clean}) == N_IMAGES
    for r in clean:
        assert r["label"] == ("1" if os.sep + "1_fake" + os.sep in r["path"] else "0")
        assert float(r["probability"]) == pytest.approx(1 / (1 + math.exp(-float(r["logit"]))), abs=1e-12)
    with open(out / "scores.jsonl", encoding="utf-8") as fh:
        lines = [json.loads(line) for line in fh]
    assert [(x["path"], x["condition"], x["probability"]) for x in lines] == \
        [(r["path"], r["condition"], float(r["probability"])) for r in rows]


def test_table_values_match_the_per_image_scores(report):
    out, stdout, *_ = report
    record = _json(out / "eval.json")
    rows = {r["subset"]: r for r in record["results"]["clean"]}
    for subset in ("alpha", "beta", "onlyfake"):
        mine = [r for r in _scores(out) if r["subset"] == subset]
        want = subset_metrics([float(r["probability"]) for r in mine], [int(r["label"]) for r in mine])
        for key, value in want.items():
            got = rows[subset][key]
            assert (got is None and math.isnan(value)) or got == pytest.approx(value, abs=1e-9), (subset, key)
    assert rows["alpha"]["n"] == 6 and rows["onlyfake"]["n"] == 2
    for metric in ("eer", "eer_threshold"):
        assert 0 <= rows["alpha"][metric] <= 1
    header = next(line for line in stdout.splitlines() if line.startswith("| subset | n |"))
    assert "| AUC % | EER % | EER threshold |" in header
    with open(out / "eval.csv", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert {"auc", "eer", "eer_threshold"} <= set(table[0])


def test_one_class_subset_is_na_and_left_out_of_the_mean(report):
    out, stdout, *_ = report
    record = _json(out / "eval.json")
    rows = {r["subset"]: r for r in record["results"]["clean"]}
    assert all(rows["onlyfake"][k] is None for k in ("ap", "auc", "eer", "eer_threshold"))
    for metric in ("ap", "auc", "eer"):  # before: onlyfake's AP of 1.0 was averaged in
        assert rows["mean"][metric] == pytest.approx((rows["alpha"][metric] + rows["beta"][metric]) / 2)
    assert rows["mean"]["acc"] == pytest.approx(np.mean([rows[s]["acc"] for s in ("alpha", "beta", "onlyfake")]))
    assert record["one_class"]["clean"] == ["onlyfake"]
    line = next(x for x in stdout.splitlines() if x.startswith("| onlyfake |"))
    assert line.split(" | ")[5] == "n/a"  # the AP cell
    assert "n/a: onlyfake holds one class only" in stdout


def test_roc_and_pr_figures_are_pngs(report):
    out, _, stderr, _ = report
    for name in ("roc.png", "pr.png", "eval.png"):
        assert os.path.getsize(out / name) > 0
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size[0] > 300
            img.load()  # decodes: a whole file
    assert f"roc_png: {out / 'roc.png'}" in stderr


def test_eval_does_not_warn_about_captions(report):
    _, _, stderr, messages = report
    assert "caption" not in stderr.lower()
    assert not [m for m in messages if "caption" in m.lower()]


def test_threshold_sets_the_accuracy_and_is_stated(report, trained_run, test_root, tmp_path, capsys):
    out, *_ = report
    run_dir, _ = trained_run
    scored = _scores(out)
    cut = float(np.median([float(r["probability"]) for r in scored]))  # a threshold that moves labels
    again = tmp_path / "t"
    assert main(["eval", "--ckpt", str(run_dir), "--data", str(test_root), "--out", str(again), "--workers", "0",
                 "--threshold", repr(cut), "--no-plot"]) == 0
    stdout = capsys.readouterr().out
    record = _json(again / "eval.json")
    assert record["threshold"] == cut and f"probability > {cut:g} is called generated" in stdout.splitlines()[0]
    by_hand = {}
    for r in scored:
        by_hand.setdefault(r["subset"], []).append((float(r["probability"]) > cut) == (r["label"] == "1"))
    rows = {r["subset"]: r for r in record["results"]["clean"]}
    for subset, hits in by_hand.items():
        assert rows[subset]["acc"] == pytest.approx(np.mean(hits))
    assert any(rows[s]["acc"] != r["acc"] for s, r in
               ((r["subset"], r) for r in _json(out / "eval.json")["results"]["clean"]) if s in by_hand)
    assert not (again / "roc.png").exists() and not (again / "pr.png").exists()  # --no-plot


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_threshold_outside_0_1_is_one_error_line(trained_run, test_root, tmp_path, capsys, value):
    run_dir, _ = trained_run
    assert main(["eval", "--ckpt", str(run_dir), "--data", str(test_root), "--out", str(tmp_path / "o"),
                 "--threshold", value]) == 2
    err = capsys.readouterr().err
    assert "--threshold" in err and "between 0 and 1" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- an exported detector, without torch

ONNX_EVAL = BLOCK_TORCH + r"""
import argparse
from dgsnet.cli.evaluate import add_eval_parser
parser = argparse.ArgumentParser(); add_eval_parser(parser.add_subparsers())
args = parser.parse_args(["eval", "--ckpt", sys.argv[2], "--data", sys.argv[3], "--out", sys.argv[4],
                          "--workers", "0", "--batch-size", "4"])
args.func(args)
print("TORCH", "torch" in sys.modules)
"""


def test_onnx_eval_matches_the_torch_eval_without_torch(fp32_export, detector, test_root, tmp_path):
    from dgsnet.evaluate import evaluate_detector

    onnx_path, _ = fp32_export
    out = tmp_path / "onnx_report"
    proc = subprocess.run([sys.executable, "-c", ONNX_EVAL, str(ROOT / "export"), str(onnx_path), str(test_root),
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TORCH False" in proc.stdout
    assert "| alpha |" in proc.stdout and "detector: detector.onnx (onnxruntime" in proc.stdout
    for name in ("eval.csv", "eval.json", "scores.csv", "scores.jsonl", "roc.png", "pr.png"):
        assert (out / name).is_file(), name
    # the same detector through torch (the fixture fp32_export was exported from)
    torch_result = evaluate_detector(detector, str(test_root), norm="imagenet", workers=0)
    want = {os.path.realpath(p): prob for s in torch_result.scores["clean"] for p, prob in zip(s.paths, s.probs)}
    got = {os.path.realpath(r["path"]): float(r["probability"]) for r in _scores(out)}
    assert set(got) == set(want) and len(got) == N_IMAGES
    assert max(abs(got[p] - want[p]) for p in got) < 1e-4
    rows = {r["subset"]: r for r in _json(out / "eval.json")["results"]["clean"]}
    for r in torch_result.results["clean"]:
        for key in ("acc", "ap", "auc", "eer"):
            assert (rows[r["subset"]][key] is None and math.isnan(r[key])) or \
                rows[r["subset"]][key] == pytest.approx(r[key], abs=1e-4), (r["subset"], key)


def test_onnx_eval_refuses_run_directory_flags(fp32_export, test_root, tmp_path, capsys):
    onnx_path, _ = fp32_export
    assert main(["eval", "--ckpt", str(onnx_path), "--data", str(test_root), "--out", str(tmp_path / "o"),
                 "--head", "teacher"]) == 2
    err = capsys.readouterr().err
    assert "--head" in err and "exported detector" in err and "Traceback" not in err


def test_captions_flag_is_a_hidden_no_op():
    import argparse

    from dgsnet.cli.evaluate import add_eval_parser

    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--ckpt", "run", "--data", "test", "--captions", "c.json"])  # old lines run
    assert args.captions == "c.json"
    help_text = parser._subparsers._group_actions[0].choices["eval"].format_help()
    assert "--captions" not in help_text and "--threshold" in help_text and ".onnx" in help_text
