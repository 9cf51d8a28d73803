"""Inference with an exported detector: onnxruntime + numpy, no torch.

    detector = OnnxDetector("detector.onnx", provider="auto")
    for record in detector.predict_paths(["images/"]):
        print(record)   # {"path", "logit", "probability", "label"} or {"path", "error"}

`dgsnet.scoring.iter_predictions` is the engine-independent loop (load, preprocess, batch,
score, label); `dgsnet predict` runs the same loop with the torch detector.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from dgsnet.scoring import collect_inputs, iter_predictions

from .metadata import PATCH_SELECTION, REEXPORT, MetadataError, ModelInfo
from .preprocessing import preprocess_for
from .providers import provider_chain, provider_options


class ModelLoadError(RuntimeError):
    """The ONNX file is missing or onnxruntime cannot load it."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


LOGITS = "logits"  # the graph output the runtime reads: one logit per image
END_TO_END_OUTPUTS = ("patch_indices", "patch_grid")  # what an end-to-end graph adds
PROBE_BATCH = 3  # the test batch run at load: neither 1 nor the exporter's traced 2, so a baked-in batch shows
ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(float16)": "float16",
             "tensor(double)": "float64"}
LAYOUTS = {"NCHW": (1, (2, 3)), "NHWC": (3, (1, 2))}  # channel axis, spatial axes


def _type_name(ort_type: str) -> str:
    return ORT_TYPES.get(ort_type, ort_type.removeprefix("tensor(").removesuffix(")"))


def _dims(arg) -> list | None:
    """A NodeArg's shape as ints (fixed) and None (dynamic or unknown); None when even the rank is unknown."""
    if arg.shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else None for d in arg.shape]


def _shape_text(dims) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"


def check_graph(session, info: ModelInfo, path) -> int | None:
    """Raises ModelLoadError / MetadataError where the metadata contradicts the graph it describes.

    Torch- and onnx-free: reads what onnxruntime says about the graph's inputs and outputs.
    Returns the graph's fixed batch size, or None when its batch axis is dynamic.
    """
    def contradiction(what: str) -> ModelLoadError:
        return ModelLoadError(f"{path}: {what}; {REEXPORT}")

    from dgsnet.image.preprocess import TILE

    if info.end_to_end:
        return _check_end_to_end(session, info, path, contradiction)
    if PATCH_SELECTION in info.caller_steps and info.input_size != TILE:
        raise MetadataError(f"{path}: metadata input_size {info.input_size} contradicts its own "
                            f"{PATCH_SELECTION} step, which makes {TILE}x{TILE} tiles; {REEXPORT}")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise contradiction(f"the graph has {len(inputs)} inputs {[i.name for i in inputs]}, a dgsnet detector "
                            f"one (the metadata names {info.input_name!r})")
    (graph_input,) = inputs
    if graph_input.name != info.input_name:
        raise contradiction(f"the metadata names the input {info.input_name!r}, but the graph's input is "
                            f"{graph_input.name!r}")
    dtype = _type_name(graph_input.type)
    if dtype != info.input_dtype:
        raise contradiction(f"the metadata says input {graph_input.name!r} is {info.input_dtype}, but the graph "
                            f"takes {dtype}")
    dims = _dims(graph_input)
    layout = info.input_layout
    if dims is not None:
        shape = _shape_text(dims)
        if len(dims) != 4:
            raise contradiction(f"the graph input {graph_input.name!r} is {shape}, {len(dims)} dims; the "
                                f"metadata's {layout} layout has 4")
        channel, spatial = LAYOUTS[layout]
        if dims[channel] not in (None, 3):
            other = next(name for name, (c, _) in LAYOUTS.items() if name != layout)
            found = (f"laid out {other}" if dims[LAYOUTS[other][0]] == 3 else
                     f"{dims[channel]} channels where {layout} has 3 (RGB) at axis {channel}")
            raise contradiction(f"the metadata says input {graph_input.name!r} is {layout} with 3 channels, "
                                f"but the graph's is {shape}: {found}")
        sizes = [dims[a] for a in spatial]
        if any(d is not None and d != info.input_size for d in sizes):
            raise contradiction(f"the metadata input_size is {info.input_size}, but the graph input "
                                f"{graph_input.name!r} is {shape}: {sizes[0] or '?'}x{sizes[1] or '?'} images")
        batch = dims[0]
        if batch == 0:
            raise contradiction(f"the graph input {graph_input.name!r} is {shape}: a batch of 0 images")
    else:
        batch = None

    if LOGITS not in info.outputs:
        raise MetadataError(f"{path}: metadata outputs {list(info.outputs)} do not include {LOGITS!r}, the "
                            f"output this runtime reads; {REEXPORT}")
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [name for name in info.outputs if name not in outputs]
    if missing:
        raise contradiction(f"the metadata lists outputs {missing} that the graph does not have (its outputs "
                            f"are {list(outputs)})")
    logits = outputs[LOGITS]
    if not _type_name(logits.type).startswith("float"):
        raise contradiction(f"the graph's {LOGITS!r} output is {_type_name(logits.type)}, not floating-point "
                            "logits")
    out_dims = _dims(logits)
    if out_dims is not None:
        shape = _shape_text(out_dims)
        if not 1 <= len(out_dims) <= 2:
            raise contradiction(f"the graph's {LOGITS!r} output is {shape}; a dgsnet detector gives (N,), "
                                "one logit per image")
        if len(out_dims) == 2 and out_dims[1] not in (None, 1):
            raise contradiction(f"the graph's {LOGITS!r} output is {shape}: {out_dims[1]} values per image, "
                                "where a dgsnet detector gives one logit")
        if out_dims[0] is not None and out_dims[0] != batch:
            raise contradiction(f"the graph's {LOGITS!r} output has {out_dims[0]} rows for input "
                                f"{_shape_text(dims or [None])}: rows and images do not match")
    return batch


