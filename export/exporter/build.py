"""Running the exporter: the opsets this install can write, torch.onnx.export, and `export_detector`,
which keeps a file only once it is checked (TensorRT ops, graph I/O, onnxruntime against torch).

Patch selection (sorting 32x32 patches by FFT entropy) stays outside the
graph: a data-dependent sort and gather over FFTs is no TensorRT-friendly
graph. The runtime (dgsnet_export.runtime) does it in numpy, as the metadata says.
"""
from __future__ import annotations

import contextlib
import io
import json
import numbers
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from dgsnet.fileio import new_file_mode

from .graph import _export_modules, _torch, export_friendly
from .spec import (DEFAULT_OPSET, FLOAT16_ATOL, FLOAT32_ATOL, OUTPUT_NAMES, TRACE_BATCH, ExportError, ExportReport,
                   ExportVerificationError, build_metadata, checkpoint_metadata, normalization_spec)
from .tensorrt import tensorrt_issues
from .verify import _baked_batch_reshapes, _check_io, _random_inputs, verify_onnx

# Ops every ViT detector graph needs whichever exporter writes it: Erf (GELU) and Expand (the class
# token broadcast to the batch). No opset older than both can hold the graph (torch's own floor is lower).
GRAPH_OPS = ("Erf", "Expand")


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


def export_checkpoint(run_dir, out_path, *, head: str = "auto", threshold: float = 0.5,
                      pretrained: str | None = None, **export_kwargs) -> ExportReport:
    """Loads a finished run directory (dgsnet.models.checkpoint) and exports its detector:
    the student encoder with LoRA merged + student head (or the teacher probe of a stage-1 run).
    `pretrained` confirms a backbone weights file the run names outside its directory."""
    from dgsnet.predict import load_detector

    detector, meta, head = load_detector(str(run_dir), head, pretrained=pretrained)
    return export_detector(detector, out_path, metadata=checkpoint_metadata(meta, run_dir, head, threshold),
                           **export_kwargs)
