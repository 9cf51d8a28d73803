"""Fused DGS objective (forward + backward) by backend, against the reference.

One timed call = dgs_objective(...) and .backward() of its total, i.e. the
surgery's whole cost in a training step (features given; the encoder is not
timed). Competitors, on the same inputs in one run:
  reference            plain PyTorch (the specification; the baseline of every ratio)
  compiled_reference   torch.compile (inductor) of the same reference function
  cpp                  dgsnet._C on the CPU
  cuda, triton         on a GPU (Triton on the CPU only runs interpreted: not timed)
  copy_floor           on a GPU: a device-to-device copy moving the bytes the fused
                       step must move at least (read f, f_T, t; write h and the feature
                       gradient: 5 B D elements), i.e. the memory-bound floor
Ratios are reference time / backend time (higher is faster); each time is the
median of 5 interleaved rounds (competitors take turns) of a median over
--repeats calls. At the target shapes (B=256, D=768 for cpp; B=32, D=768 for
cuda and triton) each backend is also timed against the reference step by step
(PAIRS pairs, back to back, the order alternating: common.py's paired_ratio; each
side of a pair is PAIR_CALLS calls after an untimed one, so neither is timed on
the other's caches): <backend>_speedup_paired is the median of the pairs'
ratios, with its quartiles, and is the value the speedup target is judged on,
since a shared machine's load changes between rounds but rarely within one pair. On a GPU the peak memory allocated during one call is
reported too, each backend's time over the copy floor (x_copy_floor) and, at
B=32, D=768, how many of dgsnet's own kernels (OWN_KERNELS: the CUDA extension's
and the Triton backend's, by name) one forward launches (fwd_launches) and one
backward launches (bwd_launches), each counted alone; PyTorch's kernels around
them (autograd's ones-fill of the seed gradient, gradient accumulation, copies)
are not counted.

The call overhead (its own table, "call_overhead" in the JSON): at B=1, D=512,
where the kernels take no time, per backend
  fwd_us       dgs_objective with autograd recording (what a training step calls)
  fwd_us_best  the same, the fastest of the rounds (what the call costs on an idle core)
  fwd_bwd_us   the main rows' step: forward, backward of total, grads set to None
  own_us       fwd_bwd_us - autograd_floor_us: what the objective itself costs
and autograd_floor_us, the same step through a one-node graph on the features
(f.sum(), backward, the same zeroing): the autograd engine's fixed cost, which
any objective pays; own_us thus includes the head gradients' accumulation.

Targets (the "targets" entry of the JSON, each with its measured value): on
the CPU cpp >= 5x the reference at B=256, D=768 and its fwd_us < 40 us; on a
GPU >= 10x at B=32 (cuda, triton), <= 2x the copy floor at B=4096, and one
or two of dgsnet's own kernels per direction (forward, backward).

    python bench/bench_surgery.py [--quick] [--device cpu|cuda] [--repeats N]
"""
from __future__ import annotations

import os
import re

import torch
from torch import nn

from common import (SPEEDUP_GOAL, add_threads_option, base_parser, device_name,
                    interleaved_times, markdown_table, paired_ratio, peak_memory_bytes,
                    resolve_device, results_dir, set_threads, synchronize, write_results)
from dgsnet.surgery import available_backends, dgs_objective

BATCHES = (1, 32, 256, 4096)
DIMS = (512, 768, 1024)
# The speedup targets' shapes per backend, and the step-by-step pairs timed there.
TARGET_SHAPE = {"cpp": (256, 768), "cuda": (32, 768), "triton": (32, 768)}
PAIRS, PAIR_CALLS = 101, 5


def make_problem(batch, dim, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, dim, generator=gen).to(device, dtype) for _ in range(3)]
    labels = torch.randint(0, 2, (batch,), generator=gen).to(device, torch.float32)
    heads = []
    for _ in range(3):
        lin = nn.Linear(dim, 1).to(device)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(1, dim, generator=gen) / dim ** 0.5)
        heads.append(lin)
    feats[0].requires_grad_(True)
    return feats, labels, heads


def step_fn(backend, feats, labels, heads):
    f, f_t, t = feats

    def step():
        out = dgs_objective(f, f_t, t, labels, *heads, backend=backend, check_labels=False)
        out.total.backward()
        f.grad = None
        for h in heads:
            h.zero_grad(set_to_none=True)
    return step


