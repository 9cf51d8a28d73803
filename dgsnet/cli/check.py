"""`dgsnet check`: one DGS-Net step end to end on a tiny random open_clip model."""
from __future__ import annotations

import json
import sys


def add_check_parser(sub) -> None:
    check = sub.add_parser("check", help="one DGS-Net step end to end on a tiny random open_clip model",
                           description="Builds a tiny random open_clip model, runs one stage-2 step with "
                                       "gradient surgery on --backend and checks that the gradients are finite "
                                       "and orthogonal to the harmful direction (exit 0 when they are).")
    check.add_argument("--model", default="dgs-tiny", help="open_clip model name (default dgs-tiny)")
    from dgsnet_export.runtime.cli import add_batch_size_argument

    add_batch_size_argument(check, 8, "images in the step")
    check.add_argument("--backend", default="auto", help="reference, cpp, cuda, triton or auto")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=_cmd_check)


def _cmd_check(args) -> int:
    from dgsnet.selfcheck import run_check

    report = run_check(model=args.model, batch=args.batch_size, backend=args.backend, seed=args.seed)
    for key, value in report.items():
        print(f"{key:>40}: {json.dumps(value) if isinstance(value, dict) else value}")
    ok = report["all gradients finite"] and report["max |<G_tilde, h>| / ||G_tilde||"] < 1e-3
    print("check: OK" if ok else "check: FAILED", file=sys.stderr)
    return 0 if ok else 1
