"""`dgsnet export --triton-repo DIR`: an NVIDIA Triton Inference Server model repository for an
end-to-end detector: DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx.

config.pbtxt is written from the ONNX file's own graph inputs and outputs (names, element types,
dims), so the two cannot disagree. The one-image graph (input (H, W, 3)) gets max_batch_size 0
(Triton passes shapes through unchanged); the batched graph ((N, H, W, 3)) gets max_batch_size > 0,
Triton's batch axis, and dynamic batching (Triton batches only requests of one image size together).
`dgsnet export --triton-repo` writes the batched graph unless --triton-max-batch 0 asks for the
one-image one. Both run on the ONNX Runtime backend with TensorRT as its GPU accelerator (falling
back to CUDA for what TensorRT cannot take), in FP32 by default: the graph's own patch selection
(DFT, spectral entropy, TopK) runs in the engine too, and FP16 there can change which patches are
picked, so FP16 (precision="fp16", --triton-precision fp16) is opt-in. The model folder is staged
beside DIR/<name> and renamed into place: a failed export leaves DIR as it was.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .spec import ExportError

# ONNX TensorProto element type -> Triton data type (model_config.proto's DataType).
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64",
                9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64"}


def _io(value, batched: bool) -> tuple[str, str, list[int]]:
    """(name, Triton type, dims without the batch axis; -1 where dynamic) of a graph input or output."""
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_TYPES:
        raise ExportError(f"graph {value.name}: element type {tensor.elem_type} has no Triton data type")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return value.name, TRITON_TYPES[tensor.elem_type], dims[1:] if batched else dims


def _block(name: str, dtype: str, dims: list[int], batched: bool) -> str:
    lines = [f'    name: "{name}"', f"    data_type: {dtype}"]
    if batched and not dims:  # (N,) outputs: Triton wants a dim per sample, reshaped away
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    return "  {\n" + "\n".join(lines) + "\n  }"


#: TensorRT precision_mode per --triton-precision.
PRECISIONS = {"fp32": "FP32", "fp16": "FP16"}


def triton_config(model, name: str, *, max_batch_size: int = 16, instances: int = 1, kind: str = "KIND_GPU",
                  precision: str = "fp32", queue_delay_us: int = 2000, workspace_bytes: int = 1 << 30) -> str:
    """config.pbtxt text for `model` (an onnx.ModelProto of an end-to-end export). `precision`: the
    TensorRT accelerator's, "fp32" (default) or "fp16" (may change which patches the graph selects)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ExportError(f"expected one graph input, found {[i.name for i in inputs]}")
    batched = len(inputs[0].type.tensor_type.shape.dim) == 4
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise ValueError(f"instance kind {kind!r}: use KIND_GPU or KIND_CPU")
    if instances < 1 or (batched and max_batch_size < 1):
        raise ValueError(f"instances {instances}, max_batch_size {max_batch_size}: both must be >= 1")
    ins = [_io(i, batched) for i in inputs]
    outs = [_io(o, batched) for o in model.graph.output]
    text = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size if batched else 0}",
            "input [\n" + ",\n".join(_block(*io, batched) for io in ins) + "\n]",
            "output [\n" + ",\n".join(_block(*io, batched) for io in outs) + "\n]"]
    if batched:
        text.append("dynamic_batching {\n  preferred_batch_size: [ "
                    + ", ".join(str(b) for b in sorted({max(1, max_batch_size // 2), max_batch_size}))
                    + f" ]\n  max_queue_delay_microseconds: {queue_delay_us}\n}}")
    text.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    # ONNX Runtime: all graph optimisations; on a GPU, TensorRT first (engines cached across restarts).
    optimization = ["optimization {", "  graph { level: 1 }"]
    if kind == "KIND_GPU":
        optimization += [
            "  execution_accelerators {", "    gpu_execution_accelerator : [ {", '      name : "tensorrt"',
            f'      parameters {{ key: "precision_mode" value: "{PRECISIONS[precision]}" }}',
            f'      parameters {{ key: "max_workspace_size_bytes" value: "{workspace_bytes}" }}',
            '      parameters { key: "trt_engine_cache_enable" value: "1" }',
            '      parameters { key: "trt_engine_cache_path" value: "/tmp/dgsnet-trt-cache" }',
            "    } ]", "  }"]
    text.append("\n".join(optimization + ["}"]))
    text.append('parameters { key: "intra_op_thread_count" value: { string_value: "0" } }')
    return "\n".join(text) + "\n"


def write_triton_repo(onnx_path, repo_dir, name: str | None = None, **config_kwargs) -> Path:
    """DIR/<name>/config.pbtxt + DIR/<name>/1/model.onnx for the end-to-end file `onnx_path`; returns
    the model folder. `name` defaults to the file's stem. An existing DIR/<name> is replaced whole."""
    import onnx

    from dgsnet.fileio import new_file_mode

    from ..runtime.metadata import ModelInfo

    onnx_path, repo_dir = Path(onnx_path), Path(repo_dir)
    name = name or onnx_path.stem
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"Triton model name {name!r}: a plain folder name (letters, digits, - and _)")
    model = onnx.load(str(onnx_path), load_external_data=False)
    info = ModelInfo.from_props({p.key: p.value for p in model.metadata_props}, source=str(onnx_path))
    if not info.end_to_end:
        raise ValueError(f"--triton-repo: {onnx_path} takes preprocessed tiles; a Triton model must take raw "
                         "images: export it with --end-to-end")
    if any(os.path.exists(str(onnx_path) + suffix) for suffix in (".data",)):
        raise ValueError(f"--triton-repo: {onnx_path} keeps its weights in an external file; Triton needs "
                         "them inside model.onnx (models under 2 GB)")
    config = triton_config(model, name, **config_kwargs)
    repo_dir.mkdir(parents=True, exist_ok=True)
    final = repo_dir / name
    stage = Path(tempfile.mkdtemp(dir=repo_dir, prefix=f".tmp-{name}-"))
    try:
        (stage / "1").mkdir()
        shutil.copyfile(onnx_path, stage / "1" / "model.onnx")
        (stage / "config.pbtxt").write_text(config)
        for path in (stage / "config.pbtxt", stage / "1" / "model.onnx"):
            os.chmod(path, new_file_mode())  # the umask's permissions (mkdtemp's 0700 would hide it)
        os.chmod(stage, new_file_mode(executable=True))
        old = None
        if final.exists():  # swapped out, then removed: DIR/<name> is always a whole model
            old = Path(tempfile.mkdtemp(dir=repo_dir, prefix=f".old-{name}-"))
            os.replace(final, old / name)
        os.replace(stage, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return final

