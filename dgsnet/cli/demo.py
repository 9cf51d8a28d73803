"""`dgsnet demo`: train, evaluate and export a detector end to end on the synthetic benchmark."""
from __future__ import annotations

import argparse
from dataclasses import replace

from dgsnet.demo import run as demo_run
from dgsnet.demo.run import METHODS, DemoConfig, run_demo


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give integers separated by commas, e.g. 0,1,2") from None


def main_from_args(args) -> int:
    demo = DemoConfig(out=args.out, seeds=args.seeds, model=args.model, export=not args.no_export)
    if args.methods:
        demo.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.quick:  # the smoke-test size: a few steps per stage, a prior of a few steps
        demo.per_class, demo.test_per_class, demo.teacher_epochs, demo.epochs = 16, 8, 1, 1
        demo.prior = replace(demo.prior, pool=128, steps=4, batch_size=32)
        if args.seeds == DEFAULT_SEEDS:
            demo.seeds = [0, 1]
    run_demo(demo)
    return 0


DEFAULT_SEEDS = [0, 1, 2]


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="train, evaluate and export a detector end to end on synthetic data "
                                    "(offline, CPU, minutes)", description=demo_run.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (finished stages are reused)")
    p.add_argument("--seeds", type=_seeds, default=DEFAULT_SEEDS,
                   help="training seeds; the table gives the mean and spread over them (default 0,1,2)")
    p.add_argument("--model", default="dgs-tiny", help="open_clip config of the prior and detectors "
                   "(dgs-tiny, dgs-small, ...)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of: {', '.join(METHODS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny data, a few-step prior, one epoch per stage, seeds 0,1 (smoke test)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    from dgsnet_export.runtime.cli import add_progress_argument

    add_progress_argument(p)  # dgsnet.cli.main applies it to every stage the demo runs
    p.set_defaults(func=main_from_args)

