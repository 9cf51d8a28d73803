"""`dgsnet demo`: train, evaluate and export a detector end to end on the synthetic benchmark."""
from __future__ import annotations

import argparse

from dgsnet.demo import run as demo_run
from dgsnet.demo.run import METHODS, DemoConfig, run_demo


def main_from_args(args) -> int:
    demo = DemoConfig(out=args.out, seed=args.seed, model=args.model, export=not args.no_export)
    if args.methods:
        demo.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.quick:  # the smoke-test size: a few steps per stage
        demo.per_class, demo.test_per_class, demo.teacher_epochs, demo.epochs = 16, 8, 1, 1
    run_demo(demo)
    return 0


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="train, evaluate and export a detector end to end on synthetic data "
                                    "(offline, CPU, minutes)", description=demo_run.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (finished stages are reused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="dgs-small", help="open_clip config (dgs-tiny, dgs-small, ...)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of: {', '.join(METHODS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny data and one epoch per stage (smoke test)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    from dgsnet_export.runtime.cli import add_progress_argument

    add_progress_argument(p)  # dgsnet.cli.main applies it to every stage the demo runs
    p.set_defaults(func=main_from_args)

