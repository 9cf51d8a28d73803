"""Data pipeline throughput per core, and vectorised patch selection against the per-patch loop.

For square photos of 256, 512 and 1024 px (skimage's astronaut, coffee and
chelsea, resized, stored as JPEG quality 95), on one thread:
  select_patches_loop   the definition, one patch at a time (baseline of the ratio)
  select_patches        the vectorised selection (batched float32 DFT, exact re-scoring near ties)
  pipeline              decode (dgsnet.image.decode.load_rgb) + select_patches + normalise:
                        images/s per core, what one DataLoader worker delivers
Both selections are checked to give identical tiles before timing.
Patch selection on the device (dgsnet.data.select_device.select_patches_torch, tiles checked
identical to select_patches), a second table:
  torch cpu f64/f32     the 3 photos as one stacked uint8 batch, one thread, timed in the same rounds
  torch cuda float32/float64
                        a batch of 64 on the GPU (uint8 already there; + normalisation), when CUDA is present
  nvjpeg decode         dgsnet.data.select_device.decode_jpeg_batch on the GPU, when CUDA is present
and "CPU cores one GPU needs": GPU step images/s (bench/common.py dgs_step, ViT-L-14 batch 32 bf16,
measured on CUDA; without a GPU an assumed constant, said so in the output) divided by the per-core
images/s of the CPU pipeline, and of decoding alone when selection runs on the GPU (whose float64
selection, the trainer's, then adds its time to the GPU's step). Fields per size:
cores_per_gpu_cpu_selection, cores_per_gpu_device_selection (--quick: 256 px only).

    python bench/bench_data.py [--quick] [--sizes 256,512,1024] [--repeats ROUNDS]
"""
from __future__ import annotations

import os

# One thread everywhere: the numbers are per core (DataLoader workers run one image at a time).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402

from common import (PHOTOS, base_parser, markdown_table, photo_jpegs, resolve_device, results_dir,  # noqa: E402
                    time_call, write_results)


#: Images/s of one stage-2 step on one GPU, used only when no GPU is there to measure it: an
#: assumption (ViT-L/14, batch 32, bf16, an H100-class GPU), not a measurement.
ASSUMED_GPU_STEP_IMAGES_PER_S = 400.0
CUDA_BATCH = 64


def gpu_step_rate(quick: bool) -> tuple[float, str]:
    """(images/s, how it was obtained) of the stage-2 training step on the GPU, or the assumption."""
    import torch

    if not torch.cuda.is_available():
        return ASSUMED_GPU_STEP_IMAGES_PER_S, "assumed (no GPU here)"
    from common import dgs_step

    from dgsnet.models import BackboneSpec, DGSNetModel

    name, batch = ("dgs-small", 8) if quick else ("ViT-L-14", 32)
    model = DGSNetModel(BackboneSpec(model=name, pretrained=None, init_seed=0)).cuda()
    model.set_stage(2)
    model.train()
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    labels = (torch.arange(batch, device="cuda") % 2).float()
    text = model.encode_captions(["a photo"] * batch)
    optimizer = torch.optim.Adam(model.stage_parameters(2), lr=1e-4)
    step = dgs_step(model, optimizer, images, labels, text, "feature", amp=torch.bfloat16)
    seconds = time_call(step, torch.device("cuda"), warmup=3, repeats=10)
    return batch / seconds, f"measured: {name} batch {batch} bf16, feature surgery"


