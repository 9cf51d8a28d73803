"""`dgsnet demo --quick` end to end: data, both stages, every method, evaluation and ONNX export."""
import json
import os

import numpy as np
import pytest

from dgsnet.cli import main
from dgsnet.demo.run import METHODS


@pytest.mark.slow
def test_quick_demo_trains_evaluates_and_exports(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--quick"]) == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC DEMO DATA" in text and "dgsnet train-teacher --data TRAIN_ROOT" in text
    with open(os.path.join(out, "demo_results.json")) as fh:
        report = json.load(fh)
    families = {r["subset"] for r in report["results"]["probe only"]}
    assert {"tconv", "nearest_blur", "pixelshuffle", "noise_denoise", "bilinear_jpeg"} <= families
    assert set(report["results"]) == set(METHODS)
    for method in METHODS:
        assert f"| {method} " in text or f" {method} |" in text
    # the methods are distinct detectors: surgery changes the trained weights
    from dgsnet.models.checkpoint import read_model_tensors

    plain, dgs = (read_model_tensors(os.path.join(out, d)) for d in ("dgs-none", "dgs-feature"))
    assert any(not np.allclose(plain[k].numpy(), dgs[k].numpy()) for k in plain if k.startswith("visual."))

    # the exported detector scores like the torch checkpoint it came from
    from dgsnet_export import OnnxDetector

    from dgsnet.predict import TorchPredictor

    folder = os.path.join(out, "data", "test", "tconv")
    onnx = {r["path"]: r["probability"] for r in
            OnnxDetector(os.path.join(out, "detector.onnx"), provider="cpu").predict_paths([folder])}
    torch_probs = {r["path"]: r["probability"] for r in
                   TorchPredictor(os.path.join(out, "dgs-feature"), device="cpu").predict_paths([folder])}
    assert onnx.keys() == torch_probs.keys() and len(onnx) == 16
    np.testing.assert_allclose([onnx[k] for k in sorted(onnx)], [torch_probs[k] for k in sorted(onnx)],
                               atol=1e-4)

    # a second run reuses every finished stage and reproduces the table
    stamp = os.path.getmtime(os.path.join(out, "dgs-feature", "model.json"))
    assert main(["demo", "--out", out, "--quick", "--no-export"]) == 0
    assert os.path.getmtime(os.path.join(out, "dgs-feature", "model.json")) == stamp
    with open(os.path.join(out, "demo_results.json")) as fh:
        assert json.load(fh)["results"] == report["results"]
