"""ONNX export of a trained detector, verified against torch, TensorRT-ready.

`export_detector` writes one ONNX file: images (N, 3, 224, 224) float32, or
patch-selected uint8 tiles (N, 224, 224, 3) with `with_preprocessing=True`
-> logits (N,) and probabilities (N,), batch axis dynamic. Every export is
checked before it is kept: only ONNX ops TensorRT parses, and onnxruntime
outputs at two batch sizes (neither the traced one) within a tolerance of
torch's.

Two changes make open_clip graphs export cleanly; both are checked by that
verification against the untouched detector:
- nn.MultiheadAttention is swapped for an equivalent batch-first attention
  (plain MatMul/Softmax). torch's fused fast path does not export, and its
  (L, N, D) layout puts Transpose->MatMul pairs on the batch axis that
  onnxruntime 1.32's CPU layout optimiser crashes on in float16.
- float16 keeps float32 graph inputs/outputs with casts inside, so the file
  runs anywhere onnxruntime runs, CPU included.

Patch selection (sorting 32x32 patches by FFT entropy) stays outside the
graph: a data-dependent sort and gather over FFTs is no TensorRT-friendly
graph. The runtime (dgsnet_export) does it in numpy, as the metadata says.
"""
from __future__ import annotations

import contextlib
import io
import json
import numbers
import os
import shlex
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# The runtime's reader defines the metadata format and the step names; the writer uses them.
from dgsnet.fileio import new_file_mode
from dgsnet_export.metadata import FORMAT as METADATA_FORMAT
from dgsnet_export.metadata import NORMALIZE, PATCH_SELECTION

DEFAULT_OPSET = 17
OUTPUT_NAMES = ("logits", "probabilities")
INPUT_SIZE = 224
TRACE_BATCH = 2  # traced batch size; verification runs at others so a baked-in batch fails
FLOAT32_ATOL = 1e-4  # max |onnx - torch| on logits, relative to max(1, max |logit|)
FLOAT16_ATOL = 2e-2

