"""The modules the inference-only ONNX runtime imports must not pull in torch."""
import subprocess
import sys


def test_preprocess_imageio_metrics_report_are_torch_free():
    code = ("import sys, dgsnet.image.preprocess, dgsnet.image.decode, dgsnet.metrics, dgsnet.report; "
            "bad = [m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
