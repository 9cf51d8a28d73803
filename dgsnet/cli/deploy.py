"""`dgsnet export` and `dgsnet predict`: the deployment subcommands.

dgsnet.cli registers them with `add_commands(subparsers)`. Expected failures
raise ValueError / RuntimeError / FileNotFoundError, which dgsnet.cli turns
into one line on stderr (exit status 2).

  dgsnet export --ckpt RUN_DIR --out detector.onnx [--opset 17] [--fp16]
                [--with-preprocessing] [--tensorrt] [--end-to-end [--batched]]
                [--triton-repo DIR [--triton-max-batch N] [--triton-precision fp32|fp16]]
  dgsnet predict --ckpt RUN_DIR images/ [more files or folders] [--out preds.jsonl|preds.csv]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from dgsnet.cli.common import add_checkpoint_arguments
from dgsnet_export.runtime.cli import positive_int as _positive  # the check --batch-size uses


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability strictly between 0 and 1")
    return value


def _check_run_dir(run_dir: str) -> None:
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"--ckpt {run_dir}: no such run directory; give the --out folder of "
                                "`dgsnet train` (or `dgsnet train-teacher`)")


def _run_dir_input(run_dir: str) -> tuple[str, str]:
    return run_dir, "the run directory (--ckpt)"


# ---------------------------------------------------------------- export

def _export_outputs(args, out: Path) -> list[tuple[Path, str]]:
    """Every file `dgsnet export` writes, named as in the error messages."""
    files = [(out, "--out"), (out.with_suffix(".export.json"), "the export record"),
             (out.with_name(out.name + ".data"), "the external weights file")]  # models over 2 GB
    if args.tensorrt:
        files += [(out.with_suffix(".trtexec.sh"), "the trtexec script"),
                  (out.with_suffix(".engine"), "the TensorRT engine")]
    return files


def _check_export_outputs(args, out: Path) -> None:
    from dgsnet.outputs import check_output

    for path, what in _export_outputs(args, out):
        check_output(path, [_run_dir_input(args.ckpt)], what)


def _check_out_folder(out: Path) -> None:
    """The folder --out goes in is a folder this process can create files in (or, when it does not exist
    yet, its nearest existing parent is): refused before the export, not after it. Tried, not guessed
    from permission bits, which root ignores and read-only mounts do not show."""
    import tempfile

    folder = Path(os.path.abspath(out)).parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent  # export creates missing folders
    if not folder.is_dir():
        raise ValueError(f"--out {out}: {folder} is {'a file' if folder.exists() else 'a broken link'}, "
                         "not a folder; choose another --out")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".dgsnet-export-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot write in {folder} ({exc.strerror or exc}); choose a writable "
                         "folder for --out") from None


def _check_end_to_end_flags(args, end_to_end: bool) -> None:
    if end_to_end and args.with_preprocessing:
        raise ValueError("--end-to-end (or --triton-repo) and --with-preprocessing: the end-to-end graph "
                         "already normalises and selects patches itself; give one of them")
    if end_to_end and args.tensorrt:
        raise ValueError("--tensorrt writes a trtexec profile for one input size, but an --end-to-end graph "
                         "takes images of any size: use --triton-repo (TensorRT through ONNX Runtime) or "
                         "export without --end-to-end for --tensorrt")
    if args.batched and not end_to_end:
        raise ValueError("--batched applies to --end-to-end / --triton-repo")
    if (args.triton_name or args.triton_max_batch != 16 or args.triton_precision != "fp32") and \
            args.triton_repo is None:
        raise ValueError("--triton-name, --triton-max-batch and --triton-precision apply to --triton-repo")
    if args.triton_repo is not None and args.batched and args.triton_max_batch == 0:
        raise ValueError("--batched and --triton-max-batch 0 contradict: 0 asks for the one-image Triton model "
                         "(max_batch_size 0); give one of them")


def _batched(args) -> bool:
    """--batched, or --triton-repo (the batched graph, for Triton's dynamic batching) unless --triton-max-batch 0."""
    return args.batched or (args.triton_repo is not None and args.triton_max_batch > 0)


def cmd_export(args) -> int:
    from dgsnet.fileio import atomic_write
    from dgsnet_export.exporter import (build_tensorrt_engine, check_opset, check_profile, export_checkpoint,
                                        tensorrt_available, tensorrt_command)

    _check_run_dir(args.ckpt)
    out = Path(args.out)
    # Everything that can be refused is, before the checkpoint is loaded and the slow export starts.
    _check_export_outputs(args, out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out {out}: name the file *.onnx")
    _check_out_folder(out)
    check_opset(args.opset, args.exporter)
    check_profile(args.min_batch, args.opt_batch, args.max_batch)
    end_to_end = args.end_to_end or args.triton_repo is not None  # a Triton model takes raw images
    _check_end_to_end_flags(args, end_to_end)
    common = dict(head=args.head, threshold=args.threshold, pretrained=args.pretrained, opset=args.opset,
                  fp16=args.fp16, exporter=args.exporter, atol=args.atol)
    if end_to_end:
        from dgsnet_export.exporter.end_to_end import export_end_to_end_checkpoint

        report = export_end_to_end_checkpoint(args.ckpt, out, batched=_batched(args), **common)
    else:
        report = export_checkpoint(args.ckpt, out, with_preprocessing=args.with_preprocessing, **common)
    record = {**report.to_dict(), "checkpoint": args.ckpt}
    for note in report.warnings:
        print(f"dgsnet export: note: {note}", file=sys.stderr)
    print(report.summary())
    if args.tensorrt:
        engine = out.with_suffix(".engine")
        command = tensorrt_command(out, args.min_batch, args.opt_batch, args.max_batch, fp16=True,
                                   engine_path=engine)
        script = out.with_suffix(".trtexec.sh")
        atomic_write(str(script), "#!/bin/sh\n# TensorRT engine for " + out.name + " (batch profile "
                     f"{args.min_batch}/{args.opt_batch}/{args.max_batch}, fp16)\n" + command + "\n",
                     executable=True)
        record["tensorrt"] = {"command": command, "script": str(script)}
        print(f"TensorRT command (also in {script}):\n  {command}")
        if tensorrt_available():
            start = time.perf_counter()
            build_tensorrt_engine(out, engine, args.min_batch, args.opt_batch, args.max_batch, fp16=True)
            record["tensorrt"]["engine"] = str(engine)
            print(f"TensorRT engine: {engine} ({time.perf_counter() - start:.0f} s)")
        else:
            record["tensorrt"]["engine"] = None
            print("TensorRT is not importable here: the engine was not built; run the command above on a "
                  "machine with TensorRT (or let `dgsnet-predict --provider tensorrt` build it)", file=sys.stderr)
    if args.triton_repo is not None:
        from dgsnet_export.exporter.triton_repo import write_triton_repo

        folder = write_triton_repo(out, args.triton_repo, name=args.triton_name,
                                   max_batch_size=max(1, args.triton_max_batch), precision=args.triton_precision)
        record["triton_repo"] = str(folder)
        print(f"Triton model repository: {folder} (config.pbtxt, 1/model.onnx)")
    sidecar = out.with_suffix(".export.json")
    atomic_write(str(sidecar), json.dumps(record, indent=2, default=str))
    print(f"export record: {sidecar}")
    return 0


def add_export_parser(sub) -> None:
    from dgsnet_export.exporter import DEFAULT_OPSET

    p = sub.add_parser("export", help="export a trained detector to ONNX (verified against torch, TensorRT-ready)",
                       description="Export the student encoder (LoRA merged) + head of a run directory to ONNX: "
                                   "logits and probabilities, dynamic batch axis, dgsnet metadata. Every export "
                                   "is checked in onnxruntime against torch at two batch sizes.")
    p.add_argument("--ckpt", required=True, help="finished run directory (model.safetensors + model.json)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET}); one outside what the installed torch and onnx "
                        "can write is refused before the export, naming the range")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute (float32 inputs/outputs)")
    p.add_argument("--with-preprocessing", action="store_true",
                   help="normalisation inside the graph: it takes uint8 224x224 tiles (patch selection stays "
                        "with the caller, see the metadata)")
    p.add_argument("--end-to-end", action="store_true",
                   help="one self-contained graph: a raw RGB uint8 image (H, W, 3) of any size in, patch "
                        "selection and normalisation inside; outputs logits, probabilities, patch_indices, "
                        "patch_grid. Verified against the numpy preprocessing on an image corpus")
    p.add_argument("--batched", action="store_true",
                   help="with --end-to-end: take (N, H, W, 3) images of one shared size instead of one image "
                        "(the default of --triton-repo)")
    p.add_argument("--triton-repo", metavar="DIR", default=None,
                   help="also write an NVIDIA Triton model repository DIR/NAME/{config.pbtxt,1/model.onnx} "
                        "for the end-to-end graph (implies --end-to-end and, unless --triton-max-batch 0, "
                        "--batched: Triton's dynamic batching groups requests of one image size)")
    p.add_argument("--triton-name", default=None, help="the Triton model name (default: --out's stem)")
    p.add_argument("--triton-max-batch", type=_non_negative, default=16, metavar="N",
                   help="max_batch_size of the Triton model, with dynamic batching (default 16); 0 exports the "
                        "one-image graph instead (input (H, W, 3), max_batch_size 0, no batching)")
    p.add_argument("--triton-precision", choices=["fp32", "fp16"], default="fp32",
                   help="precision of Triton's TensorRT accelerator (default fp32). fp16 is faster but runs "
                        "the in-graph patch selection (DFT, entropy, TopK) in half precision too, which may "
                        "change which patches are selected and so the scores; verify before using it")
    p.add_argument("--tensorrt", action="store_true",
                   help="also write the trtexec command (min/opt/max batch profile, fp16) and build the "
                        "engine when TensorRT is importable")
    p.add_argument("--min-batch", type=_positive, default=1, help="TensorRT profile (default 1)")
    p.add_argument("--opt-batch", type=_positive, default=16, help="TensorRT profile (default 16)")
    p.add_argument("--max-batch", type=_positive, default=64, help="TensorRT profile (default 64)")
    add_checkpoint_arguments(p)
    p.add_argument("--threshold", type=_probability, default=0.5,
                   help="probability from which an image is labelled generated (stored in the metadata)")
    p.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                   help="torch.onnx exporter (auto: dynamo, then torchscript)")
    p.add_argument("--atol", type=float, default=None,
                   help="verification tolerance on logits (default 1e-4 float32, 2e-2 float16)")
    p.set_defaults(func=cmd_export)


# ---------------------------------------------------------------- predict

def cmd_predict(args) -> int:
    from dgsnet_export.runtime.cli import collect_and_report
    from dgsnet_export.runtime.records import score_and_report

    from dgsnet.models import LABELS
    from dgsnet.predict import TorchPredictor

    from dgsnet_export.runtime.records import resolve_format

    _check_run_dir(args.ckpt)
    fmt = resolve_format(args.format, args.out)
    if args.out:  # before the checkpoint is loaded
        from dgsnet.outputs import check_output

        check_output(args.out, [_run_dir_input(args.ckpt), *args.inputs], "--out")
    found = collect_and_report(args.inputs, "dgsnet predict")  # prints what the walk skipped
    if not found.paths:
        raise FileNotFoundError(f"no image files in {' '.join(args.inputs)}")
    from dgsnet_export.runtime.cli import layout_options

    predictor = TorchPredictor(args.ckpt, head=args.head, device=args.device, pretrained=args.pretrained,
                               **layout_options(args))
    engine = f"torch {predictor.device} ({predictor.meta['backbone']['model']}, {predictor.head} head)"
    tally = score_and_report(found, predictor.logits, predictor.preprocess, labels=LABELS,
                             threshold=args.threshold, batch_size=args.batch_size, workers=args.workers,
                             out=args.out, progress=not args.no_progress, prog="dgsnet predict",
                             engine=engine, pixel_budget=args.pixel_budget, fmt=fmt)
    return 1 if tally.errors else 0


def add_predict_parser(sub) -> None:
    from dgsnet_export.runtime.cli import (add_batch_size_argument, add_format_argument, add_layout_arguments,
                                           add_memory_arguments, add_progress_argument)

    p = sub.add_parser("predict", help="score images with a checkpoint through torch (JSON lines or CSV)",
                       description="Score image files and folders with a run directory's detector through "
                                   "torch. Same records as `dgsnet-predict detector.onnx ...`: "
                                   '{"path", "logit", "probability", "label"}, or {"path", "error"} for a file '
                                   "that cannot be read (the others are still scored; exit status 1).")
    p.add_argument("--ckpt", required=True, help="finished run directory (model.safetensors + model.json)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", help="write the records here instead of stdout")
    add_format_argument(p)
    add_batch_size_argument(p, 16, "images per forward pass")
    p.add_argument("--threshold", type=_probability, default=0.5, help="an image whose probability is above this is labelled generated (default 0.5)")
    add_checkpoint_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, help="threads decoding and preprocessing images (default: up to 4)")
    add_progress_argument(p)
    add_layout_arguments(p)
    add_memory_arguments(p)
    p.set_defaults(func=cmd_predict)


def add_commands(subparsers) -> None:
    """Registers `export` and `predict` on dgsnet's argparse subparsers (each sets args.func)."""
    add_export_parser(subparsers)
    add_predict_parser(subparsers)
