"""`dgsnet demo`: what DGS-Net is for, end to end on the CPU, offline, in minutes.

Builds the synthetic cross-generator benchmark (dgsnet.demo.builder) and a
pretrained stand-in for CLIP (dgsnet.demo.prior: a small open_clip model
trained contrastively on degraded photos captioned with what was done to
them). On top of that prior, for each of several seeds, it trains on one
generator family: the probe on the frozen prior (stage 1, no fine-tuning),
plain LoRA, DGS-Net and dgsnet's per-layer variants (stage 2), plus a probe
on a random-initialised encoder (no prior); then it evaluates every detector
on every family and prints the table (mean and spread over seeds) with a
reading written from the numbers: does DGS-Net keep more of the prior's
unseen-family accuracy than plain LoRA, and by more than the seed spread?
Finally it exports one DGS-Net detector to a verified ONNX file. The data are
synthetic: the numbers test the method's claim in miniature, they are not
the accuracy of DGS-Net on real data with CLIP weights (REAL_DATA_COMMANDS).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace

from dgsnet.demo.prior import PriorConfig

# method label -> what it is: "random" the probe on a random-initialised encoder (no prior), None the
# probe on the frozen prior (stage 1, no fine-tuning), else the stage-2 surgery mode. layer and both are
# dgsnet's parameter-space extension, in neither the paper nor the published code.
METHODS = {
    "no prior (random encoder + probe)": "random",
    "prior + probe (no fine-tuning)": None,
    "plain LoRA": "none",
    "DGS-Net": "feature",
    "layer (dgsnet extension)": "layer",
    "both (dgsnet extension)": "both",
}
RANDOM, PRIOR, PLAIN, DGS = list(METHODS)[:4]

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
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    data_seed: int = 0
    model: str = "dgs-tiny"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    per_class: int = 96  # training images per class
    test_per_class: int = 32  # test images per class and family
    teacher_epochs: int = 6
    epochs: int = 4
    batch_size: int = 16
    lr: float = 2e-3
    teacher_lr: float = 2e-2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1  # the published 0.8 is for ViT-L/14 on 720k images, not 96
    workers: int = 0
    prior: PriorConfig = field(default_factory=PriorConfig)
    export: bool = True


def _say(text: str = "") -> None:
    print(text, flush=True)


def _train_config(demo: DemoConfig, data: str, seed: int, pretrained: str | None, **overrides):
    from dgsnet.train import TrainConfig

    cfg = TrainConfig(data=data, model=demo.model, pretrained=pretrained, init_seed=seed, seed=seed,
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


def _check(demo: DemoConfig) -> None:
    unknown = [m for m in demo.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown demo methods {unknown}: choose from {', '.join(METHODS)}")
    needed = [m for m in (PRIOR, PLAIN, DGS) if m not in demo.methods]
    if needed:
        raise ValueError(f"the demo compares {PRIOR!r}, {PLAIN!r} and {DGS!r}: keep {needed} in --methods")
    if not demo.seeds or len(set(demo.seeds)) != len(demo.seeds):
        raise ValueError(f"seeds={demo.seeds}: give one or more distinct seeds")



def _run_seed(demo: DemoConfig, info, prior_path: str, seed: int) -> dict:
    """Trains every method of one seed (finished ones are reused) and returns {method: rows}."""
    from dgsnet.evaluate import evaluate_detector
    from dgsnet.predict import load_detector
    from dgsnet.train import train_dgs, train_teacher

    folder = os.path.join(demo.out, f"seed-{seed}")
    teacher_dir = os.path.join(folder, "teacher")
    runs = {}
    # In METHODS order: the probes (stage 1; the prior's is stage 2's teacher) before stage 2.
    for method in sorted(demo.methods, key=list(METHODS).index):
        mode = METHODS[method]
        pretrained = None if mode == "random" else prior_path
        run_dir = {None: teacher_dir, "random": os.path.join(folder, "teacher-random")}.get(
            mode, os.path.join(folder, f"dgs-{mode}"))
        runs[method] = (run_dir, pretrained)
        if _trained(run_dir):
            continue
        if mode in (None, "random"):
            what = "random-initialised encoder" if pretrained is None else "frozen prior"
            _say(f"  seed {seed}: stage 1, probe on the {what}")
            train_teacher(_train_config(demo, info.train_dir, seed, pretrained, out=run_dir),
                          resume=_interrupted(run_dir))
        else:
            _say(f"  seed {seed}: stage 2, {method} (surgery={mode})")
            train_dgs(_train_config(demo, info.train_dir, seed, prior_path, out=run_dir, teacher=teacher_dir,
                                    surgery=mode), resume=_interrupted(run_dir))
    results = {}
    for method, (run_dir, pretrained) in runs.items():
        head = "teacher" if METHODS[method] in (None, "random") else "student"
        detector, meta, _ = load_detector(run_dir, head, pretrained=pretrained)
        results[method] = evaluate_detector(detector, info.test_dir, norm=meta["norm"],
                                            batch_size=32).results["clean"]
    return results


def run_demo(demo: DemoConfig) -> dict:
    """Runs the demo; returns {"acc": summary, "ap": summary, "reading": str, "files": {...}}. Reuses
    finished stages in `out`."""
    from dgsnet.demo.builder import NOTE, build_demo_dataset  # here: `dgsnet demo --help` needs no scipy
    from dgsnet.demo.prior import PRIOR_VS_FAMILIES, prior_weights
    from dgsnet.demo import summary as S
    from dgsnet.report import write_csv, write_json

    _check(demo)
    start = time.perf_counter()
    logging.getLogger("dgsnet.data").setLevel(logging.WARNING)
    _say(f"dgsnet demo: {NOTE}")
    _say(f"  backbone {demo.model} (open_clip config), CPU, seeds {', '.join(map(str, demo.seeds))}\n")

    info = build_demo_dataset(os.path.join(demo.out, "data"), seed=demo.data_seed, per_class=demo.per_class,
                              test_per_class=demo.test_per_class)
    counts = info.counts["train"]
    _say(f"[1/4] data: {info.root} ({'built' if info.rebuilt else 'reused'} in {info.seconds:.1f} s): "
         f"train on '{info.train_family}' ({counts['real']} real + {counts['fake']} generated), "
         f"test on {len(info.families)} families")
    _say("[2/4] the pretrained prior: both towers of the backbone trained contrastively (open_clip's ClipLoss) "
         "on degraded photo crops captioned with what was done to them")
    prior_cfg = replace(demo.prior, model=demo.model)
    prior_path, record = prior_weights(os.path.join(demo.out, "prior"), prior_cfg, log=_say)
    _say(f"  {'reused' if record['reused'] else 'trained in'} "
         + ("" if record["reused"] else f"{record['seconds']:.0f} s ")
         + f"{prior_path}: contrastive loss {record['loss_first']:.2f} -> {record['loss_last']:.2f} "
           f"(chance {record['chance_loss']:.2f}) over {record['distinct_captions']} distinct captions")
    _say(f"  how it differs from the test families: {PRIOR_VS_FAMILIES}")
    # Said once above; every later model load would repeat the random-initialisation warning.
    logging.getLogger("dgsnet.models.backbone").setLevel(logging.ERROR)

    _say(f"[3/4] detectors: {', '.join(demo.methods)}; trained on '{info.train_family}', "
         f"evaluated on every family, {len(demo.seeds)} seed(s)")
    per_seed = {seed: _run_seed(demo, info, prior_path, seed) for seed in demo.seeds}

    _say("[4/4] results")
    acc, ap = (S.summarise(per_seed, info.train_family, metric) for metric in ("acc", "ap"))
    text = S.reading(acc, PRIOR, PLAIN, DGS, RANDOM if RANDOM in demo.methods else None)
    files = {"acc_csv": write_csv(S.long_rows(acc), os.path.join(demo.out, "demo_accuracy.csv")),
             "ap_csv": write_csv(S.long_rows(ap), os.path.join(demo.out, "demo_ap.csv")),
             "json": write_json({"note": NOTE, "prior": {k: v for k, v in record.items() if k != "reused"},
                                 "prior_vs_families": PRIOR_VS_FAMILIES, "config": asdict(demo),
                                 "train_family": info.train_family, "acc": acc, "ap": ap, "reading": text,
                                 "results": {str(seed): rows for seed, rows in per_seed.items()}},
                                os.path.join(demo.out, "demo_results.json"))}
    files["png"] = S.plot(acc, os.path.join(demo.out, "demo_accuracy.png"),
                          f"demo: accuracy per generator family, trained on '{info.train_family}'")
    _say(f"\nCross-generator accuracy (%), mean ± sd over seeds {', '.join(map(str, demo.seeds))}; trained on "
         f"'{info.train_family}' only:\n")
    _say(S.markdown(acc))
    _say(f"\n{text}")
    _say("\nAverage precision (%):\n")
    _say(S.markdown(ap))

    if demo.export and DGS in demo.methods:
        files["onnx"] = _export(os.path.join(demo.out, f"seed-{demo.seeds[0]}", "dgs-feature"),
                                os.path.join(demo.out, "detector.onnx"), prior_path)
    _say(f"\nfiles: {json.dumps(files, indent=1)}")
    _say(f"\n{NOTE}\n{REAL_DATA_COMMANDS}")
    _say(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    return {"acc": acc, "ap": ap, "reading": text, "files": files}


def _export(run_dir: str, path: str, prior_path: str) -> str:
    from dgsnet_export.exporter import export_checkpoint

    report = export_checkpoint(run_dir, path, pretrained=prior_path)
    _say(f"\nexported the DGS-Net detector: {path}")
    _say(f"  verified in onnxruntime against torch: {report.summary()}")
    _say(f"  score images without torch: dgsnet-predict {path} IMAGES_DIR")
    return path
