"""A short stage-2 training run per surgery mode: loss finite, images/s, peak memory.

The training step of the GPU check (scripts/gpu-check.sh). One random-initialised backbone
(default on a GPU: ViT-L-14, the published backbone's shape, and the published batch 32; on the
CPU: dgs-small, batch 4) is copied into a fresh DGSNet model per surgery mode (none, feature,
layer, both), which then takes --steps optimiser steps exactly as the trainer does
(bench/common.py dgs_step: student and teacher forward under bf16 autocast on a GPU, fp32 on the
CPU, dgs_objective, backward, Adam), cycling over a few fixed batches of random pre-normalised
images (no data path: bench_step.py times that). Per mode it reports the first and last loss and
whether every step's loss was finite, the median step time after --warmup steps and images/s,
the peak GPU memory of the run (weights, Adam state and activations), and the step time as a
ratio to mode none measured in the same run. Exit status 1 when a loss was not finite (after
writing the results).

    python bench/bench_train_gpu.py [--quick] [--device cpu|cuda] [--model ViT-L-14] [--batch 32]
                                    [--steps 30] [--modes none,feature,layer,both] [--out DIR]
"""
from __future__ import annotations

import copy
import gc
import math
import os
import statistics
import time

import torch

from common import (add_threads_option, base_parser, device_name, dgs_step, markdown_table,
                    resolve_device, results_dir, set_threads, synchronize, write_results)

MODES = ("none", "feature", "layer", "both")
DISTINCT_BATCHES = 4  # a few different batches, so the run is not one batch memorised


def run_mode(clip, spec, mode: str, batches, captions, steps: int, warmup: int, amp, device) -> dict:
    """`steps` training steps of a fresh model in `mode`; the row of the results table."""
    from dgsnet.models import DGSNetModel, LoRAConfig

    torch.manual_seed(0)  # the same LoRA and head initialisation for every mode
    model = DGSNetModel(spec, LoRAConfig(), clip=copy.deepcopy(clip)).to(device)
    model.set_stage(2)
    model.train()
    optimizer = torch.optim.Adam(model.stage_parameters(2), lr=1e-4)
    text = model.encode_captions(captions)
    # One input buffer refilled before each step, as a loader would: one step closure for the run.
    images = torch.empty_like(batches[0][0])
    labels = torch.empty_like(batches[0][1])
    step = dgs_step(model, optimizer, images, labels, text, mode, amp=amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    start_all = time.perf_counter()
    for i in range(steps):
        imgs, labs = batches[i % len(batches)]
        images.copy_(imgs)
        labels.copy_(labs)
        synchronize(device)
        start = time.perf_counter()
        losses.append(step())
        synchronize(device)
        times.append(time.perf_counter() - start)
    wall = time.perf_counter() - start_all
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    values = torch.stack(losses).float().cpu().tolist()
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    timed = times[warmup:] or times
    seconds = statistics.median(timed)
    del step, optimizer, model, text, images, labels
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"mode": mode, "steps": steps, "loss_first": values[0], "loss_last": values[-1],
            "loss_finite": not bad, "first_nonfinite_step": bad[0] if bad else None,
            "step_ms": seconds * 1e3, "images_per_s": batches[0][0].shape[0] / seconds,
            "wall_s": wall, "peak_mb": peak}


def main(argv=None):
    p = base_parser(__doc__.splitlines()[0])
    add_threads_option(p)
    p.add_argument("--model", default="auto",
                   help="open_clip backbone, random-initialised (default: ViT-L-14 on a GPU, dgs-small on the CPU)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: GPU 32, CPU 4)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per mode (default 30; --quick 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="first steps left out of the step time (default 5; --quick 1)")
    p.add_argument("--modes", default=",".join(MODES), help="surgery modes, comma-separated")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="autocast dtype (auto: bf16 on a GPU, off on the CPU, as training's --amp auto)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    set_threads(args.threads, device)
    gpu = device.type == "cuda"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        p.error(f"--modes {args.modes!r}: use some of {', '.join(MODES)}")
    if args.model == "auto":
        args.model = "ViT-L-14" if gpu else "dgs-small"
    batch = args.batch or (32 if gpu else 4)
    steps = args.steps or (3 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    if steps <= warmup:
        p.error(f"--steps {steps} must be more than --warmup {warmup}")
    amp = {"auto": torch.bfloat16 if gpu else None, "bf16": torch.bfloat16, "fp16": torch.float16,
           "off": None}[args.amp]
    dev = device_name(device)

    from dgsnet.models import BackboneSpec
    from dgsnet.models.backbone import create_clip

    spec = BackboneSpec(args.model, None)
    clip = create_clip(spec)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, 224, 224, generator=gen).to(device),
                torch.randint(0, 2, (batch,), generator=gen).float().to(device))
               for _ in range(DISTINCT_BATCHES)]
    captions = [f"a photo, number {i}" for i in range(batch)]

    rows = []
    for mode in modes:
        row = run_mode(clip, spec, mode, batches, captions, steps, warmup, amp, device)
        rows.append(row)
        peak = "" if row["peak_mb"] is None else f", peak {row['peak_mb']:.0f} MB"
        print(f"mode {mode}: loss {row['loss_first']:.4f} -> {row['loss_last']:.4f} "
              f"({'finite' if row['loss_finite'] else 'NOT FINITE'}), {row['step_ms']:.1f} ms a step, "
              f"{row['images_per_s']:.1f} images/s{peak}", flush=True)
    if "none" in modes:
        base = next(r["step_ms"] for r in rows if r["mode"] == "none")
        for r in rows:
            r["relative_to_none"] = r["step_ms"] / base

    columns = ["mode", "loss_first", "loss_last", "loss_finite", "step_ms", "images_per_s",
               "relative_to_none", "peak_mb"]
    table = markdown_table(rows, columns)
    precision = "fp32" if amp is None else f"{str(amp).removeprefix('torch.')} autocast"
    title = f"short stage-2 training run, {args.model} (random init), batch {batch}, {steps} steps, {precision}, {dev}"
    print(f"\n{title}\n\n{table}")
    out_dir = results_dir(args, device)
    path = write_results(out_dir, "bench_train_gpu", rows,
                         {"device": dev, "model": args.model, "batch": batch, "steps": steps, "warmup": warmup,
                          "amp": str(amp), "quick": args.quick, "threads": torch.get_num_threads(),
                          "definition": "median step time after warm-up; relative_to_none = step_ms / "
                                        "step_ms of mode none; peak_mb = peak GPU memory allocated"})
    from dgsnet.fileio import atomic_write

    atomic_write(os.path.join(out_dir, "bench_train_gpu.md"), f"{title}\n\n{table}\n")
    print(f"\nwrote {path}")
    bad = [r["mode"] for r in rows if not r["loss_finite"]]
    if bad:
        raise SystemExit(f"non-finite loss in mode(s) {', '.join(bad)}: see {path} (first_nonfinite_step)")


if __name__ == "__main__":
    main()