# ONNX ops (default domain) the TensorRT ONNX parser supports (onnx-tensorrt
# docs/operators.md, TensorRT 8.6 - 10.x). LayerNormalization needs >= 8.6.
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul
Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze
Upsample Where Xor
""".split())


# Ops every ViT detector graph needs whichever exporter writes it: Erf (GELU) and Expand (the class
# token broadcast to the batch). No opset older than both can hold the graph (torch's own floor is lower).
GRAPH_OPS = ("Erf", "Expand")



def _labels() -> tuple[str, str]:
    from dgsnet.models import LABELS  # imported late: this module loads without torch until it exports

    return LABELS

def opset_range(exporter: str = "auto") -> tuple[int, int]:
    """(lowest, highest) ONNX opset `exporter` ('auto' | 'dynamo' | 'torchscript') can write a detector at,
    read from the installed torch.onnx, onnxscript and onnx rather than fixed here.

    Lowest: the first opset with every op of GRAPH_OPS (and torch's ONNX_MIN_OPSET). Highest: the
    torchscript exporter stops at torch's ONNX_MAX_OPSET; the dynamo exporter writes torchlib's opset
    and converts it with onnxscript's version converter up to SUPPORTED_MAX_ONNX_OPSET (past it the
    graph comes out invalid); neither past onnx's own opset (onnx.checker refuses newer ones).
    'auto' tries dynamo first, then torchscript: the union of both.
    """
    import onnx.defs

    try:
        from torch.onnx import _constants as torch_onnx  # private, but where torch.onnx keeps its bounds
    except ImportError:
        torch_onnx = None
    first = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx") and schema.name in GRAPH_OPS:
            first[schema.name] = min(first.get(schema.name, schema.since_version), schema.since_version)
    low = max(getattr(torch_onnx, "ONNX_MIN_OPSET", 1), *first.values())
    torchscript_high = getattr(torch_onnx, "ONNX_MAX_OPSET", DEFAULT_OPSET)
    try:
        from onnxscript.version_converter import _version_converter as converter
        dynamo_high = int(converter.SUPPORTED_MAX_ONNX_OPSET)
    except (ImportError, AttributeError):  # no onnxscript: the dynamo exporter cannot run at all
        dynamo_high = torchscript_high
    high = {"dynamo": dynamo_high, "torchscript": torchscript_high,
            "auto": max(dynamo_high, torchscript_high)}[exporter]
    return low, min(high, onnx.defs.onnx_opset_version())


def check_opset(opset, exporter: str = "auto", *, name: str = "--opset") -> int:
    """`opset` as an int, or ValueError (one line: the range this install exports and the fix)."""
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter={exporter!r}: use auto, dynamo or torchscript")
    low, high = opset_range(exporter)
    value = None
    if isinstance(opset, numbers.Integral) and not isinstance(opset, bool):
        value = int(opset)
    elif isinstance(opset, str) and opset.strip().lstrip("+-").isdigit():
        value = int(opset)
    if value is None or not low <= value <= high:
        import onnx
        import torch

        which = "" if exporter == "auto" else f" with the {exporter} exporter"
        others = ""
        if exporter == "auto":
            parts = [f"{e} up to {opset_range(e)[1]}" for e in ("dynamo", "torchscript")]
            others = f" ({', '.join(parts)})"
        raise ValueError(f"{name} {opset}: this torch {torch.__version__} / onnx {onnx.__version__} exports a "
                         f"detector at opsets {low} to {high}{which}{others}; choose one in that range "
                         f"(default {DEFAULT_OPSET})")
    return value


class ExportError(RuntimeError):
    """The detector could not be exported to a valid, TensorRT-ready ONNX file."""


class ExportVerificationError(ExportError):
    """onnxruntime disagrees with torch beyond the tolerance; the file was not kept."""


@dataclass
class ExportReport:
    path: str
    precision: str
    opset: int
    exporter: str
    input_name: str
    input_dtype: str
    batch_sizes: tuple[int, ...]
    max_abs_error: float  # on logits, over all verified batches
    max_rel_error: float  # max_abs_error / max(1, max |torch logit|): compared with atol
    max_prob_error: float
    atol: float
    op_types: dict[str, int]
    metadata: dict[str, str]
    file_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.path}: {self.precision} opset {self.opset} ({self.exporter}), input "
                f"{self.input_name} {self.input_dtype}, verified at batch {list(self.batch_sizes)}: "
                f"max |logit error| {self.max_abs_error:.3g} (relative {self.max_rel_error:.3g} <= "
                f"{self.atol:g}), max |probability error| {self.max_prob_error:.3g}; "
                f"{sum(self.op_types.values())} nodes, all TensorRT-parsable; "
                f"{self.file_bytes / 2**20:.1f} MiB in {self.seconds:.1f} s")


# ---------------------------------------------------------------- metadata

def normalization_spec(name_or_spec) -> dict:
    """'imagenet' | 'clip' | {'name', 'mean', 'std'} -> {'name', 'mean', 'std'} (lists of 3 floats)."""
    if isinstance(name_or_spec, str):
        from dgsnet.image.preprocess import NORMS as known

        if name_or_spec not in known:
            raise ValueError(f"normalization {name_or_spec!r}: use one of {sorted(known)} or a dict "
                             "with 'mean' and 'std'")
        mean, std = known[name_or_spec]
        return {"name": name_or_spec, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    spec = dict(name_or_spec)
    try:
        mean, std = [float(v) for v in spec["mean"]], [float(v) for v in spec["std"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"normalization {name_or_spec!r}: needs 'mean' and 'std', 3 numbers each") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalization {name_or_spec!r}: mean and std need 3 values each, std > 0")
    return {"name": str(spec.get("name", "custom")), "mean": mean, "std": std}


def build_metadata(metadata: dict, *, precision: str, with_preprocessing: bool, opset: int,
                   exporter: str, input_name: str) -> dict[str, str]:
    """The ONNX metadata_props (all strings; JSON where structured). dgsnet_export reads them back."""
    from dgsnet.version import __version__

    if not metadata.get("backbone"):
        raise ValueError("metadata needs 'backbone' (the open_clip model name, e.g. 'ViT-L-14')")
    input_size = int(metadata.get("input_size", INPUT_SIZE))
    if input_size != INPUT_SIZE:
        raise ValueError(f"metadata input_size={input_size}: dgsnet detectors take {INPUT_SIZE}x{INPUT_SIZE} "
                         "tiles (7x7 patches of 32 px)")
    threshold = float(metadata.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"metadata threshold={threshold}: a probability strictly between 0 and 1")
    norm = normalization_spec(metadata.get("normalization", "imagenet"))
    if with_preprocessing:
        graph_input = {"name": input_name, "dtype": "uint8", "layout": "NHWC",
                       "shape": ["batch", INPUT_SIZE, INPUT_SIZE, 3]}
        steps = {"caller": [PATCH_SELECTION], "in_graph": [NORMALIZE]}
    else:
        graph_input = {"name": input_name, "dtype": "float32", "layout": "NCHW",
                       "shape": ["batch", 3, INPUT_SIZE, INPUT_SIZE]}
        steps = {"caller": [PATCH_SELECTION, NORMALIZE], "in_graph": []}
    props = {
        "format": METADATA_FORMAT,
        "dgsnet_version": __version__,
        "backbone": str(metadata["backbone"]),
        "pretrained": str(metadata.get("pretrained") or ""),
        "normalization": json.dumps(norm),
        "input_size": str(INPUT_SIZE),
        "threshold": repr(threshold),
        "preprocessing": json.dumps(steps),
        "input": json.dumps(graph_input),
        "outputs": json.dumps(list(OUTPUT_NAMES)),
        "labels": json.dumps(list(_labels())),
        "precision": precision,
        "opset": str(opset),
        "exporter": exporter,
    }
    for key, value in metadata.items():  # anything else the caller records (checkpoint, run id, ...)
        if key not in props and key not in ("normalization", "threshold", "input_size"):
            props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


# ---------------------------------------------------------------- export-friendly modules

def _torch():
    import torch

    return torch


def _export_modules():
    """Module classes are built lazily so importing this file does not import torch."""
    torch = _torch()
    from torch import nn

    class BatchFirstAttention(nn.Module):
        """nn.MultiheadAttention self-attention as plain batch-first MatMul/Softmax (same weights)."""

        def __init__(self, mha: nn.MultiheadAttention):
            super().__init__()
            self.heads = mha.num_heads
            self.batch_first = mha.batch_first
            self.in_proj_weight = mha.in_proj_weight
            self.in_proj_bias = mha.in_proj_bias
            self.out_proj = mha.out_proj

        def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None,
                    key_padding_mask=None, is_causal=False):
            if key_padding_mask is not None or is_causal:
                raise ExportError("export supports encoder self-attention only (no padding mask, not causal)")
            x = query if self.batch_first else query.transpose(0, 1)
            n, length, dim = x.shape
            head_dim = dim // self.heads
            qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
            qkv = qkv.reshape(n, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (N, H, L, d)
            scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
            if attn_mask is not None:
                scores = (scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                          else scores + attn_mask.to(scores.dtype))
            out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, dim)
            out = self.out_proj(out)
            return (out if self.batch_first else out.transpose(0, 1)), None

    class ExportGraph(nn.Module):
        """What goes into the ONNX file: [uint8 NHWC -> normalised NCHW] -> detector -> (logits, probs)."""

        def __init__(self, detector: nn.Module, *, half: bool, norm: dict | None):
            super().__init__()
            self.detector = detector
            self.half_precision = half
            self.preprocess = norm is not None
            if norm is not None:
                self.register_buffer("mean", torch.tensor(norm["mean"], dtype=torch.float32).view(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(norm["std"], dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x):
            if self.preprocess:  # the same arithmetic as dgsnet.image.preprocess.normalize, in float32
                x = (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
            if self.half_precision:
                x = x.half()
            logits = self.detector(x)
            if logits.dim() == 2:  # tolerate (N, 1) heads
                logits = logits.squeeze(-1)
            logits = logits.float()
            return logits, torch.sigmoid(logits)

    return BatchFirstAttention, ExportGraph


def export_friendly(detector):
    """A copy of `detector` in eval mode with every nn.MultiheadAttention swapped for BatchFirstAttention."""
    import copy

    from torch import nn

    attention_cls, _ = _export_modules()
    model = copy.deepcopy(detector).float().eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                if not child._qkv_same_embed_dim or child.bias_k is not None or child.add_zero_attn:
                    raise ExportError(f"attention module {name!r} is not a packed self-attention "
                                      "(kdim/vdim, bias_k or add_zero_attn set); export supports ViT encoders")
                setattr(parent, name, attention_cls(child))
    return model


# ---------------------------------------------------------------- checks

def tensorrt_issues(model) -> list[str]:
    """Why TensorRT's ONNX parser would reject `model` (an onnx.ModelProto); empty when it would not."""
    issues = []
    if len(model.functions):
        issues.append(f"model-local functions {[f.name for f in model.functions]} (inline them)")
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        issues.append(f"custom-domain ops {custom}")
    unsupported = sorted({n.op_type for n in model.graph.node
                          if n.domain in ("", "ai.onnx") and n.op_type not in TENSORRT_OPS})
    if unsupported:
        issues.append(f"ops TensorRT does not parse {unsupported}")
    return issues


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


