"""`dgsnet eval`: cross-generator accuracy, AP and AUC of a run directory."""
from __future__ import annotations

import sys

from dgsnet.cli.common import add_checkpoint_arguments


def _cmd_eval(args) -> int:
    from dgsnet_export.runtime.cli import layout_options

    from dgsnet.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.ckpt, args.data, out_dir=args.out, head=args.head,
                                 perturbations=args.perturb, captions=args.captions,
                                 batch_size=args.batch_size, workers=args.workers, device=args.device,
                                 strict=args.strict, plot=not args.no_plot, pretrained=args.pretrained,
                                 pixel_budget=args.pixel_budget, jpeg_draft=args.jpeg_draft,
                                 **layout_options(args))
    print(result.markdown)
    from dgsnet.fileio import printable  # a folder name that is not UTF-8 is shown with \xNN escapes

    print("\n".join(f"{kind}: {printable(str(path))}" for kind, path in result.files.items()), file=sys.stderr)
    return 0


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="per-generator accuracy, AP, real/fake accuracy and AUC of a checkpoint",
                       description="Evaluates a run directory on every test subset (one generator each) "
                                   "of --data; markdown on stdout, CSV/JSON/PNG files in --out.")
    p.add_argument("--ckpt", required=True, help="finished run directory (model.safetensors + model.json)")
    p.add_argument("--data", required=True,
                   help="test root: <root>/<subset>/{0_real,1_fake}, or one {0_real,1_fake} folder")
    p.add_argument("--out", default=None, help="report folder (default <ckpt>/eval/<data folder name>)")
    p.add_argument("--perturb", nargs="*", default=None,
                   help='robustness conditions, e.g. --perturb jpeg:95,75,50 blur:1,2 resize:0.5')
    p.add_argument("--captions", default=None, help="captions JSON (not needed to score images)")
    add_checkpoint_arguments(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error, not a skip")
    p.add_argument("--no-plot", action="store_true", help="no PNG charts")
    from dgsnet_export.runtime.cli import add_layout_arguments, add_memory_arguments

    add_layout_arguments(p)
    add_memory_arguments(p)
    p.add_argument("--jpeg-draft", action="store_true",
                   help="decode a JPEG over the 100 MP bomb limit at 1/2..1/8 scale (it is resampled, so its "
                        "score is not the full-size one) instead of skipping it")
    p.set_defaults(func=_cmd_eval)