def compiled_step_fn(compiled, feats, labels, heads):
    f, f_t, t = feats

    def step():
        compiled(f, f_t, t, labels, *heads).backward()
        f.grad = None
        for h in heads:
            h.zero_grad(set_to_none=True)
    return step


def reference_total(f, f_t, t, y, hs, ht, hx):
    return dgs_objective(f, f_t, t, y, hs, ht, hx, backend="reference", check_labels=False).total


def forward_fn(backend, feats, labels, heads):
    f, f_t, t = feats

    def forward():
        dgs_objective(f, f_t, t, labels, *heads, backend=backend, check_labels=False)
    return forward


def floor_fn(feats, heads):
    """The cheapest step of the same shape: a one-node graph on the features (f.sum()),
    backward, the same gradient zeroing. The autograd engine's fixed cost, no objective.
    (A graph reaching all five leaves needs several nodes and cost more than the fused op.)"""
    f = feats[0]

    def step():
        f.sum().backward()
        f.grad = None
        for h in heads:
            h.zero_grad(set_to_none=True)
    return step


def call_overhead(names, device, dtype, repeats, rounds, dim=512):
    """Per-call cost at B=1 (see the module docstring): one row per backend."""
    feats, labels, heads = make_problem(1, dim, device, dtype)
    fns = {"autograd_floor": floor_fn(feats, heads)}
    for b in names:
        fns[f"{b}_fwd"] = forward_fn(b, feats, labels, heads)
        fns[f"{b}_fwd_bwd"] = step_fn(b, feats, labels, heads)
    samples = {}
    times = interleaved_times(fns, device, repeats, rounds, samples)
    floor = times["autograd_floor"] * 1e6
    return [{"backend": b, "B": 1, "D": dim, "fwd_us": times[f"{b}_fwd"] * 1e6,
             "fwd_us_best": min(samples[f"{b}_fwd"]) * 1e6,
             "fwd_bwd_us": times[f"{b}_fwd_bwd"] * 1e6, "autograd_floor_us": floor,
             "own_us": times[f"{b}_fwd_bwd"] * 1e6 - floor} for b in names]


# dgsnet's own GPU kernels, by the name the profiler gives them: the CUDA extension's
# (csrc/cuda/dgs_objective.cu, templates in namespace dgsnet) and the Triton backend's
# (dgsnet/surgery/backends/triton/dgs_objective.py). tests/test_bench_surgery.py checks that
# each name is still defined there.
OWN_KERNELS = ("dgs_forward_kernel", "dgs_forward_reduce_kernel", "dgs_backward_kernel",
               "_forward_rows_kernel", "_forward_cols_kernel", "_forward_reduce_kernel",
               "_backward_kernel")
# A name as a whole identifier (after "::", a space or the start; "void dgsnet::(anonymous
# namespace)::dgs_forward_kernel<float, float>(...)"), optionally with a suffix of Triton's.
_OWN = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(re.escape(k) for k in OWN_KERNELS)
                  + r")(?![A-Za-z0-9])")


def own_kernels(names):
    """The names in `names` (a profiler's CUDA kernel events) that are dgsnet's own kernels."""
    return [n for n in names if _OWN.search(n)]


