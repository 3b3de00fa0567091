"""torchrun / DistributedDataParallel plumbing: which rank this is, and the few collectives training needs.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; a run without them is a single process and nothing here does
anything. gloo on CPU, nccl on CUDA, one device per rank (cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from training.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0  # rank within this machine; torchrun numbers a machine's ranks contiguously
    local_world: int = 1  # ranks on this machine
    device: str = "cpu"  # where collective tensors live: nccl reduces CUDA tensors only

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: Tensor) -> Tensor:
        # Sum over ranks, in place; (float64 sums of per-row metrics keep every rank's decision identical)
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def share(self, n: int) -> slice:
        # This rank's contiguous block of n positions (ranks differ in size by at most one); all of them alone.
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def gather(self, a: np.ndarray) -> np.ndarray:
        # Every rank's array, stacked in rank order on every rank: (...) -> (world, ...). Same dtype.
        if not self.enabled:
            return a[None]
        t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        return torch.stack(parts).cpu().numpy()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def from_local_leader(self, value: str) -> str:
        # The value of local rank 0 on this rank's machine (e.g. a scratch file only that rank could name).
        if not self.enabled:
            return value
        values: list[str | None] = [None] * self.world
        dist.all_gather_object(values, value if self.local_rank == 0 else None)
        return str(values[self.rank - self.local_rank])

    def shard(self, idx: Tensor) -> Tensor:
        # DistributedSampler's split: pad to a multiple of the world size by wrapping, then every world-th row.
        if not self.enabled:
            return idx
        pad = (-idx.numel()) % self.world
        if pad:
            idx = torch.cat([idx, idx[:pad]])
        return idx[self.rank :: self.world]


SINGLE = Dist()


def init_from_env(device: str) -> tuple[Dist, torch.device | None]:
    """Join the process group when launched by torchrun; returns (Dist, the rank's device or None = choose)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), None
    missing = [v for v in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE") if v not in os.environ]
    if missing:  # e.g. another launcher: which rows a machine's ranks copy depends on these
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with torchrun")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda under torchrun, but torch sees no CUDA device")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    rank_device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    return Dist(rank, world, local, local_world, str(rank_device)), rank_device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
