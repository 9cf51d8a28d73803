"""`dgsnet train-teacher` and `dgsnet train`: the two training stages, and what an interrupt left."""
from __future__ import annotations

import argparse
import dataclasses
import os


def add_train_parsers(sub) -> None:
    _add_train_parser(sub, "train-teacher", 1,
                      "stage 1: train the teacher probe (teacher_head) on frozen CLIP features")
    _add_train_parser(sub, "train", 2,
                      "stage 2: DGS-Net LoRA fine-tuning with gradient surgery (needs --teacher)")


def _add_train_parser(sub, name: str, stage: int, help_text: str) -> None:
    from dgsnet.train.config import add_config_arguments

    p = sub.add_parser(name, help=help_text, description=help_text)
    add_config_arguments(p, stage=stage)  # the other stage's flags are not offered
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (with the run's own settings)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even though settings that change the result (lr, batch "
                        "size, data, backbone, LoRA, surgery, ...) differ from the run's; the change is logged")
    from dgsnet_export.runtime.cli import add_progress_argument

    add_progress_argument(p)  # not a config key: dgsnet.cli.main applies it process-wide (dgsnet.progress)
    # the old `--tensorboard` switch (hidden): today `--report-to tensorboard`
    p.add_argument("--tensorboard", dest="legacy_tensorboard", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=lambda a: _cmd_train(a, stage))


def with_legacy_switches(args, cfg):
    """`cfg` with the hidden switches of older versions applied (--tensorboard)."""
    if getattr(args, "legacy_tensorboard", False):
        cfg = dataclasses.replace(cfg, report_to=[*cfg.report_to, "tensorboard"])
    return cfg


def _cmd_train(args, stage: int) -> int:
    from dgsnet.train import train_dgs, train_teacher
    from dgsnet.train.config import config_from_args

    from dgsnet.train.distributed import from_env

    cfg = config_from_args(args, stage=stage)  # stage 2: the --teacher run's backbone, checked here
    cfg = with_legacy_switches(args, cfg)
    args.run_dir = cfg.out  # --out or the config file's: where an interrupt's note looks
    ctx = from_env()  # torchrun sets WORLD_SIZE/RANK; a plain run is one process
    # A checkpoint write cut short removes its own staging folder (dgsnet.models.checkpoint.write_resume).
    (train_teacher if stage == 1 else train_dgs)(cfg, resume=args.resume, ctx=ctx,
                                                 allow_changes=args.allow_config_change)
    if ctx.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def train_note(args) -> str:
    """Where an interrupted training run stands: its last checkpoint and how to continue."""
    run_dir = getattr(args, "run_dir", None)
    if run_dir is None:  # stopped before the config was read
        return "nothing was written"
    from dgsnet.fileio import read_json
    from dgsnet.models import checkpoint as ckpt
    from dgsnet.train import resume as resume_state

    if os.path.isfile(os.path.join(run_dir, ckpt.META_FILE)):
        return f"the run is finished: {os.path.join(run_dir, ckpt.META_FILE)} is written"
    again = "run the same command again" if args.resume else "run the same command with --resume"
    last = resume_state.find_resume(run_dir)
    if last is None:
        return (f"no checkpoint in {run_dir} yet (one is written every --ckpt-every steps and at each "
                "epoch's end): run the same command again to start over")
    step = read_json(os.path.join(last, "state.json"), "a resume state")["position"]["step"]
    return f"the last checkpoint is {last} (step {step}); {again} to continue from it"