def device_selection_rows(size: int, files: list[bytes], images: list, rounds: int) -> list[dict]:
    """The CUDA rows of the device selection (empty without a GPU); tiles checked against the CPU."""
    import torch

    from dgsnet.data.select_device import decode_jpeg_batch, select_patches_torch

    if not torch.cuda.is_available():
        return []
    cuda = torch.device("cuda")
    batch = torch.from_numpy(np.stack([images[i % len(images)] for i in range(CUDA_BATCH)]))
    on_gpu = batch.to(cuda)
    want = select_patches_torch(batch[: len(images)])
    rows = []
    for dtype in (torch.float32, torch.float64):
        if not torch.equal(select_patches_torch(on_gpu, entropy_dtype=dtype)[: len(images)].cpu(), want):
            raise SystemExit(f"CUDA patch selection ({dtype}) differs from the CPU one on a {size}px photo")
        seconds = float(np.median([time_call(lambda: select_patches_torch(on_gpu, entropy_dtype=dtype,
                                                                          normalize="imagenet"), cuda)
                                   for _ in range(rounds)]))
        rows.append({"size": size, "path": f"torch cuda {str(dtype)[6:]} + normalise", "batch": CUDA_BATCH,
                     "images_per_s": CUDA_BATCH / seconds})
    jpegs = [files[i % len(files)] for i in range(CUDA_BATCH)]
    seconds = float(np.median([time_call(lambda: decode_jpeg_batch(jpegs, cuda), cuda) for _ in range(rounds)]))
    rows.append({"size": size, "path": "nvjpeg decode", "batch": CUDA_BATCH, "images_per_s": CUDA_BATCH / seconds})
    return rows


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,1024", help="square image sides, comma-separated")
    args = parser.parse_args(argv)
    import torch

    from dgsnet.image.decode import load_rgb
    from dgsnet.data.select_device import select_patches_torch
    from dgsnet.image.preprocess import normalize, select_patches, select_patches_loop

    torch.set_num_threads(1)
    device = resolve_device("cpu")  # the data pipeline runs on the CPU whatever the accelerator
    sizes = [256] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = args.repeats or (2 if args.quick else 7)
    rows, selection_rows = [], []
    for size in sizes:
        files = photo_jpegs(size)
        images = [load_rgb(data) for data in files]
        for image in images:
            if not np.array_equal(select_patches(image), select_patches_loop(image)):
                raise SystemExit(f"select_patches and the per-patch loop disagree on a {size}px photo")
        stacked = torch.from_numpy(np.stack(images))
        if not all(np.array_equal(t.permute(1, 2, 0).numpy(), select_patches(x))
                   for x, t in zip(images, select_patches_torch(stacked))):
            raise SystemExit(f"select_patches_torch and select_patches disagree on a {size}px photo")
        competitors = {
            "loop": lambda: [select_patches_loop(x) for x in images],
            "vectorised": lambda: [select_patches(x) for x in images],
            "decode": lambda: [load_rgb(d) for d in files],
            "pipeline": lambda: [normalize(select_patches(load_rgb(d), rng=i)) for i, d in enumerate(files)],
            "torch_cpu_f64": lambda: select_patches_torch(stacked, entropy_dtype=torch.float64),
            "torch_cpu_f32": lambda: select_patches_torch(stacked, entropy_dtype=torch.float32),
        }
        # Rounds alternate the competitors, so a busy (shared) machine slows all of them alike;
        # each number is the median over rounds, the speed-up the median of per-round ratios.
        times = {name: [] for name in competitors}
        for _ in range(rounds):
            for name, fn in competitors.items():
                times[name].append(time_call(fn, device, warmup=1, repeats=3) / len(files))
        ratios = [loop / fast for loop, fast in zip(times["loop"], times["vectorised"])]
        med = {name: float(np.median(values)) for name, values in times.items()}
        rows.append({"size": size, "loop_ms": 1e3 * med["loop"], "vectorised_ms": 1e3 * med["vectorised"],
                     "speedup": float(np.median(ratios)), "speedup_min": min(ratios), "speedup_max": max(ratios),
                     "decode_ms": 1e3 * med["decode"], "pipeline_ms": 1e3 * med["pipeline"],
                     "pipeline_images_per_s_per_core": 1.0 / med["pipeline"]})
        for name in ("vectorised", "torch_cpu_f64", "torch_cpu_f32"):
            label = "numpy select_patches" if name == "vectorised" else name.replace("_", " ")
            selection_rows.append({"size": size, "path": label,
                                   "batch": len(files), "images_per_s": 1.0 / med[name],
                                   "x_numpy": med["vectorised"] / med[name]})
        selection_rows += device_selection_rows(size, files, images, rounds)
        rows[-1]["decode_images_per_s_per_core"] = 1.0 / med["decode"]
    print(f"device: {device} ({os.cpu_count()} cores, 1 thread used); photos: {', '.join(PHOTOS)} as JPEG q95")
    print(markdown_table(rows))
    print("\npatch selection per path (images/s; cpu rows one thread, x_numpy measured in the same rounds):")
    print(markdown_table(selection_rows, ["size", "path", "batch", "images_per_s", "x_numpy"]))
    step_rate, step_how = gpu_step_rate(args.quick)
    print(f"\nCPU cores one GPU needs (GPU step {step_rate:.0f} images/s, {step_how}):")
    for row in rows:
        # the trainer's device selection: float64 entropies (dgsnet.train.trainer._entropy_dtype)
        gpu_select = [r["images_per_s"] for r in selection_rows
                      if r["size"] == row["size"] and r["path"].startswith("torch cuda float64")]
        # With selection on the GPU the CPU only decodes, and the GPU spends the selection's time too.
        rate = step_rate if not gpu_select else 1.0 / (1.0 / step_rate + 1.0 / gpu_select[0])
        row["cores_per_gpu_cpu_selection"] = step_rate / row["pipeline_images_per_s_per_core"]
        row["cores_per_gpu_device_selection"] = rate / row["decode_images_per_s_per_core"]
        print(f"  {row['size']} px: {row['cores_per_gpu_cpu_selection']:.1f} cores with selection on the CPU, "
              f"{row['cores_per_gpu_device_selection']:.1f} with it on the GPU (decoding only)")
    path = write_results(results_dir(args, device), "bench_data" + ("_quick" if args.quick else ""), rows,
                         {"threads": 1, "photos": list(PHOTOS), "baseline": "select_patches_loop",
                          "identical_tiles": True, "rounds": rounds, "selection_rows": selection_rows,
                          "gpu_step_images_per_s": step_rate, "gpu_step": step_how})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