def _check_end_to_end(session, info: ModelInfo, path, contradiction) -> None:
    """check_graph for a graph that selects patches itself: raw uint8 image(s) of any size, one logit
    each, the 49 patch indices and the patch grid. Such a graph always takes any batch (None)."""
    (graph_input, *more) = session.get_inputs()
    if more or graph_input.name != info.input_name:
        raise contradiction(f"the metadata names the input {info.input_name!r}, but the graph's inputs are "
                            f"{[i.name for i in session.get_inputs()]}")
    if _type_name(graph_input.type) != "uint8":
        raise contradiction(f"the end-to-end input {graph_input.name!r} is {_type_name(graph_input.type)}, not "
                            "uint8 pixels")
    dims = _dims(graph_input)
    rank = 4 if info.batched_images else 3
    if dims is not None and (len(dims) != rank or dims[-1] not in (None, 3)):
        raise contradiction(f"the metadata says input {graph_input.name!r} is {info.input_layout} RGB, but the "
                            f"graph's is {_shape_text(dims)}")
    outputs = [o.name for o in session.get_outputs()]
    missing = [name for name in (LOGITS, *END_TO_END_OUTPUTS) if name not in outputs]
    if missing:
        raise contradiction(f"the end-to-end graph lacks outputs {missing} (its outputs are {outputs})")
    return None


def logit_rows(out: np.ndarray, batch: int, path) -> np.ndarray:
    """The (batch,) logits of one run's output, (batch,) or (batch, 1); ModelLoadError for anything else."""
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim == 1 and out.shape[0] == batch:
        return out
    if out.ndim == 2 and out.shape[0] == batch:
        what = f"{out.shape[1]} values per image (shape {tuple(out.shape)}), where a dgsnet detector gives one logit"
    else:
        what = f"logits of shape {tuple(out.shape)} for a batch of {batch} images; expected ({batch},)"
    raise ModelLoadError(f"{path}: the graph's {LOGITS!r} output gives {what}; {REEXPORT}")


