"""Per-layer (parameter-space) surgery: the fused multi-tensor projection, and
the training-step cost of each surgery mode.

Part 1, projection of LoRA gradient lists (q, k, v of every block, rank r:
A is r x width, B is width x r) for ViT-B/16 (12 blocks, width 768) and
ViT-L/14 (24 blocks, width 1024) shapes. Competitors, same inputs, one run:
  loop      the per-tensor reference (dgsnet.surgery.reference.project_params_;
            the baseline of the ratios)
  foreach   torch._foreach_* ops: products and squared norms as foreach ops, the
            per-tensor sums by one index_add over their concatenation, the
            update as foreach ops
  fused     dgsnet.surgery.project_params_ with the device's fastest backend
            (cpp on the CPU, cuda on a GPU), and triton on a GPU
Part 2, one stage-2 training step (student forward, frozen teacher forward,
dgs_objective, backward, Adam) of a random-initialised small open_clip backbone
per surgery mode (none, feature, layer, both; u refreshed every step, the
worst case), as a ratio to mode none.

    python bench/bench_layerwise.py [--quick] [--device cpu|cuda] [--model dgs-small]
"""
from __future__ import annotations

import os

import torch

from common import (add_threads_option, base_parser, device_name, dgs_step, interleaved_times,
                    markdown_table, resolve_device, results_dir, set_threads, write_results)
from dgsnet.surgery import available_backends, project_params_, reference

SHAPES = {"ViT-B/16": (12, 768), "ViT-L/14": (24, 1024)}


def lora_lists(blocks, width, rank, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [s for _ in range(blocks) for _ in ("q", "k", "v") for s in ((rank, width), (width, rank))]
    grads = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    dirs = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    return grads, dirs


def foreach_project_(grads, dirs, eps, seg_ids):
    """The same projection from torch._foreach_* ops (no Python loop over tensors)."""
    prods = torch._foreach_mul(grads, dirs)
    squares = torch._foreach_mul(dirs, dirs)
    n = len(grads)
    flat = torch.cat([x.reshape(-1) for x in prods + squares])
    sums = torch.zeros(2 * n, dtype=flat.dtype, device=flat.device).index_add_(0, seg_ids, flat)
    coef = sums[:n] / (sums[n:] + eps)
    torch._foreach_sub_(grads, torch._foreach_mul(dirs, list(coef.unbind())))


def bench_projection(device, dtype, rank, repeats, quick):
    rows = []
    shapes = {"ViT-B/16": SHAPES["ViT-B/16"]} if quick else SHAPES
    fused = [b for b in available_backends(device)
             if b != "reference" and not (b == "triton" and device.type == "cpu")]
    for name, (blocks, width) in shapes.items():
        grads, dirs = lora_lists(blocks, width, rank, device, dtype)
        sizes = [g.numel() for g in grads]
        seg_ids = torch.repeat_interleave(torch.arange(2 * len(grads), device=device),
                                          torch.tensor(sizes + sizes, device=device))
        work = [g.clone() for g in grads]
        fns = {"loop": lambda: reference.project_params_(work, dirs, 1e-12),
               "foreach": lambda: foreach_project_(work, dirs, 1e-12, seg_ids)}
        for b in fused:
            fns[f"fused_{b}"] = (lambda b=b: project_params_(work, dirs, eps=1e-12, backend=b))
        times = interleaved_times(fns, device, repeats, rounds=1 if quick else 5)
        row = {"model": name, "tensors": len(grads), "elements": sum(sizes)}
        row.update({f"{k}_us": v * 1e6 for k, v in times.items()})
        row.update({f"{k}_speedup": times["loop"] / v for k, v in times.items() if k != "loop"})
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{k}={v * 1e6:.1f}us" for k, v in times.items()), flush=True)
    return rows


def bench_training_step(device, model_name, batch, repeats, quick):
    from dgsnet.models import BackboneSpec, DGSNetModel, LoRAConfig

    torch.manual_seed(0)
    model = DGSNetModel(BackboneSpec(model_name, None), LoRAConfig()).to(device)
    model.set_stage(2)
    model.train()
    opt = torch.optim.Adam(model.stage_parameters(2), lr=1e-4)
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 2, (batch,), device=device).float()
    text = torch.randn(batch, model.dim, device=device)

    modes = ("none", "feature", "layer", "both")
    steps = {m: dgs_step(model, opt, images, labels, text, m) for m in modes}
    times = interleaved_times(steps, device, repeats, rounds=1 if quick else 5)
    rows = [{"mode": m, "step_ms": times[m] * 1e3, "relative_to_none": times[m] / times["none"]}
            for m in modes]
    for r in rows:
        print(f"mode {r['mode']}: {r['step_ms']:.1f} ms ({r['relative_to_none']:.3f}x none)",
              flush=True)
    return rows, sum(p.numel() for p in model.lora_parameters())


def main(argv=None):
    p = base_parser(__doc__.splitlines()[0])
    add_threads_option(p)
    p.add_argument("--rank", type=int, default=6)
    p.add_argument("--model", default="dgs-small", help="open_clip backbone for the step timing")
    p.add_argument("--batch", type=int, default=8, help="images per training step")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    set_threads(args.threads, device)
    repeats = args.repeats or (3 if args.quick else 20)
    dev = device_name(device)

    proj = bench_projection(device, torch.float32, args.rank, repeats, args.quick)
    names = [k for k in proj[0] if k.endswith("_speedup")]
    proj_table = markdown_table(proj, ["model", "tensors", "elements", "loop_us", *names])
    print(f"\nprojection of LoRA gradient lists (rank {args.rank}, float32) on {dev}: "
          "loop time and speedup over it (x)\n")
    print(proj_table)

    step_rows, lora_numel = bench_training_step(device, args.model, 2 if args.quick else args.batch,
                                                max(1, repeats // 2), args.quick)
    step_table = markdown_table(step_rows)
    print(f"\ntraining step of {args.model} (batch {args.batch}, {lora_numel:,} LoRA parameters) "
          f"by surgery mode on {dev}\n")
    print(step_table)

    out_dir = results_dir(args, device)
    rows = [{"part": "projection", **r} for r in proj] + [{"part": "train_step", **r} for r in step_rows]
    path = write_results(out_dir, "bench_layerwise", rows,
                         {"device": dev, "rank": args.rank, "model": args.model,
                          "batch": args.batch, "quick": args.quick,
                          "threads": torch.get_num_threads()})
    with open(os.path.join(out_dir, "bench_layerwise.md"), "w") as fh:
        fh.write(f"projection, {dev}\n\n{proj_table}\n\ntraining step by mode, {args.model}, "
                 f"{dev}\n\n{step_table}\n")
    plot(proj, names, step_rows, os.path.join(out_dir, "bench_layerwise.png"), dev, args.model)
    print(f"\nwrote {path}")


def plot(proj, names, step_rows, path, dev, model_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        a.bar([k + i * width for k in range(len(proj))], [r[name] for r in proj], width,
              label=name.replace("_speedup", ""))
    a.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(proj))])
    a.set_xticklabels([r["model"] for r in proj])
    a.axhline(1.0, color="grey", lw=0.8, ls="--")
    a.set_ylabel("speedup over per-tensor loop (x)")
    a.set_title("LoRA gradient projection")
    a.legend(fontsize=8)
    b.bar([r["mode"] for r in step_rows], [r["relative_to_none"] for r in step_rows])
    b.axhline(1.0, color="grey", lw=0.8, ls="--")
    b.set_ylabel("step time / mode none")
    b.set_title(f"training step, {model_name}")
    fig.suptitle(dev)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
