"""Run logs: a JSON-lines record for machines and a text log for people (rank 0 only)."""
from __future__ import annotations

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


class RunLogger:
    def __init__(self, run_dir: str, enabled: bool = True, tensorboard: bool = False):
        self.enabled = enabled
        self.jsonl = self.text = self.tb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl = open(os.path.join(run_dir, "log.jsonl"), "a", buffering=1)
        self.text = open(os.path.join(run_dir, "log.txt"), "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError("--tensorboard needs the tensorboard package: "
                                   ".venv/bin/pip install tensorboard") from exc
            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

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
        if self.tb is not None and "step" in values:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{values.get('stage', '')}/{k}", v, values["step"])

    def close(self) -> None:
        for fh in (self.jsonl, self.text):
            if fh is not None:
                fh.close()
        if self.tb is not None:
            self.tb.close()
