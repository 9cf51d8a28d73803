"""`dgsnet demo`: the whole DGS-Net job end to end on the CPU, offline, in minutes.

Builds the synthetic cross-generator benchmark (dgsnet.demo.builder), trains
the teacher probe (stage 1) and one stage-2 detector per surgery mode on the
training family, evaluates every detector on every family, prints the
cross-generator table side by side, and exports the DGS-Net detector to a
verified ONNX file. The backbone is a small random-initialised open_clip
config: the numbers show the pipeline working, not the accuracy of DGS-Net
on real data with pretrained CLIP weights (see REAL_DATA_COMMANDS).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

# method label -> (stage-2 surgery mode or None for the probe alone); layer and both are
# dgsnet's parameter-space extension, in neither the paper nor the published code
METHODS = {
    "probe only": None,
    "plain LoRA": "none",
    "DGS-Net": "feature",
    "layer (dgsnet extension)": "layer",
    "both (dgsnet extension)": "both",
}

REAL_DATA_COMMANDS = """\
On real data with pretrained weights (ViT-L/14, OpenAI; downloads the weights once):
  dgsnet train-teacher --data TRAIN_ROOT --out runs/teacher
  dgsnet train --data TRAIN_ROOT --teacher runs/teacher --out runs/dgsnet
  dgsnet eval --ckpt runs/dgsnet --data TEST_ROOT --perturb "jpeg:95,75 blur:1"
  dgsnet export --ckpt runs/dgsnet --out detector.onnx
  dgsnet-predict detector.onnx images/"""


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seed: int = 0
    model: str = "dgs-small"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    per_class: int = 128  # training images per class
    test_per_class: int = 24  # test images per class and family
    teacher_epochs: int = 10
    epochs: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    teacher_lr: float = 2e-2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1  # the published 0.8 is for ViT-L/14 on 720k images, not 128
    workers: int = 0
    export: bool = True


def _say(text: str = "") -> None:
    print(text, flush=True)


def _train_config(demo: DemoConfig, data: str, **overrides):
    from dgsnet.train import TrainConfig

    cfg = TrainConfig(data=data, model=demo.model, pretrained=None, init_seed=demo.seed, seed=demo.seed,
                      batch_size=demo.batch_size, lr=demo.lr, teacher_lr=demo.teacher_lr,
                      teacher_epochs=demo.teacher_epochs, epochs=demo.epochs, lora_rank=demo.lora_rank,
                      lora_alpha=demo.lora_alpha, lora_dropout=demo.lora_dropout, workers=demo.workers,
                      log_every=2, ckpt_every=1000, device="cpu")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _trained(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "model.json"))


def _interrupted(run_dir: str) -> bool:
    """A stage stopped part-way (Ctrl-C, a kill): it continues from its last checkpoint, as
    `--resume` does, instead of refusing the unfinished run folder."""
    from dgsnet.train.resume import find_resume

    return find_resume(run_dir) is not None


def run_demo(demo: DemoConfig) -> dict:
    """Runs the demo; returns {"acc": rows, "ap": rows, "files": {...}}. Reuses finished stages in `out`."""
    from dgsnet.demo.builder import NOTE, build_demo_dataset  # here: `dgsnet demo --help` needs no scipy
    from dgsnet.evaluate import evaluate_detector
    from dgsnet.predict import load_detector
    from dgsnet.report import markdown_table, plot_subsets, robustness_rows, write_csv, write_json
    from dgsnet.train import train_dgs, train_teacher

    unknown = [m for m in demo.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown demo methods {unknown}: choose from {', '.join(METHODS)}")
    start = time.perf_counter()
    logging.getLogger("dgsnet.data").setLevel(logging.WARNING)
    _say(f"dgsnet demo: {NOTE}")
    _say(f"  backbone {demo.model} (random-initialised open_clip config), CPU, seed {demo.seed}\n")

    info = build_demo_dataset(os.path.join(demo.out, "data"), seed=demo.seed, per_class=demo.per_class,
                              test_per_class=demo.test_per_class)
    counts = info.counts["train"]
    _say(f"[1/4] data: {info.root} ({'built' if info.rebuilt else 'reused'} in {info.seconds:.1f} s): "
         f"train on '{info.train_family}' ({counts['real']} real + {counts['fake']} generated), "
         f"test on {len(info.families)} families")

    teacher_dir = os.path.join(demo.out, "teacher")
    if not _trained(teacher_dir):
        _say("[2/4] stage 1: teacher probe on frozen CLIP features")
        train_teacher(_train_config(demo, info.train_dir, out=teacher_dir), resume=_interrupted(teacher_dir))
    # Said once above; every later model load would repeat the random-initialisation warning.
    logging.getLogger("dgsnet.models.backbone").setLevel(logging.ERROR)
    stage2 = {}
    for method in demo.methods:
        mode = METHODS[method]
        if mode is None:
            continue
        run_dir = os.path.join(demo.out, f"dgs-{mode}")
        stage2[method] = run_dir
        if not _trained(run_dir):
            _say(f"[3/4] stage 2: {method} (surgery={mode})")
            train_dgs(_train_config(demo, info.train_dir, out=run_dir, teacher=teacher_dir, surgery=mode),
                      resume=_interrupted(run_dir))

    _say("[4/4] evaluation on every generator family")
    results = {}
    for method in demo.methods:
        run_dir, head = (teacher_dir, "teacher") if METHODS[method] is None else (stage2[method], "student")
        detector, meta, _ = load_detector(run_dir, head)
        results[method] = evaluate_detector(detector, info.test_dir, norm=meta["norm"],
                                            batch_size=32).results["clean"]
    acc, ap = robustness_rows(results, "acc"), robustness_rows(results, "ap")  # one column per method
    files = {"acc_csv": write_csv(acc, os.path.join(demo.out, "demo_accuracy.csv")),
             "ap_csv": write_csv(ap, os.path.join(demo.out, "demo_ap.csv")),
             "json": write_json({"note": NOTE, "config": vars(demo), "results": results},
                                os.path.join(demo.out, "demo_results.json"))}
    files["png"] = plot_subsets(acc, os.path.join(demo.out, "demo_accuracy.png"), metrics=demo.methods,
                                title="demo: accuracy per generator family and method")
    _say(f"\nCross-generator accuracy (%), trained on '{info.train_family}' only:\n")
    _say(markdown_table(acc, demo.methods, counts=False))
    _say("\nAverage precision (%):\n")
    _say(markdown_table(ap, demo.methods, counts=False))

    if demo.export and "DGS-Net" in stage2:
        files["onnx"] = _export(stage2["DGS-Net"], os.path.join(demo.out, "detector.onnx"))
    _say(f"\nfiles: {json.dumps(files, indent=1)}")
    _say(f"\n{NOTE}\n{REAL_DATA_COMMANDS}")
    _say(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    return {"acc": acc, "ap": ap, "files": files}


def _export(run_dir: str, path: str) -> str:
    from dgsnet_export.exporter import export_checkpoint

    report = export_checkpoint(run_dir, path)
    _say(f"\nexported the DGS-Net detector: {path}")
    _say(f"  verified in onnxruntime against torch: {report.summary()}")
    _say(f"  score images without torch: dgsnet-predict {path} IMAGES_DIR")
    return path