class OnnxDetector:
    """An exported dgsnet detector in an onnxruntime session, with its metadata and preprocessing.

    provider: 'auto' | 'tensorrt' | 'cuda' | 'cpu' (TensorRT -> CUDA -> CPU, first available).
    threads: onnxruntime intra-op threads (None = onnxruntime's default, all cores).
    max_batch: the largest batch TensorRT's profile covers; trt_fp16: let TensorRT run float16.
    patch_order / patch_seed / decode: the preprocessing choices of dgsnet.image.preprocess.layout_rng
    and dgsnet.image.decode.load_rgb (raster order and dgsnet decoding unless asked otherwise).

    Loading checks the file before any image is read: the metadata against the graph (input name,
    dtype, layout, size; outputs) and one test batch of zeros through the session (one logit per
    image). A graph with a fixed batch size B is fed B images at a time (`batch_limit`), the last
    group padded. Errors are ModelLoadError / MetadataError naming the file.
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
            self.batch_limit = check_graph(cpu, self.info, self.path)
            size = self.info.input_size  # an end-to-end graph takes any size: probed with a tile-sized one
            self.sample_shape = (3, size, size) if self.info.input_layout == "NCHW" else (size, size, 3)
            providers = []
            for p in chain:
                if self.info.end_to_end and p == "TensorrtExecutionProvider":
                    # its profile covers one image shape; an image of any size needs a profile per size
                    self.notes.append("TensorRT skipped for an end-to-end graph (images of any size): "
                                      "build an engine with a shape profile, e.g. for Triton, instead")
                    continue
                opts = provider_options(p, input_name=self.info.input_name, sample_shape=self.sample_shape,
                                        max_batch=max_batch, fp16=trt_fp16, cache_dir=trt_cache_dir)
                if self.batch_limit is not None:  # a fixed batch: no 1..max_batch profile to build
                    opts = {k: v for k, v in opts.items() if not k.startswith("trt_profile_")}
                providers.append((p, opts))
            self.session = cpu if chain == ["CPUExecutionProvider"] else \
                ort.InferenceSession(str(self.path), options, providers=providers)
        except (MetadataError, ModelLoadError):
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors, stated as a bad file
            raise ModelLoadError(f"{self.path}: onnxruntime cannot load it ({type(exc).__name__}: "
                                 f"{_first_line(exc)}); re-export it with `dgsnet export`") from None
        self.provider = self.session.get_providers()[0]
        if self.provider != chain[0]:
            self.notes.append(f"{chain[0]} could not start; running on {self.provider}")
        if self.batch_limit is not None:
            self.notes.append(f"{self.path.name} takes batches of exactly {self.batch_limit} images: each "
                              f"batch is fed in groups of {self.batch_limit}, a short group padded")
        self._probe(self.batch_limit or max(1, min(PROBE_BATCH, max_batch)))
        self.preprocess = preprocess_for(self.info, patch_order=patch_order, patch_seed=patch_seed,
                                    decode=decode)

    def _probe(self, batch: int) -> None:
        """One batch of zeros at load: a graph that fails, or gives other than one logit per image,
        is refused before any image is decoded (not an IndexError or a shape error midway)."""
        zeros = np.zeros((batch, *self.sample_shape), np.uint8 if self.info.input_dtype == "uint8" else np.float32)
        try:
            if self.info.end_to_end:  # flat images: every patch ties, still 49 chosen
                out = self._run_end_to_end(zeros)[0]
            else:
                (out,) = self.session.run([LOGITS], {self.info.input_name: zeros})
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors, stated as a bad file
            raise ModelLoadError(f"{self.path}: onnxruntime fails on a test batch of {batch} "
                                 f"{_shape_text(zeros.shape)} ({type(exc).__name__}: {_first_line(exc)}); "
                                 f"{REEXPORT}") from None
        logit_rows(np.asarray(out), batch, self.path)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([LOGITS], {self.info.input_name: batch})
        return logit_rows(np.asarray(out), len(batch), self.path).astype(np.float64)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(B, ...) graph inputs -> (B,) float64 logits; a fixed-batch graph gets them in groups of
        its size, the last group padded with copies of its last image (their scores dropped). An
        end-to-end graph takes raw images: (B, H, W, 3), or an object array of images of any sizes
        (dgsnet.scoring.stack_samples); the one-image graph runs them one by one."""
        if self.info.end_to_end:  # raw images: stacked when of one size, else an object array of them
            if batch.dtype != object and self.info.batched_images:
                return self._run_end_to_end(np.ascontiguousarray(batch, dtype=np.uint8))[0]
            return np.concatenate([self._run_end_to_end(np.ascontiguousarray(image, dtype=np.uint8))[0]
                                   for image in batch]) if len(batch) else np.zeros(0)
        dtype = np.uint8 if self.info.input_dtype == "uint8" else np.float32
        batch = np.ascontiguousarray(batch, dtype=dtype)
        size = self.batch_limit
        if size is None or len(batch) == size:
            return self._run(batch)
        parts = []
        for start in range(0, len(batch), size):
            group = batch[start:start + size]
            real = len(group)
            if real < size:
                group = np.concatenate([group, np.repeat(group[-1:], size - real, axis=0)])
            parts.append(self._run(group)[:real])
        return np.concatenate(parts) if parts else np.zeros(0)

    def score_images(self, images: list, names: list | None = None) -> list[dict]:
        """Decoded HxWx3 uint8 images (dgsnet.image.decode.load_rgb) -> one dict per image, in order:
        {"logit": float, "patches": dgsnet.image.preprocess.PatchSelection, or None where the caller
        selects no patches} or {"error": text} for an image the preprocessing refuses; the rest of the
        batch is scored. The public way to score pixels (`dgsnet serve` batches requests through it).
        `names` (file names) seed a shuffled patch layout (patch_order="shuffle")."""
        from dgsnet.image.preprocess import gather_patches, patch_selection, prepare_image, tile_patches

        if self.info.end_to_end:  # the graph selects: its own indices, one image at a time (any sizes)
            return [self._score_end_to_end(image) for image in images]
        names = list(names) if names is not None else [None] * len(images)
        rows: list = []
        for image, name in zip(images, names):
            try:
                if self.preprocess.patch_selection and self.preprocess.patch_order == "raster":
                    # the tile select_patches makes, built from the indices it returns (one selection)
                    chosen = patch_selection(image)
                    tile = tile_patches(gather_patches(prepare_image(image), np.array(chosen.kept())))
                    rows.append((self.preprocess.normalize(tile), chosen))
                else:
                    sample = self.preprocess(image, path=name)
                    rows.append((sample, patch_selection(image) if self.preprocess.patch_selection else None))
            except ValueError as exc:
                rows.append(str(exc))
        good = [row for row in rows if not isinstance(row, str)]
        logits = iter(self.logits(np.stack([s for s, _ in good])).tolist() if good else [])
        return [{"error": row} if isinstance(row, str) else {"logit": next(logits), "patches": row[1]}
                for row in rows]

    def _score_end_to_end(self, image) -> dict:
        """score_images' row for one image through an end-to-end graph: the logit and the graph's own
        patch selection (patch_indices: 24 low then 25 high; patch_grid: rows, cols)."""
        from dgsnet.image.preprocess import N_LOW, PATCH, PatchSelection

        try:
            image = self.preprocess(image)
        except ValueError as exc:
            return {"error": str(exc)}
        logits, indices, grid = self._run_end_to_end(image)
        rows, cols = (int(v) for v in grid.reshape(-1)[:2])  # (2,), or (1, 2) from the batched graph
        low, high = indices[0, :N_LOW].tolist(), indices[0, N_LOW:].tolist()
        padded = rows * PATCH > image.shape[0] or cols * PATCH > image.shape[1]
        return {"logit": float(logits[0]),
                "patches": PatchSelection(low=tuple(low), high=tuple(high), rows=rows, cols=cols, padded=padded)}

    def _run_end_to_end(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An end-to-end graph's (logits, patch_indices (n, 49), patch_grid) for one (H, W, 3) image or
        (N, H, W, 3) images of one size (the batched graph; the one-image graph takes them in turn)."""
        single = images.ndim == 3
        if self.info.batched_images and single:
            images = images[None]
        if not self.info.batched_images and not single:
            parts = [self._run_end_to_end(image) for image in images]
            return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                    np.stack([p[2] for p in parts]))
        logits, indices, grid = self.session.run([LOGITS, *END_TO_END_OUTPUTS], {self.info.input_name: images})
        count = 1 if single else len(images)
        return (logit_rows(np.asarray(logits), count, self.path).astype(np.float64),
                np.asarray(indices).reshape(count, -1), np.asarray(grid))

    def predict_paths(self, inputs: Iterable, *, batch_size: int = 16, threshold: float | None = None,
                      workers: int | None = None, progress=None, pixel_budget=None) -> Iterator[dict]:
        """Records for image files and folders (see dgsnet.scoring: iter_predictions, collect_inputs)."""
        found = collect_inputs(inputs)
        return iter_predictions(found.paths, self.logits, self.preprocess, labels=self.info.labels,
                                threshold=self.info.threshold if threshold is None else threshold,
                                batch_size=batch_size, workers=workers, progress=progress,
                                pixel_budget=pixel_budget)
