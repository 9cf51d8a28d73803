"""The Python API: load a detector, score images with it.

    det = dgsnet.load("runs/dgs")            # a finished run directory (torch), or "detector.onnx"
    det.predict("photo.jpg")                 # [{"path", "logit", "probability", "label"}]
    det.predict_folder("images/")            # every image under it; unreadable ones as {"path", "error"}

A thin layer over the two engines the commands use: dgsnet.predict.TorchPredictor (`dgsnet
predict`) and dgsnet_export.runtime.OnnxDetector (`dgsnet-predict`). Files go through their
decoding, preprocessing and the shared scoring loop (dgsnet.scoring) unchanged; in-memory images
(PIL, numpy) get the same pixel conventions and the same preprocessing object. Importing this module
needs no torch; loading an .onnx file never imports it.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dgsnet.scoring import collect_inputs, iter_predictions, non_finite_message, sigmoid

__all__ = ["Detector", "DetectorLoadError", "ImageInputError", "load"]

ENGINES = ("torch", "onnxruntime")
EXPECTED = ("a finished run directory (model.safetensors + model.json, as `dgsnet train` leaves it) "
            "or an exported detector file ending in .onnx (`dgsnet export`)")


class DetectorLoadError(ValueError):
    """`dgsnet.load` got a path that is neither a finished run directory nor an .onnx file, or
    options that do not apply to it."""


class ImageInputError(ValueError):
    """An input of `Detector.predict` that is not an image it can score; names the input's index."""


def _check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise ValueError(f"threshold={threshold!r}: give a probability strictly between 0 and 1")
    return value


class Detector:
    """A loaded detector: `predict` scores images, `predict_folder` every image in a folder.

    Records are dicts, one per image, in input order: "logit" (float), "probability" (of
    `labels[1]`, the generated class: sigmoid of the logit), "label" (`labels[1]` when the
    probability is >= `threshold`, else `labels[0]`), and "path" for images given as paths.
    Build one with `dgsnet.load`.
    """

    def __init__(self, scorer, *, engine: str, labels, threshold: float, source: str):
        # scorer: a TorchPredictor or an OnnxDetector; both have .logits and .preprocess
        self._scorer = scorer
        self._engine = engine
        self._labels = tuple(labels)
        self._threshold = _check_threshold(threshold)
        self.source = source

    @property
    def engine(self) -> str:
        """"torch" (a run directory) or "onnxruntime" (an .onnx file)."""
        return self._engine

    @property
    def labels(self) -> tuple[str, str]:
        """(label of a real image, label of a generated one)."""
        return self._labels

    @property
    def threshold(self) -> float:
        """The probability from which an image is labelled `labels[1]`."""
        return self._threshold

    def __repr__(self) -> str:
        return f"Detector({self.source!r}, engine={self._engine!r}, threshold={self._threshold})"

    def _loop(self, paths, batch_size: int, workers, pixel_budget):
        return iter_predictions(paths, self._scorer.logits, self._scorer.preprocess, labels=self._labels,
                                threshold=self._threshold, batch_size=batch_size, workers=workers,
                                pixel_budget=pixel_budget)

    def predict(self, images, *, batch_size: int = 16, workers: int | None = None,
                pixel_budget=None) -> list[dict]:
        """Scores one image or a list of them; returns a list of records (see the class), one per input.

        An image is a file path (str or os.PathLike), a PIL image, or a numpy uint8 array (HxWx3 RGB;
        HxW greyscale and HxWx4 RGBA are read as a file of that mode would be: grey replicated, alpha
        composited on white). Files are decoded exactly as `dgsnet predict` decodes them, and a PIL
        image or array of the same pixels scores the same. A list may mix the three kinds.

        Unlike `predict_folder` and the command line, which report a bad file as a record, this
        raises: an input that cannot be scored (unreadable file, folder, wrong array) raises
        ImageInputError naming its index and path, since the caller named each input and a list of
        records with holes would be easy to misread. `workers` / `pixel_budget`: as in
        dgsnet.scoring.iter_predictions, for the files.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        records: list[dict | None] = [None] * len(items)
        files, in_memory = [], []  # (index, path), (index, PIL image or array)
        for index, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                if os.path.isdir(item):
                    raise ImageInputError(f"input {index} ({os.fspath(item)}): a folder; score folders with "
                                          "predict_folder()")
                files.append((index, item))
            elif isinstance(item, (np.ndarray, Image.Image)):
                in_memory.append((index, item))
            else:
                raise ImageInputError(f"input {index}: a {type(item).__name__}; give an image path, a PIL image "
                                      "or a numpy uint8 array")
        if files:
            # closing(): raising midway shuts the loop's decoding threads down now, not at garbage collection
            with contextlib.closing(self._loop([path for _, path in files], batch_size, workers,
                                               pixel_budget)) as scored:
                for (index, _), record in zip(files, scored):
                    if "error" in record:
                        raise ImageInputError(f"input {index}: {record['error']}")
                    records[index] = record
        for start in range(0, len(in_memory), batch_size):  # prepared a batch at a time: bounded memory
            chunk = in_memory[start:start + batch_size]
            batch = np.stack([self._prepared(index, image) for index, image in chunk])
            logits = np.asarray(self._scorer.logits(batch), dtype=np.float64)
            for (index, _), logit in zip(chunk, logits.reshape(-1).tolist()):
                records[index] = self._record(index, logit)
        return records

    def predict_folder(self, folder, *, recursive: bool = True, batch_size: int = 16,
                       workers: int | None = None, pixel_budget=None) -> list[dict]:
        """Records for every image file under `folder` (subfolders too unless recursive=False), in the
        order `dgsnet predict` lists them. A file that cannot be scored comes back as
        {"path", "error"} and the rest are scored, as in the command line's JSON lines."""
        if not os.path.isdir(folder):
            raise ImageInputError(f"{os.fspath(folder)}: not a folder; score single images with predict()")
        found = collect_inputs([folder], recursive=recursive)
        return list(self._loop(found.paths, batch_size, workers, pixel_budget))

    def _prepared(self, index: int, image: Any) -> np.ndarray:
        """The model input of an in-memory image: the file pixel rules, then the engine's own Preprocess."""
        try:
            return self._scorer.preprocess(_pixels(image, self._scorer.preprocess.decode))
        except ValueError as exc:
            raise ImageInputError(f"input {index}: {exc}") from None

    def _record(self, index: int, logit: float) -> dict:
        if not np.isfinite(logit):
            raise ImageInputError(non_finite_message(f"input {index}", logit))
        probability = sigmoid(logit)
        label = self._labels[1] if probability >= self._threshold else self._labels[0]
        return {"logit": logit, "probability": probability, "label": label}


