"""onnxruntime execution providers: TensorRT, then CUDA, then CPU, taking the first that is there."""
from __future__ import annotations

CHAIN = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CHOICES = {"auto": 0, "tensorrt": 0, "cuda": 1, "cpu": 2}  # where in CHAIN each choice starts


def provider_chain(choice: str, available) -> tuple[list[str], list[str]]:
    """(providers to hand onnxruntime in order, notes on what was asked for but is missing).

    'auto' and 'tensorrt' start at TensorRT, 'cuda' at CUDA, 'cpu' is CPU only; from the
    start, every provider of the chain that this onnxruntime build has is kept, so
    onnxruntime falls back along it (it assigns nodes a provider cannot run to the next).
    """
    if choice not in CHOICES:
        raise ValueError(f"--provider {choice!r}: use one of {', '.join(CHOICES)}")
    available = set(available)
    wanted = CHAIN[CHOICES[choice]:]
    chain = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chain:
        chain.append("CPUExecutionProvider")  # every onnxruntime build has it
    notes = []
    if choice != "auto" and wanted[0] not in available:
        extra = " (install onnxruntime-gpu on a CUDA host)" if choice in ("cuda", "tensorrt") else ""
        notes.append(f"{wanted[0]} is not in this onnxruntime{extra}; falling back to {chain[0]}")
    return chain, notes


def provider_options(provider: str, *, input_name: str, sample_shape, max_batch: int, fp16: bool,
                     cache_dir: str | None) -> dict:
    """Per-provider settings. TensorRT gets a batch profile 1..max_batch (one engine for all batch
    sizes, instead of a rebuild per new size) and, where a cache folder is given, an engine cache."""
    if provider != "TensorrtExecutionProvider":
        return {}
    shape = "x".join(str(v) for v in sample_shape)
    options = {
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_profile_min_shapes": f"{input_name}:1x{shape}",
        "trt_profile_opt_shapes": f"{input_name}:{max_batch}x{shape}",
        "trt_profile_max_shapes": f"{input_name}:{max_batch}x{shape}",
    }
    if cache_dir:
        options.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache_dir})
    return options
