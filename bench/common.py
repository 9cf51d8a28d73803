"""The one benchmark convention every bench/*.py script follows.

- Each script times competitors side by side in one run, on the same inputs,
  and reports ratios against a named baseline; absolute times are printed with
  the device they came from.
- `time_call` is a median over repeats after warm-up, synchronising the GPU.
- Results go to bench/results/<device>/<name>.json (plus a PNG where a plot
  helps), with the machine description, so they can be committed and compared.
- `--quick` shrinks every sweep so the script runs in seconds (a check by
  hand that a script still runs; no test runs the benchmarks); the default
  sweep is the one reported. docs/benchmarks.md describes every script.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from typing import Callable, Iterable

from dgsnet.device import resolve_device  # noqa: F401 (the bench scripts import it from here)

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# bench_surgery's speedup target per backend over the reference, at its target shapes
# (bench_surgery_runs.py summarises runs against the same numbers).
SPEEDUP_GOAL = {"cpp": 5, "cuda": 10, "triton": 10}


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sweep (seconds), for smoke runs")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default=None,
                   help="results folder (default bench/results/<device name>)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per point")
    return p


def device_name(device) -> str:
    """A folder-safe description of the machine: GPU model, or CPU model and core count."""
    import torch

    if getattr(device, "type", device) == "cuda":
        label = torch.cuda.get_device_name(device)
    else:
        label = _cpu_model() + f" x{os.cpu_count()}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-").lower()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device, warmup: int = 3, repeats: int = 10,
              min_seconds: float = 0.0) -> float:
    """Median wall time of fn() in seconds; runs at least `repeats` times and `min_seconds` in all."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_ratio(base: Callable[[], object], other: Callable[[], object], device, pairs: int,
                 calls: int = 1, warm: bool = False) -> dict:
    """other's time over base's, step by step: `pairs` pairs of `calls` calls each, back to back
    (the order alternating, so neither always runs second), the median of the pairs' ratios and
    its quartiles. Paired calls a few hundred ms apart see the same machine, which rounds of
    several calls each do not on a shared one. warm: one untimed call before each timed one, so
    a short call is not timed on the caches the other competitor just left behind."""
    ratios = []
    for i in range(pairs):
        order = (base, other) if i % 2 == 0 else (other, base)
        t = []
        for fn in order:
            if warm:
                fn()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            synchronize(device)
            t.append(time.perf_counter() - start)
        b, o = t if i % 2 == 0 else t[::-1]
        ratios.append(o / b)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2], "pairs": pairs}


def interleaved_times(fns: dict[str, Callable[[], object]], device, repeats: int,
                      rounds: int, samples: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median over `rounds` of each competitor's median time, the competitors taking turns,
    so load changes on a shared machine hit every competitor alike. `samples`, when given, is
    filled with each competitor's time per round (for ratios paired within a round)."""
    samples = {} if samples is None else samples
    samples.update({name: [] for name in fns})
    for name, fn in fns.items():  # warm-up (and torch.compile) outside the timed rounds
        time_call(fn, device, warmup=3, repeats=1)
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_call(fn, device, warmup=1, repeats=repeats))
    return {name: statistics.median(v) for name, v in samples.items()}


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op CPU threads (default on the CPU: 1; on a shared machine "
                             "OpenMP barriers of oversubscribed threads stall for whole time "
                             "slices, which hits many-op baselines at random)")


def set_threads(threads: int | None, device) -> None:
    """torch's intra-op threads: `threads`, or 1 on the CPU when not given (see add_threads_option)."""
    import torch

    if threads is None and getattr(device, "type", device) == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def peak_memory_bytes(fn: Callable[[], object], device) -> int | None:
    """Peak GPU memory allocated during fn() above what was allocated before; None on the CPU."""
    import torch

    if getattr(device, "type", device) != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


PHOTOS = ("astronaut", "coffee", "chelsea")


def photo_jpegs(size: int, names: Iterable[str] = PHOTOS) -> list[bytes]:
    """Real photos (scikit-image's samples) resized to size x size, JPEG-encoded at quality 95
    (the common on-disk form of training and test sets)."""
    import io

    import skimage.data
    from PIL import Image

    out = []
    for name in names:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((size, size), Image.BICUBIC)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=95)
        out.append(buffer.getvalue())
    return out


def dgs_step(model, optimizer, images, labels, text, mode: str, *, encoder=None, amp=None):
    """One dgsnet stage-2 step as the trainer runs it (StageTrainer.loss + backward + Adam step),
    on pre-made tensors: student and teacher forward (under bf16/fp16 autocast when `amp` is a
    dtype), dgs_objective, backward (LayerSurgery's for modes layer and both, u refreshed every
    step: the worst case), optimizer step. `encoder` is the student's forward (default
    model.visual; a compiled one for --compile). Returns the step as a closure, which returns
    the step's total loss (detached, on the device)."""
    import contextlib

    import torch

    from dgsnet.surgery import LayerSurgery, dgs_objective

    encoder = encoder if encoder is not None else model.visual
    layer = LayerSurgery(model.lora_parameters(), backend="auto") if mode in ("layer", "both") else None
    heads = [*model.student_head.parameters(), *model.text_head.parameters()]

    def autocast():
        return (contextlib.nullcontext() if amp is None
                else torch.autocast(images.device.type, dtype=amp))

    def step():
        with autocast():
            feats = encoder(images)
            teacher = model.teacher_features(images)
        out = dgs_objective(feats, teacher.to(feats.dtype), text.to(feats.dtype), labels,
                            model.student_head, model.teacher_head, model.text_head, mode=mode,
                            backend="auto", check_labels=False)
        if layer is None:
            out.total.backward()
        else:
            layer.backward(feats, out.total, heads, out.harmful, with_directions=True)
            layer.finish_directions()
            layer.project_()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.total.detach()  # left on the device: reading it here would sync every step
    return step


def markdown_table(rows: list[dict], columns: Iterable[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def results_dir(args, device) -> str:
    path = args.out or os.path.join(RESULTS_DIR, device_name(device))
    os.makedirs(path, exist_ok=True)
    return path


def write_results(path: str, name: str, rows: list[dict], meta: dict) -> str:
    """Writes <path>/<name>.json with the rows and the machine/meta description; returns the file."""
    import torch

    record = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "torch": torch.__version__, "python": platform.python_version(),
              "cpu": _cpu_model(), "cpu_count": os.cpu_count(), **meta, "rows": rows}
    out = os.path.join(path, f"{name}.json")
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=1)
    os.replace(tmp, out)
    return out
