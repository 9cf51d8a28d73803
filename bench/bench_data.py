"""Data pipeline throughput per core, and vectorised patch selection against the per-patch loop.

For square photos of 256, 512 and 1024 px (skimage's astronaut, coffee and
chelsea, resized, stored as JPEG quality 95), on one thread:
  select_patches_loop   the definition, one patch at a time (baseline of the ratio)
  select_patches        the vectorised selection (batched float32 DFT, exact re-scoring near ties)
  pipeline              decode (dgsnet.image.decode.load_rgb) + select_patches + normalise:
                        images/s per core, what one DataLoader worker delivers
Both selections are checked to give identical tiles before timing.

    python bench/bench_data.py [--quick] [--sizes 256,512,1024] [--repeats ROUNDS]
"""
from __future__ import annotations

import os

# One thread everywhere: the numbers are per core (DataLoader workers run one image at a time).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import io  # noqa: E402

import numpy as np  # noqa: E402

from common import base_parser, markdown_table, resolve_device, results_dir, time_call, write_results  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")


def photo_jpegs(size: int) -> list[bytes]:
    """Real photos resized to size x size, JPEG-encoded (the common on-disk form of test sets)."""
    import skimage.data
    from PIL import Image

    out = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((size, size), Image.BICUBIC)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=95)
        out.append(buffer.getvalue())
    return out


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,1024", help="square image sides, comma-separated")
    args = parser.parse_args(argv)
    import torch

    from dgsnet.image.decode import load_rgb
    from dgsnet.image.preprocess import normalize, select_patches, select_patches_loop

    torch.set_num_threads(1)
    device = resolve_device("cpu")  # the data pipeline runs on the CPU whatever the accelerator
    sizes = [256] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = args.repeats or (2 if args.quick else 7)
    rows = []
    for size in sizes:
        files = photo_jpegs(size)
        images = [load_rgb(data) for data in files]
        for image in images:
            if not np.array_equal(select_patches(image), select_patches_loop(image)):
                raise SystemExit(f"select_patches and the per-patch loop disagree on a {size}px photo")
        competitors = {
            "loop": lambda: [select_patches_loop(x) for x in images],
            "vectorised": lambda: [select_patches(x) for x in images],
            "decode": lambda: [load_rgb(d) for d in files],
            "pipeline": lambda: [normalize(select_patches(load_rgb(d), rng=i)) for i, d in enumerate(files)],
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
    print(f"device: {device} ({os.cpu_count()} cores, 1 thread used); photos: {', '.join(PHOTOS)} as JPEG q95")
    print(markdown_table(rows))
    path = write_results(results_dir(args, device), "bench_data" + ("_quick" if args.quick else ""), rows,
                         {"threads": 1, "photos": list(PHOTOS), "baseline": "select_patches_loop",
                          "identical_tiles": True, "rounds": rounds})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
