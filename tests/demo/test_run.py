"""`dgsnet demo --quick` end to end: data, both stages, every method, evaluation and ONNX export."""
import json
import os

import numpy as np
import pytest

from dgsnet.cli import main
from dgsnet.demo import summary as S
from dgsnet.demo.run import DGS, METHODS, PLAIN, PRIOR, RANDOM


@pytest.mark.slow
def test_quick_demo_trains_evaluates_and_exports(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--quick"]) == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC DEMO DATA" in text and "dgsnet train-teacher --data TRAIN_ROOT" in text
    with open(os.path.join(out, "demo_results.json")) as fh:
        report = json.load(fh)
    families = ["bilinear_jpeg", "nearest_blur", "noise_denoise", "pixelshuffle", "tconv"]
    assert report["prior"]["config"]["steps"] == 4 and os.path.isfile(os.path.join(out, "prior", "prior.safetensors"))
    assert report["prior_vs_families"] in text

    # the table: one column per method, one row per family and the unseen mean, "mean ± sd" cells
    # whose numbers are the JSON's, which are the per-seed results'
    acc = report["acc"]
    assert acc["methods"] == list(METHODS) and acc["seeds"] == [0, 1] and sorted(acc["families"]) == families
    table = text[text.index("| family |"):].split("\n\n")[0].splitlines()
    assert table[0] == "| family | " + " | ".join(METHODS) + " |"
    assert len(table) == 2 + len(families) + 1 and table[-1].startswith(f"| **{S.UNSEEN}** |")
    for line in table[2:]:
        label = line.split(" | ")[0].strip("| *").replace(" (trained on)", "")
        cells = line.strip(" |").split(" | ")[1:]
        for method, cell in zip(METHODS, cells):
            values = acc["cells"][method][label]["values"]
            if label != S.UNSEEN:
                rows = {str(seed): {r["subset"]: r["acc"] for r in report["results"][str(seed)][method]}
                        for seed in (0, 1)}
                assert values == pytest.approx([100 * rows[s][label] for s in ("0", "1")])
            mean, sd = (float(x) for x in cell.split(" ± "))
            assert mean == pytest.approx(np.mean(values), abs=0.051)
            assert sd == pytest.approx(np.std(values, ddof=1), abs=0.051)

    # the reading is printed under the table and states the JSON's numbers
    assert report["reading"] in text and report["reading"] == S.reading(acc, PRIOR, PLAIN, DGS, RANDOM)
    kept = S.compare(acc, DGS, PLAIN)
    if round(kept["diff"], 1) != 0:
        assert f"{abs(kept['diff']):.1f} point" in report["reading"]
        assert ("above" if kept["diff"] > 0 else "below") in report["reading"]
    assert f"{acc['cells'][PLAIN]['tconv']['mean']:.1f}" in report["reading"]
    with open(os.path.join(out, "demo_accuracy.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"

    # the methods are distinct detectors: surgery changes the trained weights
    from dgsnet.models.checkpoint import read_model_tensors

    plain, dgs = (read_model_tensors(os.path.join(out, "seed-0", d)) for d in ("dgs-none", "dgs-feature"))
    assert any(not np.allclose(plain[k].numpy(), dgs[k].numpy()) for k in plain if k.startswith("visual."))
    # and the seeds are distinct runs
    other = read_model_tensors(os.path.join(out, "seed-1", "dgs-feature"))
    assert any(not np.allclose(other[k].numpy(), dgs[k].numpy()) for k in dgs if k.startswith("visual."))

    # the exported detector scores like the torch checkpoint it came from
    from dgsnet_export import OnnxDetector

    from dgsnet.predict import TorchPredictor

    folder = os.path.join(out, "data", "test", "tconv")
    onnx = {r["path"]: r["probability"] for r in
            OnnxDetector(os.path.join(out, "detector.onnx"), provider="cpu").predict_paths([folder])}
    torch_probs = {r["path"]: r["probability"] for r in
                   TorchPredictor(os.path.join(out, "seed-0", "dgs-feature"), device="cpu",
                                  pretrained=os.path.join(out, "prior", "prior.safetensors")).predict_paths([folder])}
    assert onnx.keys() == torch_probs.keys() and len(onnx) == 16
    np.testing.assert_allclose([onnx[k] for k in sorted(onnx)], [torch_probs[k] for k in sorted(onnx)],
                               atol=1e-4)

    # a second run reuses every finished stage and reproduces the table
    stamp = os.path.getmtime(os.path.join(out, "seed-1", "dgs-feature", "model.json"))
    prior_stamp = os.path.getmtime(os.path.join(out, "prior", "prior.safetensors"))
    assert main(["demo", "--out", out, "--quick", "--no-export"]) == 0
    assert os.path.getmtime(os.path.join(out, "seed-1", "dgs-feature", "model.json")) == stamp
    assert os.path.getmtime(os.path.join(out, "prior", "prior.safetensors")) == prior_stamp
    with open(os.path.join(out, "demo_results.json")) as fh:
        assert json.load(fh)["results"] == report["results"]