def _profiled(fn, device):
    """(fn's result, the names of the CUDA kernels that one call of fn launched: torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = fn()
        synchronize(device)
    return result, [e.name for e in prof.events() if e.device_type.name == "CUDA"]


def count_launches(backend, feats, labels, heads, device):
    """(forward, backward): how many of dgsnet's own kernels one forward and one backward of the
    objective launch, each profiled alone (after a warm-up step); (None, None) where it cannot
    count (no CUDA device, a profiler that fails)."""
    if device.type != "cuda":
        return None, None
    f, f_t, t = feats

    def forward():
        return dgs_objective(f, f_t, t, labels, *heads, backend=backend, check_labels=False)

    def backward(out):
        out.total.backward()
        f.grad = None
        for h in heads:
            h.zero_grad(set_to_none=True)

    try:
        backward(forward())  # warm-up: compiles and caches stay out of the counts
        out, fwd = _profiled(forward, device)
        _, bwd = _profiled(lambda: backward(out), device)
        return len(own_kernels(fwd)), len(own_kernels(bwd))
    except Exception as exc:  # a profiler that cannot run here must not lose the timings
        print(f"launch count unavailable: {exc}", flush=True)
        return None, None


def targets(rows, overhead, backends):
    """The issue's targets, each with the value measured and whether it is met."""
    def row(batch, dim):
        return next((r for r in rows if r["B"] == batch and r["D"] == dim), None)

    def speedup(r, b):  # the paired ratio where it was measured, else the rounds' one
        return r.get(f"{b}_speedup_paired", r.get(f"{b}_speedup"))

    found = {}
    r = row(256, 768)
    if r and "cpp_speedup" in r:
        goal = SPEEDUP_GOAL["cpp"]
        found["cpp_speedup_B256_D768"] = {"value": speedup(r, "cpp"), "target": f">= {goal}",
                                          "met": speedup(r, "cpp") >= goal}
    for o in overhead:
        if o["backend"] != "reference":
            found[f"{o['backend']}_fwd_us_B1"] = {"value": o["fwd_us"], "target": "< 40",
                                                 "met": o["fwd_us"] < 40}
    for b in backends:
        if b not in ("cuda", "triton"):
            continue
        r = row(32, 768)
        if r and f"{b}_speedup" in r:
            goal = SPEEDUP_GOAL[b]
            found[f"{b}_speedup_B32_D768"] = {"value": speedup(r, b), "target": f">= {goal}",
                                             "met": speedup(r, b) >= goal}
        r = row(4096, 768)
        if r and f"{b}_x_copy_floor" in r:
            found[f"{b}_x_copy_floor_B4096_D768"] = {"value": r[f"{b}_x_copy_floor"],
                                                    "target": "<= 2",
                                                    "met": r[f"{b}_x_copy_floor"] <= 2}
        r = row(32, 768)
        for way in ("fwd", "bwd"):  # dgsnet's own kernels, each direction alone
            if r and r.get(f"{b}_{way}_launches") is not None:
                n = r[f"{b}_{way}_launches"]  # 0: the name filter missed them, not a success
                found[f"{b}_{way}_launches_B32_D768"] = {"value": n, "target": "1 or 2",
                                                         "met": 1 <= n <= 2}
    return found


