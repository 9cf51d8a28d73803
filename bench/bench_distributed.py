"""Data-parallel scaling of a stage-2 DGS-Net step: 1 process against N under torchrun.

Runs the real CLI (`torchrun --standalone --nproc-per-node N -m dgsnet train`)
on the demo benchmark's training set with the same per-process batch (weak
scaling: the global batch grows with N), DDP, and optionally FSDP, and reads
the trainer's own images/s records (log.jsonl; the first records are
dropped as warm-up; the median step is kept). On a CPU host every process
gets one thread (OMP_NUM_THREADS=1), the CPU analogue of one GPU per
process: the ideal ratio is N, and the shortfall is the cost of the
all-reduce, the DGS objective's extra collectives and the process split.
Run it on a quiet machine: another busy program skews CPU timings.

    python bench/bench_distributed.py [--quick] [--procs 1,2] [--model dgs-small] [--fsdp]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from common import base_parser, markdown_table, resolve_device, results_dir, write_results


def _images_per_s(log_path: str, warmup: int) -> float:
    with open(log_path) as fh:
        rows = [json.loads(line) for line in fh]
    rates = [r["images_per_s"] for r in rows if r.get("event") == "train" and r.get("stage") == 2]
    rates = rates[warmup:] or rates
    rates.sort()  # median: robust to a step that waited on another program
    return rates[len(rates) // 2]


def run_one(procs: int, args, data: str, teacher: str, work: str, device) -> float:
    out = tempfile.mkdtemp(prefix=f"run-{procs}-", dir=work)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           "-m", "dgsnet", "train", "--data", data, "--teacher", teacher, "--out", os.path.join(out, "run"),
           "--model", args.model, "--pretrained", "none", "--batch-size", str(args.batch),
           "--max-steps", str(args.steps), "--log-every", "1", "--workers", "1",
           "--device", device.type, "--surgery", args.surgery]
    if args.fsdp and procs > 1:
        cmd.append("--fsdp")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return _images_per_s(os.path.join(out, "run", "log.jsonl"), warmup=2)


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--procs", default="1,2", help="process counts to compare (first is the baseline)")
    p.add_argument("--model", default="dgs-small")
    p.add_argument("--batch", type=int, default=16, help="images per process per step")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--surgery", default="feature")
    p.add_argument("--fsdp", action="store_true", help="shard the encoder (FSDP2) when N > 1")
    args = p.parse_args()
    if args.quick:
        args.model, args.batch, args.steps = "dgs-tiny", 4, 4
    device = resolve_device(args.device)
    procs = [int(x) for x in args.procs.split(",")]

    from dgsnet.demo import build_demo_dataset

    with tempfile.TemporaryDirectory() as work:
        info = build_demo_dataset(os.path.join(work, "data"), per_class=32, test_per_class=4)
        teacher = os.path.join(work, "teacher")
        subprocess.run([sys.executable, "-m", "dgsnet", "train-teacher", "--data", info.train_dir,
                        "--out", teacher, "--model", args.model, "--pretrained", "none",
                        "--max-steps", "1", "--workers", "0", "--device", device.type],
                       check=True, capture_output=True, text=True)
        rows = []
        for n in procs:
            rate = run_one(n, args, info.train_dir, teacher, work, device)
            rows.append({"processes": n, "images_per_s": rate})
    base = rows[0]["images_per_s"]
    for r in rows:
        r["ratio"] = r["images_per_s"] / base  # ideal: N (one core or GPU per process)
    print(markdown_table(rows))
    path = write_results(results_dir(args, device), "bench_distributed" + ("_fsdp" if args.fsdp else ""),
                         rows, {"model": args.model, "batch_per_process": args.batch, "steps": args.steps,
                                "surgery": args.surgery, "fsdp": args.fsdp, "device": str(device)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
