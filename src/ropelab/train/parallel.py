"""Several processes: DistributedDataParallel, or FSDP2 sharding (parameters, gradients and
optimizer state over the processes), and the unsharded copies a checkpoint stores."""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from ropelab.core.errors import RopelabError
from ropelab.model.transformer import Transformer
from ropelab.train import distributed, state
from ropelab.train.config import TrainConfig, make_optimizer


def wrap_ddp(model: Transformer, info: distributed.Dist) -> torch.nn.Module:
    """What the loop runs forward and backward through: ``model`` alone in one process; under
    torchrun ``model`` in DistributedDataParallel, which averages the gradients over processes."""
    if not info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def check_shardable(model: Transformer, config: TrainConfig) -> None:
    """One clear error, before any work, for a model FSDP2 cannot shard."""
    scalars = distributed.unshardable_parameters(model)
    if scalars:
        raise RopelabError(
            f"--parallel fsdp cannot train pe {config.pe}: FSDP2 (fully_shard) does not shard scalar parameters "
            f"({', '.join(scalars[:4])}{' ...' if len(scalars) > 4 else ''}); use --parallel ddp for it"
        )


def shard_fsdp(model: Transformer, optimizer: torch.optim.Optimizer, config: TrainConfig, info: distributed.Dist):
    """``model`` sharded in place with FSDP2 and a new optimizer over its sharded parameters that
    holds ``optimizer``'s state (a resumed run's moments and step counts), each process its shard."""
    names = state.parameter_names(model)
    tensors, groups = state.optimizer_tensors(optimizer, names)  # before sharding: whole tensors, by name
    distributed.shard_model(model, info)
    sharded = make_optimizer(model, config)
    if tensors:
        distributed.load_full_optimizer_state(model, sharded, named_optimizer_state(tensors, groups))
    return model, sharded


def named_optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    """:func:`ropelab.train.state.optimizer_tensors`' ``(tensors keyed "name.field", groups)`` as an
    optimizer state dict keyed by parameter name (what ``torch.distributed.checkpoint`` reads)."""
    named: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, field = key.rpartition(".")
        named.setdefault(name, {})[field] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in groups]
    return {"state": named, "param_groups": groups}


def unsharded_copy(
    model: Transformer, optimizer: torch.optim.Optimizer, config: TrainConfig, info: distributed.Dist
) -> tuple[Transformer | None, torch.optim.Optimizer | None]:
    """A sharded model and its optimizer gathered whole onto rank 0's CPU, as an ordinary model
    and AdamW (what a checkpoint is written from); (None, None) on the other ranks. Every process
    must call it."""
    weights, optimizer_state = distributed.full_state_dicts(model, optimizer)
    if not info.main:
        return None, None
    whole = Transformer.from_state_dict(model.config, weights)
    whole_optimizer = make_optimizer(whole, config)
    tensors = {
        f"{name}.{field}": value for name, fields in optimizer_state["state"].items() for field, value in fields.items()
    }
    state.load_optimizer(whole_optimizer, state.parameter_names(whole), tensors, optimizer_state["param_groups"])
    return whole, whole_optimizer
