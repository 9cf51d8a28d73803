"""Inference with an exported detector: onnxruntime + numpy, no torch.

    detector = OnnxDetector("detector.onnx", provider="auto")
    for record in detector.predict_paths(["images/"]):
        print(record)   # {"path", "logit", "probability", "label"} or {"path", "error"}

`iter_predictions` is the engine-independent loop (load, preprocess, batch,
score, label); `dgsnet predict` runs the same loop with the torch detector.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .inputs import collect_inputs
from .metadata import MetadataError, ModelInfo
from .preprocessing import Preprocessor
from .providers import provider_chain, provider_options


class ModelLoadError(RuntimeError):
    """The ONNX file is missing or onnxruntime cannot load it."""


def sigmoid(logit: float) -> float:
    """Probability of 'generated' from a logit, without overflow for large |logit|."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


def non_finite_message(path, logit: float) -> str:
    """The error record's text for an image the detector scored NaN or +/-inf."""
    return (f"{path}: the detector returned a non-finite score ({logit}) for this image; "
            "the model or input is broken (re-export the model, or check the file)")


def _load_and_preprocess(path: Path, preprocess: Callable[[np.ndarray], np.ndarray]):
    """(sample, None) or (None, error message): a bad input never raises out of the batch."""
    from dgsnet.imageio import ImageLoadError, load_rgb

    try:
        return preprocess(load_rgb(path, decode=getattr(preprocess, "decode", "dgsnet")), path=path), None
    except ImageLoadError as exc:
        return None, str(exc)
    except ValueError as exc:  # an image the preprocessing cannot take (e.g. odd shape)
        return None, f"{path}: {exc}"


def iter_predictions(paths: Iterable, logits_fn: Callable[[np.ndarray], np.ndarray],
                     preprocess: Callable[[np.ndarray], np.ndarray], *, labels=("real", "generated"),
                     threshold: float = 0.5, batch_size: int = 16, workers: int | None = None,
                     progress=None) -> Iterator[dict]:
    """One record per path, in order: {"path", "logit", "probability", "label"} or {"path", "error"}.

    Files are decoded and preprocessed on `workers` threads (PIL and numpy's FFT/BLAS
    release the GIL), then scored `batch_size` at a time by `logits_fn`
    ((B, ...) array -> (B,) logits). Unreadable files, and images the detector
    scores NaN or +/-inf, give an error record and the batch goes on.
    `progress`: an object with update(n), e.g. a tqdm bar.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    paths = [Path(p) for p in paths]
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            if pool is not None:
                loaded = list(pool.map(lambda p: _load_and_preprocess(p, preprocess), chunk))
            else:
                loaded = [_load_and_preprocess(p, preprocess) for p in chunk]
            good = [i for i, (sample, _) in enumerate(loaded) if sample is not None]
            logits = np.zeros(0)
            if good:
                logits = np.asarray(logits_fn(np.stack([loaded[i][0] for i in good])), dtype=np.float64)
                logits = logits.reshape(-1)
                if logits.shape[0] != len(good):
                    raise RuntimeError(f"the detector returned {logits.shape[0]} logits for {len(good)} images")
            scored = dict(zip(good, logits.tolist()))
            for i, path in enumerate(chunk):
                if i in scored and not math.isfinite(scored[i]):
                    # a label from NaN would be silent garbage ("real": NaN >= t is False)
                    yield {"path": str(path), "error": non_finite_message(path, scored[i])}
                elif i in scored:
                    prob = sigmoid(scored[i])
                    yield {"path": str(path), "logit": scored[i], "probability": prob,
                           "label": labels[1] if prob >= threshold else labels[0]}
                else:
                    yield {"path": str(path), "error": loaded[i][1]}
            if progress is not None:
                progress.update(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown()


class OnnxDetector:
    """An exported dgsnet detector in an onnxruntime session, with its metadata and preprocessing.

    provider: 'auto' | 'tensorrt' | 'cuda' | 'cpu' (TensorRT -> CUDA -> CPU, first available).
    threads: onnxruntime intra-op threads (None = onnxruntime's default, all cores).
    max_batch: the largest batch TensorRT's profile covers; trt_fp16: let TensorRT run float16.
    patch_order / patch_seed / decode: the preprocessing choices of dgsnet.preprocess.layout_rng
    and dgsnet.imageio.load_rgb (raster order and dgsnet decoding unless asked otherwise).
    """

    def __init__(self, model_path, provider: str = "auto", *, threads: int | None = None,
                 max_batch: int = 64, trt_fp16: bool = True, trt_cache_dir: str | None = None,
                 patch_order: str = "raster", patch_seed: int = 100, decode: str = "dgsnet"):
        import onnxruntime as ort

        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such model file; export one with `dgsnet export`")
        chain, self.notes = provider_chain(provider, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            # A CPU session first: it reads the metadata that configures TensorRT's batch profile,
            # and it is the session itself when CPU is all there is.
            cpu = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self.info = ModelInfo.from_props(cpu.get_modelmeta().custom_metadata_map, source=str(self.path))
            size = self.info.input_size
            sample_shape = [3, size, size] if self.info.input_dtype == "float32" else [size, size, 3]
            providers = [(p, provider_options(p, input_name=self.info.input_name, sample_shape=sample_shape,
                                              max_batch=max_batch, fp16=trt_fp16, cache_dir=trt_cache_dir))
                         for p in chain]
            self.session = cpu if chain == ["CPUExecutionProvider"] else \
                ort.InferenceSession(str(self.path), options, providers=providers)
        except MetadataError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors, stated as a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelLoadError(f"{self.path}: onnxruntime cannot load it ({type(exc).__name__}: {first}); "
                                 "re-export it with `dgsnet export`") from None
        self.provider = self.session.get_providers()[0]
        if self.provider != chain[0]:
            self.notes.append(f"{chain[0]} could not start; running on {self.provider}")
        self.preprocess = Preprocessor.from_info(self.info, patch_order=patch_order, patch_seed=patch_seed,
                                                 decode=decode)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(B, ...) graph inputs -> (B,) float64 logits."""
        dtype = np.uint8 if self.info.input_dtype == "uint8" else np.float32
        (out,) = self.session.run(["logits"], {self.info.input_name: np.ascontiguousarray(batch, dtype=dtype)})
        return out.astype(np.float64)

    def predict_paths(self, inputs: Iterable, *, batch_size: int = 16, threshold: float | None = None,
                      workers: int | None = None, progress=None) -> Iterator[dict]:
        """Records for image files and folders (see iter_predictions and inputs.collect_inputs)."""
        found = collect_inputs(inputs)
        return iter_predictions(found.paths, self.logits, self.preprocess, labels=self.info.labels,
                                threshold=self.info.threshold if threshold is None else threshold,
                                batch_size=batch_size, workers=workers, progress=progress)
