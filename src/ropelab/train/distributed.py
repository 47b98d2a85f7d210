"""Several processes: the same entry point alone or under ``torchrun``.

``torchrun --nproc_per_node N -m ropelab train ...`` (or ``... eval ...``) sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` then joins the
process group (``nccl`` on CUDA, ``gloo`` on CPU, or the backend asked for) and gives each process
its device. Without those variables the run is a single process and nothing here does anything.

FSDP2 (:func:`shard_model`, ``ropelab train --parallel fsdp``) shards every transformer block and
then the root (embedding, final norm, LM head and the position encoding's parameters) over the
processes with ``torch.distributed.fsdp.fully_shard``; it runs on CPU over gloo as well as on
CUDA over nccl. :func:`full_state_dicts` gathers the whole model and optimizer state on rank 0
(on the CPU) so that checkpoints stay ordinary single-file ropelab checkpoints, and
:func:`load_full_optimizer_state` shards such a state back into a sharded model's optimizer.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ropelab.core.errors import RopelabError
from ropelab.model.device import resolve_device


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

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object) on every process."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]


def pick_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of this process (:func:`ropelab.model.device.resolve_device`: one clear error when
    it is unknown or not on this machine); ``cuda`` (or ``auto`` on a CUDA machine) under torchrun:
    process ``r`` of a machine uses GPU ``r``."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if world_size > 1 and device.type == "cuda":
        raise RopelabError(f"device {name!r} under torchrun: give cuda (process r uses GPU r), not one GPU for all")
    if world_size > 1 and device.type == "mps":
        raise RopelabError("device mps under torchrun: torch.distributed does not run on MPS; use cpu or cuda")
    return device


def setup(device: str = "auto", backend: str | None = None, timeout_s: float | None = None) -> Dist:
    """Join the process group when launched by torchrun; otherwise a single-process Dist.

    ``backend`` defaults to ``nccl`` on CUDA and ``gloo`` on CPU; ``timeout_s`` (default torch's)
    is how long a collective, a barrier included, may wait for the slowest process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    chosen = pick_device(device, local_rank, world_size)
    info = Dist(rank, local_rank, world_size, local_world_size, chosen)
    if world_size > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise RopelabError("torch.distributed is not available in this torch build")
        backend = backend or ("nccl" if chosen.type == "cuda" else "gloo")
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    return info


def default_threads(info: Dist) -> int | None:
    """Under torchrun on CPU, the machine's cores shared out over its processes (so N processes
    do not each start a thread per core); None (torch's default) otherwise."""
    if info.enabled and info.device.type == "cpu":
        return max(1, (os.cpu_count() or 1) // info.local_world_size)
    return None


# -- FSDP2 ---------------------------------------------------------------------------------------


def unshardable_parameters(model: torch.nn.Module) -> list[str]:
    """The parameters ``fully_shard`` refuses: scalars (0-dim; FSDP2 shards along dim 0), e.g. FIRE's
    ``c`` and ``L_multiplier``."""
    return [name for name, param in model.named_parameters() if param.dim() == 0]


def shard_model(model: torch.nn.Module, info: Dist) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2: every block of ``model.layers``, then the root.

    Parameters become DTensors sharded on dim 0 over a 1-D mesh of all processes; a forward
    all-gathers one block's parameters at a time, a backward reduce-scatters (averages) its
    gradients. An optimizer must be made after this, over the sharded parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _state_dict_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict) of a sharded model, whole, on rank 0's CPU; empty
    dicts on the other ranks. Every process must call it (it gathers). The optimizer's state is
    keyed by parameter name (``{"state": {name: {field: tensor}}, "param_groups": [{..., "params":
    [name, ...]}]}``)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _state_dict_options(cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a whole optimizer state keyed by parameter name (every process holds it) into the
    optimizer of a sharded model: each process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_state_dict_options())


def to_local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (a sharded model's gradient norm) as a plain tensor (a collective); others as they are."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def teardown(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
