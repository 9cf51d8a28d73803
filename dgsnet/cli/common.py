"""Flags more than one command shares."""
from __future__ import annotations

import argparse


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """--head and --pretrained: which head of a run directory scores, and the user's confirmation of
    a weights file the run names outside itself (eval, export, predict)."""
    p.add_argument("--head", default="auto", choices=["auto", "student", "teacher"],
                   help="auto: student for a stage-2 run, the teacher probe for a stage-1 run")
    p.add_argument("--pretrained", default=None,
                   help="confirm the backbone weights file the run names when it lies outside the run "
                        "directory (a checkpoint's paths are not followed on their own)")
