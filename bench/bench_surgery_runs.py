"""bench_surgery's speedup targets over several separate runs: how far one run can be trusted.

One run of bench_surgery.py judges the speedup target on its step-by-step pairs, which
cancel load changes within a pair but not a shared machine's slower and quieter phases,
which last minutes and do not slow the reference (many small ops, allocations, Python)
and the fused op alike. This script starts bench_surgery.py --runs times, each in a fresh
process one after the other, as it is committed (torch.compile included: a process that
compiled nothing timed the reference differently), into a scratch folder (the committed
bench_surgery.json is left alone), and keeps from each its target rows (the paired median with its quartiles,
the rounds' ratio, both competitors' times there) and its call overhead (fwd_us). The
summary per target: the median, lowest and highest paired ratio over the runs, how many
runs met the target, and the reference's time in the run with the lowest ratio (the
quietest phase is where the reference is fastest).

    python bench/bench_surgery_runs.py [--runs N] [--device cpu|cuda] [-- extra bench_surgery args]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from common import (SPEEDUP_GOAL, base_parser, device_name, markdown_table, resolve_device,
                    results_dir, write_results)

HERE = os.path.dirname(os.path.abspath(__file__))


def run_once(device: str, extra: list[str]) -> dict:
    """One bench_surgery.py process; its JSON record."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, os.path.join(HERE, "bench_surgery.py"), "--device", device,
               "--out", out, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench_surgery.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(os.path.join(out, "bench_surgery.json")) as fh:
            return json.load(fh)


def target_rows(record: dict) -> list[dict]:
    """Per backend measured in pairs: the target row's paired ratio, quartiles, rounds' ratio
    and both times, plus the backend's per-call forward cost from the call-overhead table."""
    fwd = {o["backend"]: o["fwd_us"] for o in record.get("call_overhead", [])}
    out = []
    for row in record["rows"]:
        for key in row:
            if not key.endswith("_speedup_paired"):
                continue
            b = key[: -len("_speedup_paired")]
            out.append({"backend": b, "B": row["B"], "D": row["D"], "time": record["time"],
                        "paired": row[key], "q1": row[f"{b}_speedup_paired_q1"],
                        "q3": row[f"{b}_speedup_paired_q3"], "rounds": row[f"{b}_speedup"],
                        "reference_us": row["reference_us"], "backend_us": row[f"{b}_us"],
                        "fwd_us": fwd.get(b)})
    return out


def summarise(runs: list[dict], goal: float) -> list[dict]:
    """One summary row per (backend, B, D) over the runs' target rows."""
    keys = sorted({(r["backend"], r["B"], r["D"]) for r in runs})
    out = []
    for backend, batch, dim in keys:
        mine = [r for r in runs if (r["backend"], r["B"], r["D"]) == (backend, batch, dim)]
        paired = [r["paired"] for r in mine]
        low = min(mine, key=lambda r: r["paired"])
        fwd = [r["fwd_us"] for r in mine if r["fwd_us"] is not None]
        out.append({"backend": backend, "B": batch, "D": dim, "runs": len(mine),
                    "paired_median": statistics.median(paired), "paired_min": min(paired),
                    "paired_max": max(paired), "runs_meeting_target": sum(p >= goal for p in paired),
                    "target": f">= {goal:g}", "reference_us_at_min": low["reference_us"],
                    "reference_us_median": statistics.median(r["reference_us"] for r in mine),
                    "fwd_us_max": max(fwd) if fwd else None})
    return out


def goal_for(device_type: str) -> float:
    """bench_surgery's speedup target at the paired shapes (its SPEEDUP_GOAL): the cpp
    backend's on the CPU, the GPU backends' on a GPU."""
    return float(SPEEDUP_GOAL["cpp" if device_type == "cpu" else "cuda"])


def main(argv=None):
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="separate bench_surgery.py processes")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    device = resolve_device(args.device)
    if args.quick:
        extra = ["--quick", *extra]
    runs = []
    for i in range(args.runs):
        rows = target_rows(run_once(device.type, extra))
        runs += rows
        print(f"run {i + 1}/{args.runs}: " + ", ".join(
            f"{r['backend']} {r['paired']:.2f}x (reference {r['reference_us']:.0f} us)" for r in rows),
            flush=True)
    summary = summarise(runs, goal_for(device.type))
    table = markdown_table(summary)
    print(f"\n{table}")
    out_dir = results_dir(args, device)
    dev = device_name(device)
    path = write_results(out_dir, "bench_surgery_runs", summary,
                         {"device": dev, "quick": args.quick, "bench_args": extra,
                          "definition": "bench_surgery.py's paired speedup at its target shapes, "
                                        "over separate runs one after the other",
                          "runs": runs})
    with open(os.path.join(out_dir, "bench_surgery_runs.md"), "w") as fh:
        fh.write(f"bench_surgery's target rows over {args.runs} separate runs, {dev}\n\n{table}\n\n"
                 + markdown_table(runs) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