def copy_floor_fn(batch, dim, device, dtype):
    n = (5 * batch * dim + 1) // 2  # a copy reads n and writes n elements
    src = torch.empty(n, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def main(argv=None):
    p = base_parser(__doc__.splitlines()[0])
    add_threads_option(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    set_threads(args.threads, device)
    dtype = getattr(torch, args.dtype)
    batches, dims = ((1, 32), (512,)) if args.quick else (BATCHES, DIMS)
    repeats = args.repeats or (3 if args.quick else 10)
    backends = [b for b in available_backends(device)
                if b != "reference" and not (b == "triton" and device.type == "cpu")]
    # One specialised graph per shape (dynamic shapes ran slower on the CPU), all kept.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = None if args.no_compile else torch.compile(reference_total, dynamic=False)

    rows = []
    for batch in batches:
        for dim in dims:
            feats, labels, heads = make_problem(batch, dim, device, dtype)
            fns = {"reference": step_fn("reference", feats, labels, heads)}
            if compiled is not None:
                fns["compiled_reference"] = compiled_step_fn(compiled, feats, labels, heads)
            for b in backends:
                fns[b] = step_fn(b, feats, labels, heads)
            if device.type == "cuda":
                fns["copy_floor"] = copy_floor_fn(batch, dim, device, dtype)
            times = interleaved_times(fns, device, repeats, rounds=1 if args.quick else 5)
            row = {"B": batch, "D": dim}
            for name, sec in times.items():
                row[f"{name}_us"] = sec * 1e6
            for name, sec in times.items():
                if name != "reference":
                    row[f"{name}_speedup"] = times["reference"] / sec
            for name in backends:
                if TARGET_SHAPE.get(name) == (batch, dim):
                    paired = paired_ratio(fns[name], fns["reference"], device,
                                          11 if args.quick else PAIRS, calls=PAIR_CALLS, warm=True)
                    row[f"{name}_speedup_paired"] = paired["median"]
                    row[f"{name}_speedup_paired_q1"], row[f"{name}_speedup_paired_q3"] = (
                        paired["q1"], paired["q3"])
                    row[f"{name}_speedup_pairs"] = paired["pairs"]
            if device.type == "cuda":
                for name, fn in fns.items():
                    row[f"{name}_peak_MiB"] = peak_memory_bytes(fn, device) / 2 ** 20
                for name in backends:
                    row[f"{name}_x_copy_floor"] = times[name] / times["copy_floor"]
                if (batch, dim) == (32, 768):
                    for name in backends:
                        fwd, bwd = count_launches(name, feats, labels, heads, device)
                        row[f"{name}_fwd_launches"], row[f"{name}_bwd_launches"] = fwd, bwd
            rows.append(row)
            print(f"B={batch} D={dim}: " + ", ".join(f"{k}={v * 1e6:.1f}us" for k, v in times.items()),
                  flush=True)

    overhead = call_overhead(["reference", *backends], device, dtype, repeats * 20,
                             1 if args.quick else 5)
    names = [n for n in rows[0] if n.endswith("_speedup")]
    paired_table = markdown_table(
        [{"backend": b, "B": r["B"], "D": r["D"], "speedup_paired": r[f"{b}_speedup_paired"],
          "q1": r[f"{b}_speedup_paired_q1"], "q3": r[f"{b}_speedup_paired_q3"],
          "speedup_rounds": r[f"{b}_speedup"]}
         for r in rows for b in backends if f"{b}_speedup_paired" in r],
        ["backend", "B", "D", "speedup_paired", "q1", "q3", "speedup_rounds"])
    floors = [n for n in rows[0] if n.endswith("_x_copy_floor") or n.endswith("_launches")]
    table = markdown_table(rows, ["B", "D", "reference_us", *names, *floors])
    overhead_table = markdown_table(overhead, ["backend", "B", "D", "fwd_us", "fwd_us_best",
                                               "fwd_bwd_us", "autograd_floor_us", "own_us"])
    goals = targets(rows, overhead, backends)
    goal_lines = "\n".join(f"- {k}: {v['value']:.4g} (target {v['target']}: "
                            f"{'met' if v['met'] else 'NOT met'})" for k, v in goals.items())
    dev = device_name(device)
    print(f"\nfused DGS objective, forward + backward, {args.dtype}, on {dev}: "
          f"reference time and speedup over it (x)\n")
    print(table)
    print(f"\nspeedup at the target shapes, {PAIRS if not args.quick else 11} step-by-step pairs "
          f"(median, quartiles)\n\n{paired_table}")
    print(f"\ncall overhead at B=1 (us; own = fwd_bwd - autograd floor)\n\n{overhead_table}")
    print(f"\ntargets\n{goal_lines}")
    out_dir = results_dir(args, device)
    path = write_results(out_dir, "bench_surgery", rows,
                         {"device": dev, "dtype": args.dtype, "quick": args.quick,
                          "threads": torch.get_num_threads(), "backends": list(fns),
                          "definition": "time of dgs_objective + backward of total; "
                                        "speedup = reference / backend",
                          "call_overhead": overhead, "targets": goals})
    with open(os.path.join(out_dir, "bench_surgery.md"), "w") as fh:
        fh.write(f"fused DGS objective fwd+bwd, {args.dtype}, {dev}\n\n{table}\n\n"
                 f"speedup at the target shapes, step-by-step pairs (median, quartiles)\n\n"
                 f"{paired_table}\n\n"
                 f"call overhead at B=1 (us; own = fwd_bwd - autograd floor)\n\n"
                 f"{overhead_table}\n\ntargets\n\n{goal_lines}\n")
    plot(rows, names, os.path.join(out_dir, "bench_surgery.png"), dev)
    print(f"\nwrote {path}")


def plot(rows, names, path, dev):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["D"] for r in rows})
    fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 3.8), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        sub = [r for r in rows if r["D"] == dim]
        for name in names:
            ax.plot([r["B"] for r in sub], [r[name] for r in sub], marker="o",
                    label=name.replace("_speedup", ""))
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"D={dim}")
        ax.set_xlabel("batch B")
        ax.set_ylabel("speedup over reference (x)")
        ax.legend(fontsize=8)
    fig.suptitle(f"DGS objective fwd+bwd on {dev}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
