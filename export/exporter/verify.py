"""Checks of an exported graph: its inputs and outputs, and onnxruntime against torch on random inputs."""
from __future__ import annotations

import numpy as np

from .spec import INPUT_SIZE, OUTPUT_NAMES, ExportError, ExportVerificationError


def _baked_batch_reshapes(model, batch: int) -> list[str]:
    """Reshape nodes whose constant target shape starts with the traced batch size."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return [node.name or node.output[0] for node in model.graph.node
            if node.op_type == "Reshape" and node.input[1] in consts
            and consts[node.input[1]].size and int(consts[node.input[1]].reshape(-1)[0]) == batch]


def _check_io(model, input_name: str) -> None:
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if [i.name for i in inputs] != [input_name]:
        raise ExportError(f"exported graph inputs are {[i.name for i in inputs]}, expected [{input_name!r}]")
    outputs = [o.name for o in model.graph.output]
    if outputs != list(OUTPUT_NAMES):
        raise ExportError(f"exported graph outputs are {outputs}, expected {list(OUTPUT_NAMES)}")
    for value in list(inputs) + list(model.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if not dim0.dim_param:
            raise ExportError(f"graph {value.name}: batch axis is fixed to {dim0.dim_value}, not dynamic: the "
                              "forward bakes the batch size in (e.g. reshape(2, ...)); use x.shape[0] or -1")


def _random_inputs(batch: int, with_preprocessing: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if with_preprocessing:
        return rng.integers(0, 256, size=(batch, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    return rng.standard_normal((batch, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)


def _torch_reference(detector, inputs: np.ndarray, norm: dict | None) -> np.ndarray:
    """Logits of the untouched float32 detector; uint8 tiles are normalised by dgsnet.image.preprocess."""
    import torch

    if norm is not None:
        from dgsnet.image.preprocess import normalize

        inputs = normalize(inputs, norm["mean"], norm["std"])  # the whole (N, 224, 224, 3) batch
    with torch.no_grad():
        logits = detector(torch.from_numpy(np.ascontiguousarray(inputs)))
    return logits.reshape(len(inputs)).double().numpy()


def verify_onnx(onnx_path, detector, *, batch_sizes=(1, 7), norm: dict | None = None, seed: int = 0) -> dict:
    """onnxruntime (CPU) against torch on random inputs at each batch size: the largest errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures are raised with their message; no duplicate log
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    worst = {"max_abs_error": 0.0, "max_rel_error": 0.0, "max_prob_error": 0.0}
    for i, batch in enumerate(batch_sizes):
        inputs = _random_inputs(batch, norm is not None, seed + i)
        logits, probs = session.run(list(OUTPUT_NAMES), {input_name: inputs})
        if logits.shape != (batch,) or probs.shape != (batch,):
            raise ExportVerificationError(f"{onnx_path}: batch {batch} gave outputs of shape {logits.shape}, "
                                          f"{probs.shape}; expected ({batch},)")
        ref = _torch_reference(detector, inputs, norm)
        err = float(np.max(np.abs(logits.astype(np.float64) - ref)))
        ref_probs = np.exp(-np.logaddexp(0.0, -ref))  # sigmoid, no overflow for large |logit|
        worst["max_abs_error"] = max(worst["max_abs_error"], err)
        worst["max_rel_error"] = max(worst["max_rel_error"], err / max(1.0, float(np.max(np.abs(ref)))))
        worst["max_prob_error"] = max(worst["max_prob_error"],
                                      float(np.max(np.abs(probs.astype(np.float64) - ref_probs))))
        if not np.all(np.isfinite(logits)):
            raise ExportVerificationError(f"{onnx_path}: non-finite logits at batch {batch}")
    return worst
