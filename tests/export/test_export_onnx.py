"""dgsnet_export.exporter: the exported graph matches torch, is TensorRT-ready, and carries its metadata."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from dgsnet.image import preprocess
from dgsnet.version import __version__
from dgsnet_export.exporter import (FLOAT16_ATOL, FLOAT32_ATOL, ExportError, ExportVerificationError,
                                    build_metadata, build_tensorrt_engine, export_detector, tensorrt_available,
                                    tensorrt_command, tensorrt_issues)


def _onnx_logits(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probabilities"], {session.get_inputs()[0].name: inputs})
    return logits, probs


def _torch_logits(detector, inputs):
    with torch.no_grad():
        return detector(torch.from_numpy(inputs)).numpy()


@pytest.mark.parametrize("batch", [1, 7, 5, 33])
def test_fp32_export_matches_torch_at_any_batch_size(detector, fp32_export, batch):
    path, _ = fp32_export
    images = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    logits, probs = _onnx_logits(path, images)
    expected = _torch_logits(detector, images)
    assert logits.shape == probs.shape == (batch,)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-expected)), atol=1e-5, rtol=0)
    assert batch == 1 or np.ptp(expected) > 0.1  # the detector tells inputs apart: the check has teeth


def test_export_report_and_graph(fp32_export):
    path, report = fp32_export
    assert report.batch_sizes == (1, 7) and report.precision == "float32" and report.opset == 17
    assert 0 <= report.max_rel_error <= FLOAT32_ATOL and report.atol == FLOAT32_ATOL
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert tensorrt_issues(model) == []
    assert {n.domain for n in model.graph.node} <= {""}
    assert sum(report.op_types.values()) == len(model.graph.node)


def test_export_leaves_the_mha_fast_path_as_it_was(detector, tmp_path):
    before = torch.backends.mha.get_fastpath_enabled()
    export_detector(detector, tmp_path / "d.onnx", metadata={"backbone": "dgs-tiny"}, exporter="torchscript",
                    opset=18)
    assert torch.backends.mha.get_fastpath_enabled() == before
    assert onnx.load(str(tmp_path / "d.onnx")).opset_import[0].version == 18


def test_fp16_export_within_looser_tolerance_and_metadata_round_trip(detector, fp32_export, tmp_path):
    from dgsnet_export import ModelInfo

    path = tmp_path / "half.onnx"
    report = export_detector(detector, path, fp16=True, metadata={
        "backbone": "dgs-tiny", "pretrained": "openai", "normalization": "clip", "threshold": 0.4,
        "checkpoint": "runs/demo/student.safetensors"})
    assert report.precision == "float16" and report.atol == FLOAT16_ATOL
    # float16 loses precision against torch's float32, but stays within its (looser) tolerance.
    assert fp32_export[1].max_abs_error < report.max_abs_error and report.max_rel_error <= FLOAT16_ATOL
    model = onnx.load(str(path))
    weights = [t for t in model.graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # casts inside
    assert path.stat().st_size < 0.6 * fp32_export[0].stat().st_size

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    info = ModelInfo.from_props(session.get_modelmeta().custom_metadata_map)
    assert (info.backbone, info.pretrained, info.normalization) == ("dgs-tiny", "openai", "clip")
    assert info.mean == pytest.approx(preprocess.CLIP_MEAN) and info.std == pytest.approx(preprocess.CLIP_STD)
    assert info.threshold == 0.4 and info.input_size == 224 and info.dgsnet_version == __version__
    assert info.caller_steps == ("dgs-patch-selection", "normalize") and info.graph_steps == ()
    assert info.outputs == ("logits", "probabilities") and info.precision == "float16"
    assert info.input_name == "images" and info.input_dtype == "float32" and info.opset == 17
    assert info.extra["checkpoint"] == "runs/demo/student.safetensors"
    verification = json.loads(info.extra["verification"])
    assert verification["batch_sizes"] == [1, 7] and verification["max_abs_error"] == report.max_abs_error


def test_export_above_tolerance_fails_and_writes_nothing(detector, tmp_path):
    path = tmp_path / "strict.onnx"
    with pytest.raises(ExportVerificationError, match="differ from torch"):
        export_detector(detector, path, fp16=True, atol=1e-7, metadata={"backbone": "dgs-tiny"})
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_preprocessing_in_graph_takes_uint8_tiles(detector, tmp_path):
    path = tmp_path / "tiles.onnx"
    report = export_detector(detector, path, with_preprocessing=True, metadata={"backbone": "dgs-tiny"})
    assert report.input_name == "tiles" and report.input_dtype == "uint8"
    tiles = np.random.default_rng(3).integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    logits, _ = _onnx_logits(path, tiles)
    expected = _torch_logits(detector, preprocess.normalize(tiles, preprocess.IMAGENET_MEAN,
                                                            preprocess.IMAGENET_STD))
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["preprocessing"]) == {"caller": ["dgs-patch-selection"], "in_graph": ["normalize"]}


def test_batch_size_baked_into_a_reshape_is_refused(tmp_path):
    class Baked(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            return self.head(x.mean(dim=(2, 3)).reshape(2, 3)).squeeze(-1)  # batch 2 baked in

    for exporter in ("dynamo", "torchscript"):
        with pytest.raises(ExportError, match="batch"):
            export_detector(Baked().eval(), tmp_path / "baked.onnx", metadata={"backbone": "x"}, exporter=exporter)
    assert not (tmp_path / "baked.onnx").exists()


def test_tensorrt_issues_name_unsupported_and_custom_ops():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None])
    nodes = [onnx.helper.make_node("Unique", ["x"], ["u"]),
             onnx.helper.make_node("FusedAttention", ["u"], ["y"], domain="com.example")]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y]))
    issues = " ".join(tensorrt_issues(model))
    assert "Unique" in issues and "com.example::FusedAttention" in issues


def test_metadata_needs_a_backbone_and_valid_values(detector):
    kwargs = dict(precision="float32", with_preprocessing=False, opset=17, exporter="dynamo", input_name="images")
    with pytest.raises(ValueError, match="backbone"):
        build_metadata({}, **kwargs)
    with pytest.raises(ValueError, match="normalization"):
        build_metadata({"backbone": "b", "normalization": "nope"}, **kwargs)
    with pytest.raises(ValueError, match="threshold"):
        build_metadata({"backbone": "b", "threshold": 1.5}, **kwargs)
    with pytest.raises(ValueError, match="batch_sizes"):
        export_detector(detector, "unused.onnx", metadata={"backbone": "b"}, batch_sizes=(2, 7))


def test_tensorrt_command_has_batch_profile(fp32_export, tmp_path):
    path, _ = fp32_export
    command = tensorrt_command(path, 1, 8, 32, fp16=True)
    assert command.startswith("trtexec ") and f"--onnx={path}" in command
    for flag in ("--minShapes=images:1x3x224x224", "--optShapes=images:8x3x224x224",
                 "--maxShapes=images:32x3x224x224", "--fp16", f"--saveEngine={path.with_suffix('.engine')}"):
        assert flag in command.split()
    assert "--fp16" not in tensorrt_command(path, 1, 1, 1, fp16=False)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        tensorrt_command(path, 4, 2, 8)


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_build_tensorrt_engine_explains_missing_tensorrt(fp32_export):
    with pytest.raises(RuntimeError, match="tensorrt_command"):
        build_tensorrt_engine(fp32_export[0])


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and tensorrt_available()), reason="needs CUDA and TensorRT")
def test_tensorrt_engine_builds_and_onnxruntime_gpu_agrees(fp32_export, tmp_path):
    from dgsnet_export import OnnxDetector

    engine = build_tensorrt_engine(fp32_export[0], tmp_path / "d.engine", 1, 4, 8, fp16=True)
    assert engine.stat().st_size > 0
    images = np.random.default_rng(0).standard_normal((7, 3, 224, 224)).astype(np.float32)
    cpu = OnnxDetector(fp32_export[0], provider="cpu").logits(images)
    gpu = OnnxDetector(fp32_export[0], provider="tensorrt", max_batch=8)
    assert gpu.provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    np.testing.assert_allclose(gpu.logits(images), cpu, atol=5e-2 * max(1.0, np.abs(cpu).max()))