# ---------------------------------------------------------------- export

@contextlib.contextmanager
def _quiet_loggers(*names):
    """The exporters log progress and opset-conversion notes at INFO/WARNING; the report says what matters."""
    import logging

    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _run_exporter(graph, example, path: str, *, opset: int, exporter: str, input_name: str) -> str:
    """Runs torch.onnx.export; returns the captured exporter chatter (for error messages)."""
    torch = _torch()
    chatter = io.StringIO()
    outputs = {name: {0: "batch"} for name in OUTPUT_NAMES}
    with contextlib.redirect_stdout(chatter), _quiet_loggers("torch.onnx", "onnxscript"):
        if exporter == "dynamo":
            torch.onnx.export(graph, (example,), path, dynamo=True, opset_version=opset,
                              input_names=[input_name], output_names=list(OUTPUT_NAMES),
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}},
                              external_data=False, verbose=False)
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces itself
                torch.onnx.export(graph, (example,), path, dynamo=False, opset_version=opset,
                                  input_names=[input_name], output_names=list(OUTPUT_NAMES),
                                  dynamic_axes={input_name: {0: "batch"}, **outputs}, do_constant_folding=True)
    return chatter.getvalue()


def _random_inputs(batch: int, with_preprocessing: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if with_preprocessing:
        return rng.integers(0, 256, size=(batch, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    return rng.standard_normal((batch, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)


def _torch_reference(detector, inputs: np.ndarray, norm: dict | None) -> np.ndarray:
    """Logits of the untouched float32 detector; uint8 tiles are normalised by dgsnet.image.preprocess."""
    torch = _torch()
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


def _save_onnx(model, path: Path) -> None:
    """Atomic write (temp file + rename); models over 2 GB keep their weights in PATH.data."""
    import onnx

    weights = sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".onnx")
    os.close(fd)
    try:
        os.chmod(tmp, new_file_mode(str(path)))  # the umask's permissions, as every other output
        if weights > 1_800_000_000:
            onnx.save(model, tmp, save_as_external_data=True, location=path.name + ".data")
        else:
            onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_detector(detector, out_path, *, metadata: dict, opset: int = DEFAULT_OPSET, fp16: bool = False,
                    batch_sizes=(1, 7), atol: float | None = None, with_preprocessing: bool = False,
                    exporter: str = "auto", tensorrt_check: str = "error") -> ExportReport:
    """Exports `detector` (images (N, 3, 224, 224) -> logits (N,)) to `out_path` and verifies it.

    metadata: at least {'backbone': ...}; optional 'pretrained', 'normalization' ('imagenet' | 'clip'
    | {'mean', 'std'}), 'threshold' (0.5), plus any string/JSON-able extras. exporter: 'dynamo'
    (torch.export + onnxscript, the cleaner graph), 'torchscript' (legacy), or 'auto' (dynamo, then
    torchscript if it fails). tensorrt_check: 'error' | 'warn' | 'off' for ops TensorRT cannot parse.
    Raises ExportVerificationError (and writes nothing) when onnxruntime's logits differ from torch's
    by more than atol (relative to max(1, max |logit|); default 1e-4 float32, 2e-2 float16).
    """
    import onnx

    torch = _torch()
    start = time.perf_counter()
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter={exporter!r}: use auto, dynamo or torchscript")
    if tensorrt_check not in ("error", "warn", "off"):
        raise ValueError(f"tensorrt_check={tensorrt_check!r}: use error, warn or off")
    opset = check_opset(opset, exporter, name="opset")  # before the slow export
    batch_sizes = tuple(int(b) for b in batch_sizes)
    if len(batch_sizes) < 2 or min(batch_sizes) < 1 or TRACE_BATCH in batch_sizes:
        raise ValueError(f"batch_sizes={batch_sizes}: give at least two sizes >= 1, not {TRACE_BATCH} "
                         "(the traced size), so the dynamic batch axis is really exercised")
    atol = float(atol if atol is not None else (FLOAT16_ATOL if fp16 else FLOAT32_ATOL))
    precision = "float16" if fp16 else "float32"
    input_name = "tiles" if with_preprocessing else "images"
    out_path = Path(out_path)
    norm = normalization_spec(metadata.get("normalization", "imagenet"))
    warnings_out: list[str] = []

    reference = detector.eval()
    model = export_friendly(detector)
    if fp16:
        model = model.half()
    _, graph_cls = _export_modules()
    graph = graph_cls(model, half=fp16, norm=norm if with_preprocessing else None).eval()
    example = torch.from_numpy(_random_inputs(TRACE_BATCH, with_preprocessing, seed=1234))

    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # On the output's disk: a full /tmp must not fail an export whose destination has room.
    with tempfile.TemporaryDirectory(prefix=".tmp-dgsnet-export-",
                                     dir=out_path.parent if out_path.parent.exists() else None) as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        used, failures = None, []
        torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX form
        try:
            for name in order:
                try:
                    _run_exporter(graph, example, raw, opset=opset, exporter=name, input_name=input_name)
                    used = name
                    break
                except OSError:  # a full disk or a size limit: the environment, not the exporter
                    raise
                except Exception as exc:  # noqa: BLE001 - reported with the other exporter's outcome
                    failures.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        if used is None:
            raise ExportError(f"{out_path}: torch.onnx.export failed ({'; '.join(failures)})")
        if failures:
            warnings_out.append(f"fell back to the {used} exporter after {'; '.join(failures)}")
        onnx_model = onnx.load(raw)

    actual_opset = next(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx"))
    if actual_opset != opset:
        warnings_out.append(f"asked for opset {opset}, the {used} exporter wrote opset {actual_opset}")
    try:
        _check_io(onnx_model, input_name)
    except ExportError as exc:
        raise ExportError(f"{out_path}: {exc}") from None
    issues = tensorrt_issues(onnx_model)
    if issues and tensorrt_check == "error":
        raise ExportError(f"{out_path}: not TensorRT-ready: {'; '.join(issues)}")
    warnings_out += [f"TensorRT: {i}" for i in issues if tensorrt_check == "warn"]
    if with_preprocessing:
        warnings_out.append("uint8 graph input: needs a TensorRT that takes UINT8 network inputs (10.x); "
                            "export without with_preprocessing for older ones")
    baked = _baked_batch_reshapes(onnx_model, TRACE_BATCH)

    props = build_metadata(metadata, precision=precision, with_preprocessing=with_preprocessing,
                           opset=actual_opset, exporter=used, input_name=input_name)
    del onnx_model.metadata_props[:]
    onnx.helper.set_model_props(onnx_model, props)
    onnx_model.doc_string = (f"dgsnet detector ({props['backbone']}): {input_name} -> logits, probabilities "
                             "(1 = generated); see metadata_props")
    onnx.checker.check_model(onnx_model)

    with tempfile.TemporaryDirectory(prefix="dgsnet-verify-", dir=out_path.parent if out_path.parent.exists()
                                     else None) as tmp:
        candidate = Path(tmp) / out_path.name
        _save_onnx(onnx_model, candidate)
        try:
            errors = verify_onnx(candidate, reference, batch_sizes=batch_sizes,
                                 norm=norm if with_preprocessing else None)
        except ExportVerificationError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime rejects a batch size: name the likely cause
            hint = f" (Reshape nodes with the traced batch {TRACE_BATCH} baked in: {baked})" if baked else ""
            raise ExportVerificationError(f"{out_path}: onnxruntime failed on the exported graph{hint}: "
                                          f"{type(exc).__name__}: {exc}") from exc
        if not errors["max_rel_error"] <= atol:
            raise ExportVerificationError(
                f"{out_path}: onnxruntime logits differ from torch by {errors['max_abs_error']:.3g} "
                f"(relative {errors['max_rel_error']:.3g} > atol {atol:g}, {precision}); file not written. "
                "Try exporter='torchscript', another opset, or float32")
        props["verification"] = json.dumps({"batch_sizes": list(batch_sizes), "atol": atol, **errors})
        onnx.helper.set_model_props(onnx_model, props)
        _save_onnx(onnx_model, out_path)

    return ExportReport(
        path=str(out_path), precision=precision, opset=actual_opset, exporter=used, input_name=input_name,
        input_dtype="uint8" if with_preprocessing else "float32", batch_sizes=batch_sizes,
        max_abs_error=errors["max_abs_error"], max_rel_error=errors["max_rel_error"],
        max_prob_error=errors["max_prob_error"], atol=atol,
        op_types=dict(Counter(n.op_type for n in onnx_model.graph.node).most_common()),
        metadata=props, file_bytes=out_path.stat().st_size, seconds=time.perf_counter() - start,
        warnings=warnings_out)


def checkpoint_metadata(meta: dict, run_dir, head: str, threshold: float = 0.5) -> dict:
    """export_detector's `metadata` for a detector loaded from a run directory's model.json."""
    backbone = meta["backbone"]
    return {"backbone": backbone["model"], "pretrained": backbone.get("pretrained") or "",
            "normalization": meta.get("norm", "imagenet"), "threshold": threshold,
            "checkpoint": str(run_dir), "head": head, "stage": meta.get("stage"), "step": meta.get("step"),
            "lora": meta.get("lora"), "visual_fingerprint": backbone.get("visual_fingerprint", ""),
            "trained_with_dgsnet": meta.get("dgsnet_version", "")}


def export_checkpoint(run_dir, out_path, *, head: str = "auto", threshold: float = 0.5,
                      pretrained: str | None = None, **export_kwargs) -> ExportReport:
    """Loads a finished run directory (dgsnet.models.checkpoint) and exports its detector:
    the student encoder with LoRA merged + student head (or the teacher probe of a stage-1 run).
    `pretrained` confirms a backbone weights file the run names outside its directory."""
    from dgsnet.predict import load_detector

    detector, meta, head = load_detector(str(run_dir), head, pretrained=pretrained)
    return export_detector(detector, out_path, metadata=checkpoint_metadata(meta, run_dir, head, threshold),
                           **export_kwargs)


# ---------------------------------------------------------------- TensorRT

def _input_profile(onnx_path) -> tuple[str, list[int]]:
    """The graph input's name and its per-sample dims (everything after the batch axis)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path}: expected one graph input, found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    rest = [d.dim_value for d in dims[1:]]
    if any(v <= 0 for v in rest):
        raise ValueError(f"{onnx_path}: input {inputs[0].name} has dynamic non-batch dims; re-export it")
    return inputs[0].name, rest


def check_profile(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"batch profile min={min_batch} opt={opt_batch} max={max_batch}: need "
                         "1 <= min <= opt <= max")


def tensorrt_command(onnx_path, min_batch: int = 1, opt_batch: int = 16, max_batch: int = 64,
                     fp16: bool = True, engine_path=None) -> str:
    """The trtexec command line that builds an engine with a min/opt/max batch profile."""
    check_profile(min_batch, opt_batch, max_batch)
    name, rest = _input_profile(onnx_path)
    engine_path = engine_path or str(Path(onnx_path).with_suffix(".engine"))
    shape = "x".join(str(v) for v in rest)
    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
             f"--minShapes={name}:{min_batch}x{shape}", f"--optShapes={name}:{opt_batch}x{shape}",
             f"--maxShapes={name}:{max_batch}x{shape}"]
    if fp16:
        parts.append("--fp16")
    return " ".join(shlex.quote(p) for p in parts)


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def build_tensorrt_engine(onnx_path, engine_path=None, min_batch: int = 1, opt_batch: int = 16,
                          max_batch: int = 64, fp16: bool = True, workspace_gib: float = 4.0) -> Path:
    """Builds a serialized TensorRT engine with the TensorRT Python API (what tensorrt_command runs)."""
    check_profile(min_batch, opt_batch, max_batch)
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError("TensorRT is not importable here; run the command from tensorrt_command() "
                           "on a machine with TensorRT (pip install tensorrt)") from None
    name, rest = _input_profile(onnx_path)
    engine_path = Path(engine_path or Path(onnx_path).with_suffix(".engine"))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser rejected the file: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    from dgsnet.fileio import atomic_write

    atomic_write(str(engine_path), bytes(serialized))
    return engine_path


__all__ = ["DEFAULT_OPSET", "ExportError", "ExportReport", "ExportVerificationError", "GRAPH_OPS", "TENSORRT_OPS",
           "build_metadata", "build_tensorrt_engine", "check_opset", "checkpoint_metadata", "export_checkpoint",
           "export_detector", "export_friendly", "normalization_spec", "opset_range", "tensorrt_available",
           "tensorrt_command", "tensorrt_issues",
           "verify_onnx"]
