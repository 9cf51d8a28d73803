"""`dgsnet convert-official`: a checkpoint of the published DGS-Net code -> a dgsnet run directory."""
from __future__ import annotations

import sys

# Mirrors dgsnet.convert.lora.PUBLISHED_ALPHA (tests/test_packaging.py checks it): the parser must not import torch.
PUBLISHED_ALPHA = 6.0


def _cmd_convert(args) -> int:
    from dgsnet.convert import convert_official

    report = convert_official(args.ckpt, args.out, stage1=args.stage1, lora_alpha=args.lora_alpha,
                              as_published_test=args.as_published_test)
    for note in report.warnings:
        print(f"dgsnet convert-official: warning: {note}", file=sys.stderr)
    print(report.summary())
    return 0


def add_convert_parser(sub) -> None:
    """Registers `dgsnet convert-official` on an argparse subparsers object."""
    text = ("convert a checkpoint of the published DGS-Net code (HorizonTEL/DGS-Net model_epoch_step2.pth, "
            "or a stage-1 model_epoch_step1.pth alone) into a dgsnet run directory for eval/export/predict")
    p = sub.add_parser(
        "convert-official", help=text,
        description=text + ". The architecture is read off the tensor shapes; whether the file's q/k/v "
                    "weights already include the LoRA update (the published eval() merges it in place) is "
                    "told from the frozen copy. By default the run is the trained model (pretrained weights "
                    "+ LoRA); --as-published-test instead reproduces what the published test.py computes "
                    "(it adds the LoRA update once more, so a merged file gets it twice).")
    p.add_argument("ckpt", help="the published .pth file (read with torch.load(weights_only=True))")
    p.add_argument("--out", required=True, help="new run directory (must not exist or be empty)")
    p.add_argument("--stage1", default=None,
                   help="the published stage-1 file (model_epoch_step1.pth): checked against the stage-2 "
                        "file's frozen CLIP and teacher head, differences reported")
    p.add_argument("--lora-alpha", type=float, default=PUBLISHED_ALPHA,
                   help="LoRA alpha of the run (not stored in the file; scale = alpha / sqrt(r)); default 6")
    p.add_argument("--as-published-test", action="store_true",
                   help="reproduce the published test.py exactly: base = the stored student weights, LoRA "
                        "added on top (for a merged file the update counts twice); default: the trained model")
    p.set_defaults(func=_cmd_convert)
