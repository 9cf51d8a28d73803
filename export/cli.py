"""`dgsnet-predict detector.onnx images/ [more files or folders]`: score images with an exported detector.

Writes one JSON line per input, {"path", "logit", "probability", "label"} or
{"path", "error"} for a file that cannot be read, to stdout or --out, and a
summary to stderr. Exit status: 0 all inputs scored, 1 some could not be
read or scored NaN/inf (their lines say why), 2 the model or the arguments
are unusable. --out is written atomically (a failed run leaves an old file as
it was) and may not be the model, an input, or a file inside an input folder.
"""
from __future__ import annotations

import argparse
import os
import sys


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --patch-order, --patch-seed, --decode: shared by dgsnet-predict, dgsnet predict and
    dgsnet eval; `layout_options(args)` resolves them."""
    parser.add_argument("--preset", choices=["published"], default=None,
                        help="published: the published test loader (--patch-order shuffle --decode pil)")
    parser.add_argument("--patch-order", default=None, choices=["raster", "shuffle"],
                        help="layout of the 49 selected patches: raster (default, deployment) or shuffle "
                             "(the published evaluation's shuffled layout, seeded per file name)")
    parser.add_argument("--patch-seed", type=int, default=None,
                        help="seed of --patch-order shuffle (default 100, the published test seed)")
    parser.add_argument("--decode", default=None, choices=["dgsnet", "pil"],
                        help="dgsnet (EXIF rotation, alpha on white; default) or pil (the published "
                             "loader: PIL convert('RGB'), no EXIF rotation)")


def layout_options(args: argparse.Namespace) -> dict:
    """{patch_order, patch_seed, decode} from the flags: defaults < --preset < explicit flags."""
    from dgsnet.preprocess import inference_options

    return inference_options(args.preset, patch_order=args.patch_order, patch_seed=args.patch_seed,
                             decode=args.decode)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgsnet-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the exported detector (.onnx), from `dgsnet export`")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--out", help="write the JSON lines here instead of stdout")
    parser.add_argument("--batch", type=int, default=16, help="images per onnxruntime call (default 16)")
    parser.add_argument("--provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"],
                        help="execution provider; auto = TensorRT, else CUDA, else CPU")
    parser.add_argument("--threshold", type=float, help="probability at which the label is the positive "
                        "class (default: the one stored in the model, usually 0.5)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--workers", type=int, help="threads decoding and preprocessing images (default: up to 4)")
    parser.add_argument("--no-trt-fp16", action="store_true", help="keep TensorRT in float32")
    parser.add_argument("--trt-cache", help="folder to cache TensorRT engines in (rebuilds are slow)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_layout_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch < 1:
        print(f"dgsnet-predict: --batch {args.batch}: must be >= 1", file=sys.stderr)
        return 2
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        print(f"dgsnet-predict: --threshold {args.threshold}: must be a probability in (0, 1)", file=sys.stderr)
        return 2

    from .inputs import collect_inputs
    from .metadata import MetadataError
    from .outputs import OutputError, check_output
    from .report import score_and_report
    from .runtime import ModelLoadError, OnnxDetector

    protected = [(args.model, "the model")]
    if os.path.exists(args.model + ".data"):  # weights of a model over 2 GB
        protected.append((args.model + ".data", "the model's weights"))
    try:  # before the model is loaded: --out must not be the model, an input, or inside an input folder
        check_output(args.out, [*protected, *args.inputs], "--out")
    except OutputError as exc:
        print(f"dgsnet-predict: {exc}", file=sys.stderr)
        return 2
    try:
        detector = OnnxDetector(args.model, provider=args.provider, threads=args.threads,
                                max_batch=max(args.batch, 1), trt_fp16=not args.no_trt_fp16,
                                trt_cache_dir=args.trt_cache, **layout_options(args))
    except (ModelLoadError, MetadataError) as exc:
        print(f"dgsnet-predict: {exc}", file=sys.stderr)
        return 2
    for note in detector.notes:
        print(f"dgsnet-predict: {note}", file=sys.stderr)

    found = collect_inputs(args.inputs)
    if not found.paths:
        print(f"dgsnet-predict: no image files in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    info = detector.info
    threshold = info.threshold if args.threshold is None else args.threshold
    engine = f"{detector.provider} ({detector.path.name}: {info.backbone}, {info.precision})"
    try:
        tally = score_and_report(found, detector.logits, detector.preprocess, labels=info.labels,
                                 threshold=threshold, batch_size=args.batch, workers=args.workers,
                                 out=args.out, progress=not args.no_progress, prog="dgsnet-predict",
                                 engine=engine)
    except OutputError as exc:
        print(f"dgsnet-predict: {exc}", file=sys.stderr)
        return 2
    return 1 if tally.errors else 0


if __name__ == "__main__":
    sys.exit(main())