# numpy arrays are given PIL's mode for their shape (ndim, channels), then converted as a decoded file is
_ARRAY_MODES = {(2, None): "L", (3, 3): "RGB", (3, 4): "RGBA"}


def _pixels(image: Any, decode: str) -> np.ndarray:
    """HxWx3 uint8 RGB of a PIL image or a numpy array, by the rules dgsnet.image.decode applies to
    files (`decode`: "dgsnet", or "pil", the published loader's plain convert("RGB"))."""
    from dgsnet.image.decode import pil_to_rgb

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"a numpy image must be uint8 (0-255), got dtype {image.dtype}; "
                             "convert it with np.clip(x, 0, 255).astype(np.uint8)")
        mode = _ARRAY_MODES.get((image.ndim, image.shape[2] if image.ndim == 3 else None))
        if mode is None or 0 in image.shape:
            raise ValueError(f"a numpy image must be HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA), got shape "
                             f"{image.shape}")
        if mode == "RGB":
            return np.ascontiguousarray(image)  # what either decoder gives an RGB file
        image = Image.fromarray(np.ascontiguousarray(image), mode)
    if decode == "pil":
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8).copy()
    return pil_to_rgb(image)


def _onnx_provider(device: str, provider: str) -> str:
    """device= given for an .onnx file picks the matching provider, when provider= is left at auto."""
    if provider != "auto" or device == "auto":
        return provider
    kind = str(device).split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise DetectorLoadError(f"device={device!r}: an .onnx detector runs on 'cpu' or 'cuda' (or pick "
                                "provider='tensorrt' / 'cuda' / 'cpu')")
    return kind


def load(path, *, head: str = "auto", device: str = "auto", provider: str = "auto",
         threshold: float | None = None, pretrained: str | None = None) -> Detector:
    """A Detector from a finished run directory (scored through torch) or an exported .onnx file
    (through onnxruntime; torch is not imported).

    head: "auto" (student of a stage-2 run, teacher probe of a stage-1 run), "student" or "teacher";
    run directories only. device: torch device for a run directory ("auto": a GPU when there is
    one); for an .onnx file "cpu" / "cuda" pick the provider. provider: onnxruntime provider of an
    .onnx file ("auto": TensorRT, CUDA, CPU, the first that works). threshold: the label threshold
    (None: the .onnx file's own, 0.5 for a run directory). pretrained: confirms a backbone weights
    file a run names outside its directory (as --pretrained on `dgsnet predict`).

    Raises DetectorLoadError for a path that is neither, and the engines' own errors (naming the
    file) for a damaged checkpoint or model.
    """
    source = os.fspath(path)
    where = Path(source)
    if threshold is not None:
        threshold = _check_threshold(threshold)
    if where.suffix.lower() == ".onnx" and not where.is_dir():
        if head != "auto" or pretrained is not None:
            raise DetectorLoadError(f"{source}: head= and pretrained= apply to run directories; an exported "
                                    "detector has its head and weights built in")
        from dgsnet_export.runtime.detector import OnnxDetector

        onnx = OnnxDetector(source, provider=_onnx_provider(device, provider))
        return Detector(onnx, engine="onnxruntime", labels=onnx.info.labels,
                        threshold=onnx.info.threshold if threshold is None else threshold, source=source)
    if not where.is_dir():
        what = "does not exist" if not where.exists() else "is a file without the .onnx suffix"
        raise DetectorLoadError(f"{source}: {what}; dgsnet.load takes {EXPECTED}")
    if provider != "auto":
        raise DetectorLoadError(f"{source}: provider={provider!r} picks onnxruntime's provider for .onnx "
                                "files; a run directory runs on torch: use device=")
    from dgsnet.models import LABELS
    from dgsnet.models.checkpoint import META_FILE, MODEL_FILE, RESUME_DIR
    from dgsnet.predict import TorchPredictor

    missing = [name for name in (META_FILE, MODEL_FILE) if not (where / name).is_file()]
    if missing:
        unfinished = " (its run has not finished: continue it with --resume)" if (where / RESUME_DIR).is_dir() \
            else ""
        raise DetectorLoadError(f"{source}: a folder without {' and '.join(missing)}{unfinished}; "
                                f"dgsnet.load takes {EXPECTED}")
    torch_predictor = TorchPredictor(source, head, device, pretrained=pretrained)
    return Detector(torch_predictor, engine="torch", labels=LABELS,
                    threshold=0.5 if threshold is None else threshold, source=source)
