"""The `dgsnet` command line: one subcommand per job."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_check(args) -> int:
    from dgsnet.selfcheck import run_check

    report = run_check(model=args.model, batch=args.batch, backend=args.backend, seed=args.seed)
    for key, value in report.items():
        print(f"{key:>40}: {json.dumps(value) if isinstance(value, dict) else value}")
    ok = report["all gradients finite"] and report["max |<G_tilde, h>| / ||G_tilde||"] < 1e-3
    print("check: OK" if ok else "check: FAILED", file=sys.stderr)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgsnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="one DGS-Net step end to end on a tiny random open_clip model")
    check.add_argument("--model", default="dgs-tiny")
    check.add_argument("--batch", type=int, default=8)
    check.add_argument("--backend", default="auto")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=_cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
