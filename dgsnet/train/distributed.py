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
  then project (dgsnet.surgery.layer).
- Gradient accumulation: no_sync() on all but the last micro-batch, so one
  all-reduce per optimiser step.

Sharded training (--fsdp, stage 2): the image encoder's residual blocks are
wrapped with FSDP2 (`fully_shard`), so each process holds 1/W of the frozen
weights and of the LoRA tensors and their Adam state; the three heads stay
replicated (the fused objective reads their weights directly) and their
gradients are averaged by one all-reduce per step. Checkpoints gather full
tensors on every rank and rank 0 writes the same files as an unsharded run,
so a sharded run resumes unsharded and the other way round.
Limits: layer/both surgery need whole per-tensor dot products and are refused;
torch.compile is not applied; stage 1 (a linear probe) never shards.
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


def shard_encoder(visual: nn.Module, ctx: DistContext, device: torch.device) -> None:
    """FSDP2: each residual block of the image encoder is its own shard unit, then the rest."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (ctx.world,))
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    for block in blocks if blocks is not None else []:
        fully_shard(block, mesh=mesh)
    fully_shard(visual, mesh=mesh)


def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def gather_full(state: dict) -> dict:
    """Full tensors of a (possibly sharded) state dict; a collective: call it on every rank, same order."""
    return {k: (v.full_tensor() if is_sharded(v) else v) for k, v in state.items()}


def shard_like(full: torch.Tensor, param) -> torch.Tensor:
    """`full` laid out like the sharded `param` (unchanged when `param` is a plain tensor)."""
    if not is_sharded(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.device, param.dtype), param.device_mesh, param.placements)


def gather_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    state = optimizer.state_dict()
    return {"state": {i: gather_full(s) for i, s in sorted(state["state"].items())},
            "param_groups": state["param_groups"]}


def shard_optimizer_state(state: dict, params: list) -> dict:
    """A full optimizer state dict with every per-parameter tensor laid out like its parameter."""
    out = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        out[i] = {k: shard_like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v
                  for k, v in s.items()}
    return {"state": out, "param_groups": state["param_groups"]}
