"""Sanity check of a built demo benchmark: is there a learnable signal, and
does it transfer across families? Uses only the hand-made statistics of
dgsnet.demo.fingerprints (no deep model), so it runs in seconds.

Prints a markdown table: per test family, the ROC AUC of each statistic
(real vs fake) and the accuracy of a nearest-centroid classifier on all the
statistics fitted on train/ (one family) and applied to every family.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

from dgsnet.demo.fingerprints import auc, high_freq_fraction, jpeg_blockiness, median_root_fraction, nyquist_peak

STATISTICS = {"nyquist_peak": nyquist_peak, "high_freq": high_freq_fraction,
              "median_root": median_root_fraction, "jpeg_block": jpeg_blockiness}


def folder_statistics(folder: Path) -> Dict[int, np.ndarray]:
    """label -> (n_images, n_statistics) for <folder>/{0_real,1_fake}/*.png."""
    out = {}
    for label, name in ((0, "0_real"), (1, "1_fake")):
        rows = []
        for path in sorted((folder / name).glob("*.png")):
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"))
            rows.append([fn(img) for fn in STATISTICS.values()])
        out[label] = np.asarray(rows, dtype=np.float64)
    return out


def signal_table(root) -> List[dict]:
    """One row per test family: AUC of each statistic, nearest-centroid accuracy fitted on train/."""
    root = Path(root)
    train = folder_statistics(root / "train")
    both = np.concatenate([train[0], train[1]])
    mu, sd = both.mean(0), both.std(0) + 1e-9
    c0, c1 = ((train[0] - mu) / sd).mean(0), ((train[1] - mu) / sd).mean(0)

    def predict(x):
        z = (x - mu) / sd
        return (np.linalg.norm(z - c1, axis=1) < np.linalg.norm(z - c0, axis=1)).astype(int)

    rows = []
    for family_dir in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        stats = folder_statistics(family_dir)
        row = {"family": family_dir.name}
        for k, name in enumerate(STATISTICS):
            row[f"auc_{name}"] = auc(stats[0][:, k], stats[1][:, k])
        correct = (predict(stats[0]) == 0).sum() + (predict(stats[1]) == 1).sum()
        row["centroid_acc"] = float(correct / (len(stats[0]) + len(stats[1])))
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a benchmark built by dgsnet.demo.build_demo_dataset")
    args = parser.parse_args(argv)
    rows = signal_table(args.root)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(row[k] if isinstance(row[k], str) else f"{row[k]:.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
