"""Run logs: a JSON-lines record for machines and a text log for people (rank 0 only), and the
optional trackers of --report-to (TensorBoard events, a W&B run)."""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import time

import torch


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class ReportToError(RuntimeError):
    pass


def check_report_to(targets) -> None:
    """Fails at startup, before any model is built, when a --report-to target's package is missing."""
    from dgsnet.train.config import REPORT_TARGETS

    for target in targets:
        package = REPORT_TARGETS[target]
        if importlib.util.find_spec(package) is None:
            raise ReportToError(f"--report-to {target} needs the {package} package: pip install {package}")


def wandb_project(configured: str | None) -> str:
    return configured or os.environ.get("WANDB_PROJECT") or "dgsnet"


class RunLogger:
    def __init__(self, run_dir: str, enabled: bool = True, report_to=(), wandb_project: str | None = None,
                 config: dict | None = None):
        self.enabled = enabled
        self.jsonl = self.text = self.tb = self.wandb = None
        if not enabled:
            return
        check_report_to(report_to)
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl = open(os.path.join(run_dir, "log.jsonl"), "a", buffering=1)
        self.text = open(os.path.join(run_dir, "log.txt"), "a", buffering=1)
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        if "wandb" in report_to:
            self.wandb = _start_wandb(run_dir, wandb_project, config)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        self.text.write(line + "\n")
        print(message, file=sys.stderr, flush=True)

    def record(self, event: str, **values) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"event": event, "time": round(time.time(), 3), **values}) + "\n")
        if "step" not in values:
            return
        scalars = {k: v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "stage")}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"{values.get('stage', '')}/{k}", v, values["step"])
        if self.wandb is not None and scalars:
            self.wandb.log({f"{event}/{k}": v for k, v in scalars.items()}, step=values["step"])

    def close(self) -> None:
        for fh in (self.jsonl, self.text):
            if fh is not None:
                fh.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(run_dir: str, project: str | None, config: dict | None):
    import wandb

    # One W&B run per run folder, named after it; its config is the resolved TrainConfig.
    name = os.path.basename(os.path.normpath(run_dir))
    return wandb.init(project=wandb_project(project), name=name, config=config or {}, dir=run_dir)
