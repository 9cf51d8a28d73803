"""Peak memory of decoding plus patch selection, per decoded pixel: what dgsnet.image.decode.BYTES_PER_PIXEL is.

Each measurement runs in a fresh child process, resets its peak resident set after the
imports (/proc/self/clear_refs) and reads the peak (VmHWM, else ru_maxrss) after the work;
the increase over the decoded pixels is the bytes per pixel. Cases:

- single: load_rgb + select_patches of one image, flat (all zero) and noisy, PNG
  and JPEG, at a few sizes, the 100 MP all-zero PNG included;
- threads: two 100 MP PNGs on a pool of 1 and 2 threads, without a pixel budget and
  with a 100 MP one (the second image then waits: the peak stays at one image);
- workers: the 100 MP PNG through FolderDataset on a DataLoader with 1 and 2 worker
  processes (each worker's own peak increase, summed: they decode at the same time).

  python scripts/decode_memory.py            # writes bench/results/<cpu>/decode_memory.json
  python scripts/decode_memory.py --quick    # small sizes only, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MP = 1_000_000


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))
    except (OSError, StopIteration, ValueError):
        return None


def maxrss() -> int:
    """This process's peak resident set so far, in bytes.

    Linux's VmHWM where there is one: ru_maxrss also keeps the peak of the process image an exec
    replaced (the forked parent's), so a child of a large parent reads the parent's size.
    """
    peak = _status("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> int:
    """Start the peak afresh and return the baseline (bytes): the current resident set where Linux
    lets the peak be reset (/proc/self/clear_refs), else the peak so far (then small images under
    the import-time peak read as 0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return maxrss()
    current = _status("VmRSS")
    return current if current is not None else maxrss()


# --------------------------------------------------------------------- children

def child_single(path: str) -> dict:
    from dgsnet.image.decode import load_rgb
    from dgsnet.image.preprocess import select_patches

    select_patches(np.zeros((224, 224, 3), np.uint8))  # warm numpy / BLAS before the baseline
    base = reset_peak()
    start = time.perf_counter()
    rgb = load_rgb(path)
    after_decode = maxrss()
    select_patches(rgb)
    peak = maxrss()
    pixels = rgb.shape[0] * rgb.shape[1]
    return {"pixels": pixels, "decode_peak_mb": (after_decode - base) / MP, "peak_mb": (peak - base) / MP,
            "bytes_per_pixel": (peak - base) / pixels, "seconds": time.perf_counter() - start}


def child_threads(paths: list[str], threads: int, budget_mp: float | None) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from dgsnet.image.decode import PixelBudget, decoded
    from dgsnet.image.preprocess import select_patches

    select_patches(np.zeros((224, 224, 3), np.uint8))
    budget = PixelBudget(int(budget_mp * MP), "--budget") if budget_mp else None

    def work(path):
        with decoded(path, budget=budget) as rgb:  # held through patch selection, as predict does
            select_patches(rgb)
            return rgb.shape[0] * rgb.shape[1]

    base = reset_peak()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        pixels = list(pool.map(work, paths))
    peak = maxrss()
    return {"pixels_each": pixels[0], "images": len(paths), "peak_mb": (peak - base) / MP,
            "peak_reserved_mp": budget.peak / MP if budget else None, "seconds": time.perf_counter() - start}


def child_workers(paths: list[str], workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from dgsnet.data import FolderDataset, Sample
    from dgsnet.image.preprocess import select_patches

    class Probe(Dataset):
        """Each item: (worker id, that worker's peak increase so far) around FolderDataset.tile."""

        def __init__(self, inner):
            self.inner, self.base = inner, None

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            if self.base is None:  # first item in this worker: its baseline
                select_patches(np.zeros((224, 224, 3), np.uint8))
                self.base = reset_peak()
            self.inner.tile(i)
            info = torch.utils.data.get_worker_info()
            return (info.id if info else 0), maxrss() - self.base

    data = FolderDataset([Sample(p, 0, "") for p in paths], ["x"] * len(paths), pixel_budget="off")
    start = time.perf_counter()
    per_worker: dict = {}
    for worker, grown in DataLoader(Probe(data), batch_size=None, num_workers=workers):
        per_worker[int(worker)] = max(per_worker.get(int(worker), 0), int(grown))
    return {"workers": workers, "images": len(paths), "per_worker_peak_mb": [v / MP for v in per_worker.values()],
            "sum_peak_mb": sum(per_worker.values()) / MP, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------- parent

def make_image(folder: str, kind: str, fmt: str, megapixels: float) -> str:
    from PIL import Image

    side = int(round((megapixels * MP) ** 0.5))
    path = os.path.join(folder, f"{kind}_{megapixels:g}mp.{fmt.lower()}")
    if not os.path.exists(path):
        if kind == "flat":
            pixels = np.zeros((side, side, 3), np.uint8)
        else:
            pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        options = {"compress_level": 1} if fmt == "PNG" else {"quality": 90}
        Image.fromarray(pixels).save(path, format=fmt, **options)
    return path


def run_child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes only (seconds)")
    p.add_argument("--out", default=None, help="JSON file (default bench/results/<cpu>/decode_memory.json)")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        mode, rest = args.child[0], args.child[1:]
        if mode == "single":
            result = child_single(rest[0])
        elif mode == "threads":
            budget = float(rest[1]) if rest[1] != "none" else None
            result = child_threads(rest[2:], int(rest[0]), budget)
        else:
            result = child_workers(rest[1:], int(rest[0]))
        print(json.dumps(result))
        return 0

    from dgsnet.image.decode import BYTES_PER_PIXEL

    sizes = {"flat": [1, 4], "noisy": [1, 4]} if args.quick else {"flat": [1, 16, 100], "noisy": [1, 4, 16, 64]}
    big = 4 if args.quick else 100
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind, megapixels in sizes.items():
            for fmt in ("PNG", "JPEG"):
                for mp in megapixels:
                    if kind == "flat" and fmt == "JPEG" and mp > 16:
                        continue
                    path = make_image(folder, kind, fmt, mp)
                    row = {"case": "single", "image": kind, "format": fmt, "megapixels": mp,
                           "file_mb": os.path.getsize(path) / MP, **run_child("single", path)}
                    rows.append(row)
                    print(f"{kind:5s} {fmt:4s} {mp:5g} MP: peak {row['peak_mb']:8.1f} MB "
                          f"({row['bytes_per_pixel']:.2f} B/px; decode alone {row['decode_peak_mb']:.1f} MB)",
                          flush=True)
        flat = make_image(folder, "flat", "PNG", big)
        twin = os.path.join(folder, "flat_twin.png")
        os.link(flat, twin)
        for threads, budget in ((1, "none"), (2, "none"), (2, str(big))):
            row = {"case": "threads", "threads": threads, "budget_mp": budget, "megapixels": big,
                   **run_child("threads", str(threads), budget, flat, twin)}
            rows.append(row)
            print(f"2 x {big} MP flat PNG on {threads} thread(s), budget {budget}: peak {row['peak_mb']:.1f} MB",
                  flush=True)
        for workers in (1, 2):
            row = {"case": "workers", "megapixels": big, **run_child("workers", str(workers), flat, twin)}
            rows.append(row)
            print(f"2 x {big} MP flat PNG on {workers} DataLoader worker(s): sum of worker peaks "
                  f"{row['sum_peak_mb']:.1f} MB", flush=True)
    singles = [r for r in rows if r["case"] == "single"]
    large = max(r["bytes_per_pixel"] for r in singles if r["megapixels"] >= min(64, big))
    medium = max(r["bytes_per_pixel"] for r in singles if r["megapixels"] >= 4)
    result = {"benchmark": "decode_memory", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cpu": machine(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "numpy": np.__version__, "quick": args.quick,
              "measure": "peak resident set (VmHWM) of a fresh child process over its resident set after "
                         "imports, the peak reset through /proc/self/clear_refs",
              "max_bytes_per_pixel_64mp_up": large, "max_bytes_per_pixel_4mp_up": medium,
              "note": "peak ~= 10 B/px (decode) or 3 B/px + up to ~0.24 GB (exact re-scoring of tied "
                      "entropies, flat images), whichever is larger",
              "BYTES_PER_PIXEL_in_use": BYTES_PER_PIXEL,
              "rows": rows}
    out = args.out
    if out is None:
        label = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{machine()} x{os.cpu_count()}").strip("-").lower()
        out = os.path.join(ROOT, "bench", "results", label, "decode_memory.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"max {large:.2f} bytes per decoded pixel at {min(64, big)} MP and up ({medium:.2f} from 4 MP); "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
