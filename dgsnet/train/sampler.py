"""Deterministic, resumable (and rank-aware) batches of dataset indices.

Epoch e's order is a permutation seeded by (seed, e), so a resumed run can
start in the middle of an epoch by skipping batches without loading them,
and every rank of a distributed run agrees on the order. Global batches of
batch_size * world indices are cut into one contiguous slice per rank, so
N processes with batch b see what one process with batch N*b sees.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 rank: int = 0, world: int = 1, shuffle: bool = True, drop_last: bool = True):
        if size < batch_size * world and drop_last:
            raise ValueError(f"the dataset has {size} images, fewer than one batch of "
                             f"{batch_size} x {world} process(es); lower --batch-size")
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, epoch
        self.start_batch, self.rank, self.world = start_batch, rank, world
        self.shuffle, self.drop_last = shuffle, drop_last

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def batches_per_epoch(self) -> int:
        per_global = self.batch_size * self.world
        return self.size // per_global if self.drop_last else -(-self.size // per_global)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self):
        order, per_global = self.order(), self.batch_size * self.world
        for b in range(self.start_batch, self.batches_per_epoch()):
            chunk = order[b * per_global:(b + 1) * per_global]
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            if mine:
                yield mine
