"""Distributed data parallel: the same entry point alone or under ``torchrun``.

``torchrun --nproc_per_node N -m ropelab train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` then joins the process group
(``nccl`` on CUDA, ``gloo`` on CPU) and gives each process its device. Without those variables
the run is a single process and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ropelab.core.errors import RopelabError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Reduce a few floats over all processes (float64; ``sum``, ``max`` or ``mean``)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if op == "mean":
            tensor /= self.world_size
        return tensor.tolist()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RopelabError("device cuda was asked for, but torch sees no CUDA GPU")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "auto") -> Dist:
    """Join the process group when launched by torchrun; otherwise a single-process Dist."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    chosen = pick_device(device, local_rank)
    info = Dist(rank, local_rank, world_size, local_world_size, chosen)
    if world_size > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise RopelabError("torch.distributed is not available in this torch build")
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return info


def teardown(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
