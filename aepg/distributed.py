"""What the trainer needs to know about parallelism: its rank, its device, how to wrap the model
and how to sum evaluation counts. The launcher builds the context; the trainer never imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from aepg.benchmarks.cache import available_cpus


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from (run seed, task, epoch, rank, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Context:
    """One worker's view of the job. ``wrap`` moves the model to the device (and wraps it for DDP)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=pick_device)
    wrap: Callable[[nn.Module], nn.Module] | None = None
    cpus: float = field(default_factory=available_cpus)
    """The CPUs this worker may use (Ray's assignment, else the process's affinity): data loading sizes by it."""

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def prepare(self, model: nn.Module) -> nn.Module:
        return self.wrap(model) if self.wrap else model.to(self.device)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def shard(self, length: int) -> list[int]:
        """This worker's share of ``range(length)``: every sample exactly once across workers."""
        return list(range(self.rank, length, self.world_size))
