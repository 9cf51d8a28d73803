"""What the inference patch layout changes: raster vs the published shuffled layout, side by side.

Scores every image of a test root with each run directory twice (dgsnet predict's path: raster
order, then --patch-order shuffle) and reports, per run: mean and max |probability change|, the
fraction of images whose label flips, and accuracy / AP per layout.

  python scripts/patch_order_effect.py --data runs/demo/data/test \
      --pretrained runs/demo/prior/prior.safetensors runs/demo/seed-0/teacher runs/demo/seed-0/dgs-*

(--pretrained confirms a backbone weights file the runs name outside their folders: the demo's prior.)
The committed results were measured on the demo before it had a prior (random-initialised CLIP).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _scores(run_dir: str, data: str, order: str, pretrained: str | None) -> dict[str, float]:
    from dgsnet.predict import TorchPredictor

    predictor = TorchPredictor(run_dir, device="cpu", patch_order=order, pretrained=pretrained)
    return {r["path"]: r["probability"] for r in predictor.predict_paths([data], batch_size=32)
            if "probability" in r}


def effect(run_dir: str, data: str, pretrained: str | None = None) -> dict:
    from dgsnet.metrics import subset_metrics

    raster, shuffled = (_scores(run_dir, data, order, pretrained) for order in ("raster", "shuffle"))
    paths = sorted(raster)
    labels = np.array([int(f"{os.sep}1_fake{os.sep}" in p) for p in paths])
    p_r, p_s = np.array([raster[p] for p in paths]), np.array([shuffled[p] for p in paths])
    m_r, m_s = subset_metrics(p_r, labels), subset_metrics(p_s, labels)
    return {"run": run_dir, "images": len(paths), "mean_abs_dprob": float(np.abs(p_r - p_s).mean()),
            "max_abs_dprob": float(np.abs(p_r - p_s).max()),
            "label_flips": float(((p_r >= 0.5) != (p_s >= 0.5)).mean()),
            "acc_raster": m_r["acc"], "acc_shuffle": m_s["acc"], "ap_raster": m_r["ap"], "ap_shuffle": m_s["ap"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished run directories")
    p.add_argument("--data", required=True, help="a folder of {0_real,1_fake} images (searched recursively)")
    p.add_argument("--out", help="also write the rows here as JSON")
    p.add_argument("--pretrained", help="the backbone weights file the runs were trained from, when it is outside "
                   "their folders (the demo's prior/prior.safetensors)")
    args = p.parse_args(argv)
    rows = [effect(run, args.data, args.pretrained) for run in args.runs]
    print("| run | images | mean abs dprob | max abs dprob | label flips | acc raster | acc shuffle | AP raster | AP shuffle |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {os.path.basename(os.path.normpath(r['run']))} | {r['images']} | {r['mean_abs_dprob']:.4f} | "
              f"{r['max_abs_dprob']:.4f} | {100 * r['label_flips']:.1f}% | {100 * r['acc_raster']:.1f} | "
              f"{100 * r['acc_shuffle']:.1f} | {100 * r['ap_raster']:.1f} | {100 * r['ap_shuffle']:.1f} |")
    if args.out:
        from dgsnet.fileio import atomic_write

        atomic_write(args.out, json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
