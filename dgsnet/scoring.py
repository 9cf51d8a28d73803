"""The engine-independent scoring loop: which files to score, then load, preprocess, batch, score, label.

Torch-free (numpy + dgsnet.image): `dgsnet predict` (dgsnet.predict, torch) and `dgsnet-predict`
(the exported runtime, onnxruntime) run this same loop with their own `logits_fn`, so both give
the same records for the same files.
"""
from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from dgsnet.image.decode import describe_skipped, is_image_name, walk_tree

log = logging.getLogger("dgsnet.scoring")


@dataclass
class InputList:
    paths: list[Path] = field(default_factory=list)  # in the order they will be scored
    skipped: list[Path] = field(default_factory=list)  # files inside folders that are not images by name
    not_walked: list = field(default_factory=list)  # dgsnet.image.decode.Skipped: loops, links leading out, unreadable


def collect_inputs(inputs, recursive: bool = True, follow_outside: bool = False) -> InputList:
    """Expands files and folders into the files to score.

    A file named explicitly is always scored (if it is not an image the runtime
    reports an error for it); inside folders, only files with an image suffix
    are taken (sorted, hidden files ignored) and the rest are counted as skipped.
    A path that does not exist is kept, so it is reported like any bad input.

    Folders are walked by `dgsnet.image.decode.walk_tree`: a folder named here may be a
    symlink (it is resolved and walked); below it, links are followed only when they
    lead inside it (`follow_outside=True`: anywhere), loops never. Every file is scored
    once, even when reached by several paths or named again (compared by real path).
    What the walks left out is in `not_walked` and named in one log warning.
    """
    found = InputList()
    seen: set[str] = set()

    def add(path: Path, real: str) -> None:
        if real not in seen:
            seen.add(real)
            found.paths.append(path)

    for item in inputs:
        root = Path(item)
        if not root.is_dir():
            add(root, os.path.realpath(root))
            continue
        walk = walk_tree(root, follow_outside=follow_outside, recursive=recursive, warn=False)
        found.not_walked += walk.skipped
        for name, real in zip(walk.files, walk.real_paths):
            path = Path(name)
            if is_image_name(path):
                add(path, real)
            else:
                found.skipped.append(path)
    if found.not_walked:
        log.warning("%s", describe_skipped(found.not_walked))
    return found


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


def _load_and_preprocess(path: Path, preprocess: Callable[[np.ndarray], np.ndarray], budget=None):
    """(sample, None) or (None, error message): a bad input never raises out of the batch.

    `budget` (a dgsnet.image.decode.PixelBudget, or None): the image's pixels are reserved from before
    decoding until preprocessing ends."""
    from dgsnet.image.decode import ImageLoadError, decoded

    try:
        with decoded(path, decode=getattr(preprocess, "decode", "dgsnet"), budget=budget) as rgb:
            return preprocess(rgb, path=path), None
    except ImageLoadError as exc:
        return None, str(exc)
    except ValueError as exc:  # an image the preprocessing cannot take (e.g. odd shape)
        return None, f"{path}: {exc}"


def stack_samples(samples: list) -> np.ndarray:
    """One batch for logits_fn: the samples stacked, or, where their shapes differ (raw images for an
    end-to-end ONNX detector, which selects patches itself), a 1-D object array holding each one."""
    if len({np.shape(s) for s in samples}) <= 1:
        return np.stack(samples)
    ragged = np.empty(len(samples), dtype=object)  # filled one by one: numpy would try to broadcast them
    for i, sample in enumerate(samples):
        ragged[i] = sample
    return ragged


def iter_predictions(paths: Iterable, logits_fn: Callable[[np.ndarray], np.ndarray],
                     preprocess: Callable[[np.ndarray], np.ndarray], *, labels=("real", "generated"),
                     threshold: float = 0.5, batch_size: int = 16, workers: int | None = None,
                     progress=None, pixel_budget=None) -> Iterator[dict]:
    """One record per path, in order: {"path", "logit", "probability", "label"} or {"path", "error"}.

    Files are decoded and preprocessed on `workers` threads (PIL and numpy's FFT/BLAS
    release the GIL), then scored `batch_size` at a time by `logits_fn`
    ((B, ...) array -> (B,) logits). Unreadable files, and images the detector
    scores NaN or +/-inf, give an error record and the batch goes on.
    `progress`: an object with update(n), e.g. a tqdm bar. `pixel_budget`: megapixels the threads
    may hold decoded at once ("off": no limit; None: DGSNET_PIXEL_BUDGET, else a share of this
    machine's memory; see dgsnet.image.decode.PixelBudget): an image waits until its pixels fit, one
    larger than the whole budget is an error record.
    """
    from dgsnet.image.decode import PixelBudget

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    paths = [Path(p) for p in paths]
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    budget = PixelBudget.for_pool(pixel_budget, workers)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            if pool is not None:
                loaded = list(pool.map(lambda p: _load_and_preprocess(p, preprocess, budget), chunk))
            else:
                loaded = [_load_and_preprocess(p, preprocess, budget) for p in chunk]
            good = [i for i, (sample, _) in enumerate(loaded) if sample is not None]
            logits = np.zeros(0)
            if good:
                logits = np.asarray(logits_fn(stack_samples([loaded[i][0] for i in good])), dtype=np.float64)
                logits = logits.reshape(-1)
                if logits.shape[0] != len(good):
                    raise RuntimeError(f"the detector returned {logits.shape[0]} logits for {len(good)} images")
            scored = dict(zip(good, logits.tolist()))
            for i, path in enumerate(chunk):
                if i in scored and not math.isfinite(scored[i]):
                    # a label from NaN would be silent garbage ("real": NaN > t is False)
                    yield {"path": str(path), "error": non_finite_message(path, scored[i])}
                elif i in scored:
                    prob = sigmoid(scored[i])
                    yield {"path": str(path), "logit": scored[i], "probability": prob,
                           # strictly above, as the accuracies of dgsnet eval (dgsnet.metrics) count it
                           "label": labels[1] if prob > threshold else labels[0]}
                else:
                    yield {"path": str(path), "error": loaded[i][1]}
            if progress is not None:
                progress.update(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown()
