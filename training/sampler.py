"""Shard-aware, DDP-aware sampling: shuffle shards, then items within each shard.

Each rank gets a disjoint set of whole shards (balanced by item count), so a shard's bytes are read
by one rank per epoch; ranks are padded with their own items to equal length so DDP steps line up.
Indices are yielded as ``epoch * len(dataset) + index`` so the dataset can seed per-item randomness
by epoch without shared state (``CorpusDataset`` takes them modulo its length).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Protocol

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class ShardedDataset(Sized, Protocol):
    """A dataset that can group its item indices by shard."""

    def shard_groups(self) -> list[np.ndarray]: ...


class ShardAwareSampler(Sampler[int]):
    """Yield this rank's items shard by shard, reshuffled every epoch (call ``set_epoch``)."""

    def __init__(
        self,
        dataset: ShardedDataset,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        self.groups = dataset.shard_groups()
        self.size = len(dataset)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle the next iteration uses."""
        self.epoch = epoch

    def rank_shards(self) -> list[list[int]]:
        """Shard positions per rank for this epoch: shuffled, then dealt to the lightest rank."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.groups)) if self.shuffle else np.arange(len(self.groups))
        loads = [0] * self.world_size
        assigned: list[list[int]] = [[] for _ in range(self.world_size)]
        for shard in order:
            lightest = loads.index(min(loads))
            assigned[lightest].append(int(shard))
            loads[lightest] += len(self.groups[shard])
        return assigned

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        items = [
            rng.permutation(self.groups[s]) if self.shuffle else self.groups[s] for s in self.rank_shards()[self.rank]
        ]
        mine = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
        if not len(mine) and self.groups:  # fewer shards than ranks: share items, not shards
            mine = np.concatenate(self.groups)[self.rank :: self.world_size]
        if len(mine) and len(mine) < len(self):
            mine = np.resize(mine, len(self))  # pad with this rank's own items
        offset = self.epoch * self.size
        return iter((mine + offset).tolist())

    def __len__(self) -> int:
        loads = [sum(len(self.groups[s]) for s in shards) for shards in self.rank_shards()]
        return max(loads) if loads else 0
