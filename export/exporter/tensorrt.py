"""TensorRT: the ops its ONNX parser takes, the trtexec command line, and building an engine in Python."""
from __future__ import annotations

import shlex
from pathlib import Path

from .spec import ExportError

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


# ---------------------------------------------------------------- engines

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
