"""`dgsnet eval`: cross-generator accuracy, AP, AUC and EER of a run directory or an exported .onnx
detector (the latter through onnxruntime alone: torch is never imported on that path)."""
from __future__ import annotations

import argparse
import os
import sys

from dgsnet.cli.common import add_checkpoint_arguments


def is_onnx(path: str) -> bool:
    """--ckpt names an exported detector file rather than a run directory."""
    return path.lower().endswith(".onnx") and not os.path.isdir(path)


def _provider(device: str) -> str:
    if device in ("auto", "cpu"):
        return device
    if device.startswith("cuda"):
        return "cuda"
    raise ValueError(f"--device {device}: choose auto, cpu, cuda or cuda:N")


def eval_onnx(args):
    """`dgsnet eval --ckpt detector.onnx`: the same report, scored by onnxruntime (no torch)."""
    from dgsnet_export.runtime import OnnxDetector
    from dgsnet_export.runtime.cli import layout_options

    from dgsnet.evalcore import check_report_dir, evaluate_scorer, write_report
    from dgsnet.metrics import check_threshold

    for flag, given in (("--head", args.head != "auto"), ("--pretrained", args.pretrained is not None),
                        ("--jpeg-draft", args.jpeg_draft)):
        if given:
            raise ValueError(f"{flag} applies to a run directory, not to an exported detector ({args.ckpt}); "
                             f"leave {flag} out")
    threshold = check_threshold(args.threshold)
    if not os.path.isdir(args.data):
        raise FileNotFoundError(f"--data {args.data}: no such folder")
    stem = os.path.splitext(os.path.basename(args.ckpt))[0]
    out_dir = args.out or os.path.join(os.path.dirname(args.ckpt), f"{stem}-eval",
                                       os.path.basename(os.path.normpath(args.data)))
    check_report_dir(out_dir, None, args.data, multi=bool(args.perturb), plot=not args.no_plot,
                     model_file=args.ckpt)  # before the model loads
    layout = layout_options(args)
    detector = OnnxDetector(args.ckpt, _provider(args.device), **layout)
    result = evaluate_scorer(detector.logits, detector.preprocess, args.data, perturbations=args.perturb,
                             threshold=threshold, batch_size=args.batch_size, workers=max(1, args.workers),
                             strict=args.strict, pixel_budget=args.pixel_budget)
    order = layout["patch_order"]
    shuffle = f"shuffle (seed {layout['patch_seed']}, per file name)"
    setup = {"patch layout": "raster" if order == "raster" else shuffle, "decode": layout["decode"],
             "detector": f"{os.path.basename(args.ckpt)} (onnxruntime, {detector.provider})"}
    return write_report(out_dir, result, plot=not args.no_plot, setup=setup)


def _cmd_eval(args) -> int:
    if is_onnx(args.ckpt):
        result = eval_onnx(args)
    else:
        from dgsnet_export.runtime.cli import layout_options

        from dgsnet.evaluate import evaluate_checkpoint

        result = evaluate_checkpoint(args.ckpt, args.data, out_dir=args.out, head=args.head,
                                     perturbations=args.perturb, batch_size=args.batch_size,
                                     workers=args.workers, device=args.device, strict=args.strict,
                                     plot=not args.no_plot, pretrained=args.pretrained,
                                     pixel_budget=args.pixel_budget, jpeg_draft=args.jpeg_draft,
                                     threshold=args.threshold, **layout_options(args))
    print(result.markdown)
    from dgsnet.fileio import printable  # a folder name that is not UTF-8 is shown with \xNN escapes

    print("\n".join(f"{kind}: {printable(str(path))}" for kind, path in result.files.items()), file=sys.stderr)
    return 0


def add_eval_parser(sub) -> None:
    from dgsnet_export.runtime.cli import (add_batch_size_argument, add_layout_arguments, add_memory_arguments,
                                           add_progress_argument)

    p = sub.add_parser("eval", help="per-generator accuracy, AP, real/fake accuracy, AUC and EER of a checkpoint",
                       description="Evaluates a run directory or an exported .onnx detector on every test subset "
                                   "(one generator each) of --data; markdown on stdout; in --out: eval.csv/json/png, "
                                   "per-image scores.csv/jsonl, roc.png and pr.png.")
    p.add_argument("--ckpt", required=True,
                   help="finished run directory (model.safetensors + model.json), or an exported detector.onnx "
                        "(scored with onnxruntime, without torch)")
    p.add_argument("--data", required=True,
                   help="test root: <root>/<subset>/{0_real,1_fake}, or one {0_real,1_fake} folder")
    p.add_argument("--out", default=None, help="report folder (default <ckpt>/eval/<data folder name>; for "
                                                "X.onnx, X-eval/<data folder name> beside it)")
    p.add_argument("--perturb", nargs="*", default=None,
                   help='robustness conditions, e.g. --perturb jpeg:95,75,50 blur:1,2 resize:0.5')
    p.add_argument("--threshold", type=float, default=0.5, metavar="P",
                   help="probability above which an image is called generated, for the accuracy columns "
                        "(strictly between 0 and 1; default 0.5); AP, AUC and EER do not depend on it")
    # Scoring never reads captions: kept so old command lines still run, and hidden.
    p.add_argument("--captions", default=None, help=argparse.SUPPRESS)
    add_checkpoint_arguments(p)
    add_batch_size_argument(p, 64, "images per forward pass")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader worker processes (for an .onnx detector: decoding threads)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--strict-data", dest="strict", action="store_true",
                   help="an unreadable image is an error, not a skip")
    p.add_argument("--strict", dest="strict", action="store_true", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--no-plot", action="store_true", help="no PNG charts")
    add_progress_argument(p)
    add_layout_arguments(p)
    add_memory_arguments(p)
    p.add_argument("--jpeg-draft", action="store_true",
                   help="decode a JPEG over the 100 MP bomb limit at 1/2..1/8 scale (it is resampled, so its "
                        "score is not the full-size one) instead of skipping it")
    p.set_defaults(func=_cmd_eval)
