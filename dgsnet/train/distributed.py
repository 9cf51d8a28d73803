"""Data-parallel training under torchrun (torch.distributed: NCCL on GPUs, gloo on the CPU).

How the DGS-Net math stays the single-process math on the global batch:
- The design's g_T and g_X carry a 1/B. With B split into W local batches of
  b, each process computes them with 1/b, W times the global values: the
  local beneficial direction is W b, and relu(g_X) is W r, so
  h_hat_local = W r / (W ||r|| + eps') equals the global h_hat when
  eps' = W eps. Running the local objective with lam / W and eps * W thus
  reproduces the global-batch gradients exactly (`objective_scaling`); DDP's
  gradient mean supplies the remaining 1/W of the batch means.
- Feature surgery is per sample, so it runs locally, before the all-reduce.
- Layer surgery needs the averaged gradient and the global u: those steps
  run under no_sync() and average gradients and u in one flat all-reduce,
  then project (dgsnet.train.layer_surgery).
- Gradient accumulation: no_sync() on all but the last micro-batch, so one
  all-reduce per optimiser step.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Averages tensors across processes in place, in one flat all-reduce."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def sum_floats(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))


def from_env() -> DistContext:
    """Reads torchrun's environment; initialises the process group when there is more than one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and os.environ.get("DGSNET_DIST_BACKEND", "") != "gloo"
        if use_nccl:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return DistContext(rank=rank, world=world, local_rank=local_rank)


def objective_scaling(lam: float, eps: float, world: int) -> tuple[float, float]:
    """(lam, eps) for a local batch that is 1/world of the global batch (see the module doc)."""
    return lam / world, eps * world


class TrainableBranch(nn.Module):
    """What DDP wraps: the encoder forward, and every tensor that trains in the stage
    (heads are applied outside forward, by the objective; DDP still averages their gradients)."""

    def __init__(self, encoder: nn.Module | None, heads: list[nn.Module]):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(heads)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)


def wrap(branch: TrainableBranch, ctx: DistContext, device: torch.device):
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    # The frozen base weights are identical by construction (same seed / same pretrained file);
    # broadcasting them would cost a full model transfer for nothing.
    return DDP(branch, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False)


def no_sync(ddp, active: bool):
    return ddp.no_sync() if (ddp is not None and active) else contextlib.nullcontext()
