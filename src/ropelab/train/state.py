"""Training checkpoints: a normal ropelab checkpoint plus the state to resume, without pickle.

``OUT/checkpoints/step-000100/`` holds

* ``model.safetensors`` + ``config.json`` (:func:`ropelab.model.checkpoint.save_checkpoint`,
  ``tokenizer="tokenizer.json"``) and ``tokenizer.json`` + ``special_tokens.json``, so
  ``ropelab.pretrained.registry.load_model`` loads model and tokenizer from it;
* ``optimizer.safetensors``: AdamW's per-parameter tensors, keyed ``<parameter name>.<field>``;
* ``rng.safetensors``: torch's CPU (and CUDA) generator states as uint8 tensors;
* ``trainer_state.json``: step, tokens and samples consumed (the data cursor), elapsed time,
  losses, the optimizer's hyper-parameters with its parameter names per group.

By default only the newest checkpoint keeps the resume files (optimizer, rng, trainer state are
removed from older ones, which stay loadable models for analysis). A checkpoint is written into
``.step-000100.partial/`` and renamed into place, then ``checkpoints/latest.json`` is replaced
atomically; a crash leaves either the old or the new state, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ropelab.core.checks import is_finite, is_int
from ropelab.core.errors import CheckpointError
from ropelab.core.io import atomic_path, atomic_write_text
from ropelab.model.checkpoint import (
    LATEST,
    checkpoint_name,
    checkpoint_step,
    find_latest_checkpoint,
    list_checkpoints,
    read_json,
    save_checkpoint,
)
from ropelab.model.config import shown

STATE = "trainer_state.json"
OPTIMIZER = "optimizer.safetensors"
RNG = "rng.safetensors"
RESUME_FILES = (STATE, OPTIMIZER, RNG)


def parameter_names(model: torch.nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name (tied weights counted once)."""
    names: dict[int, str] = {}
    for name, param in model.named_parameters():
        names.setdefault(id(param), name)
    return names


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict, list[dict]]:
    """(tensors keyed ``name.field``, param groups as JSON with parameter names)."""
    state_dict = optimizer.state_dict()
    tensors, groups = {}, []
    for group, saved in zip(optimizer.param_groups, state_dict["param_groups"]):
        group_names = []
        for index, param in zip(saved["params"], group["params"]):
            name = names[id(param)]
            group_names.append(name)
            for key, value in state_dict["state"].get(index, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
                else:
                    tensors[f"{name}.{key}"] = torch.tensor(value, dtype=torch.float64)
        hyper = {k: v for k, v in saved.items() if k != "params"}
        groups.append({**{k: list(v) if isinstance(v, tuple) else v for k, v in hyper.items()}, "params": group_names})
    return tensors, groups


def load_optimizer(optimizer: torch.optim.Optimizer, names: dict[int, str], tensors: dict, groups: list[dict]) -> None:
    """Restore ``optimizer`` from :func:`optimizer_tensors`' output; a :class:`CheckpointError` when
    the saved state does not fit (other parameters, a moment of another shape, a bad hyper-parameter)."""
    current = optimizer.state_dict()
    if not isinstance(groups, list) or len(groups) != len(current["param_groups"]):
        raise CheckpointError("optimizer state has a different number of parameter groups than this model")
    state: dict[int, dict] = {}
    for group, saved, live in zip(optimizer.param_groups, groups, current["param_groups"]):
        expected = [names[id(p)] for p in group["params"]]
        if not isinstance(saved, dict) or saved.get("params") != expected:
            raise CheckpointError("optimizer state was saved for other parameters than this model's")
        for index, name, param in zip(live["params"], expected, group["params"]):
            fields = {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
            for key, value in fields.items():
                if key != "step" and value.shape != param.shape:
                    raise CheckpointError(
                        f"optimizer state {name}.{key} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}"
                    )
                if key == "step" and value.numel() != 1:
                    raise CheckpointError(
                        f"optimizer state {name}.step must be one number, got shape {tuple(value.shape)}"
                    )
            if fields:
                state[index] = fields
        for key, value in saved.items():
            if key == "params":
                continue
            like = live.get(key)  # a setting this optimizer lacks (another torch version): a plain value at most
            if not (
                _same_kind(value, like)
                if key in live
                else value is None or isinstance(value, bool | str) or is_finite(value)
            ):
                raise CheckpointError(f"optimizer setting {shown(key)} must be like {shown(like)}, got {shown(value)}")
            live[key] = tuple(value) if key == "betas" else value
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def _same_kind(saved: Any, live: Any) -> bool:
    """Whether a saved optimizer setting has the type of the live one (a finite number for a number,
    true/false for a flag, a list of as many numbers for betas, ...)."""
    if isinstance(live, bool) or live is None:
        return isinstance(saved, bool) or (live is None and saved is None)
    if isinstance(live, int | float):
        return is_finite(saved)
    if isinstance(live, tuple | list):
        return (
            isinstance(saved, list | tuple)
            and len(saved) == len(live)
            and all(_same_kind(a, b) for a, b in zip(saved, live))
        )
    return isinstance(saved, type(live))


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def write_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer_files: list[Path],
    trainer_state: dict[str, Any],
    extra: dict[str, Any],
    keep: int = 0,
) -> Path:
    """Write ``root/step-NNNNNN`` atomically, point ``latest.json`` at it, prune older ones."""
    name = checkpoint_name(step)
    final = root / name
    partial = root / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_checkpoint(partial, model, tokenizer="tokenizer.json", extra=extra)
    for path in tokenizer_files:
        if path.is_file():
            shutil.copyfile(path, partial / path.name)
    names = parameter_names(model)
    tensors, groups = optimizer_tensors(optimizer, names)
    with atomic_path(partial / OPTIMIZER) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(partial / RNG) as tmp:
        save_file(rng_tensors(), str(tmp))
    atomic_write_text(partial / STATE, json.dumps({**trainer_state, "optimizer": {"param_groups": groups}}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)
    _fsync_dir(root)
    atomic_write_text(
        root / LATEST,
        json.dumps({"checkpoint": name, "step": step, "tokens": trainer_state.get("tokens")}, indent=2),
    )
    _prune(root, final, keep)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prune(root: Path, newest: Path, keep: int) -> None:
    older = [p for p in list_checkpoints(root) if p != newest]
    for path in older:
        for name in RESUME_FILES:  # only the newest checkpoint is needed to resume
            (path / name).unlink(missing_ok=True)
    if keep > 0:
        for path in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
    for debris in root.glob(".step-*.partial"):
        shutil.rmtree(debris, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint to resume from: the one ``latest.json`` names (None before the first one);
    a :class:`CheckpointError` when ``latest.json`` is damaged, leads out of ``root`` or names a
    missing checkpoint; the error names the newest checkpoint to resume from instead."""
    return find_latest_checkpoint(root, strict=True, resume_files=RESUME_FILES)


#: ``trainer_state.json``: the fields a resume reads, with what each must be
_STATE_FIELDS = {
    "step": ("a non-negative integer", lambda v: is_int(v) and v >= 0),
    "tokens": ("a non-negative integer", lambda v: is_int(v) and v >= 0),
    "elapsed_s": ("a finite number >= 0", lambda v: is_finite(v) and v >= 0),
    "optimizer": ('{"param_groups": [...]}', lambda v: isinstance(v, dict) and isinstance(v.get("param_groups"), list)),
}
_OPTIONAL_STATE = ("elapsed_s",)


def read_resume_state(directory: Path) -> tuple[dict, dict, dict]:
    """(trainer state, optimizer tensors, rng tensors) of a checkpoint; clear errors if damaged.

    ``trainer_state.json`` is checked field by field (:data:`_STATE_FIELDS`) and its step against
    the checkpoint's name, so a damaged one is one :class:`CheckpointError`, never a resume from a
    made-up step."""
    missing = [name for name in RESUME_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory}: no training state to resume from (missing {', '.join(missing)})")
    path = directory / STATE
    state = read_json(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(state).__name__}")
    for key, (expected, ok) in _STATE_FIELDS.items():
        if key not in state and key in _OPTIONAL_STATE:
            continue
        if key not in state:
            raise CheckpointError(f"{path}: {key} is missing")
        if not ok(state[key]):
            raise CheckpointError(f"{path}: {key} must be {expected}, got {shown(state[key])}")
    named = checkpoint_step(directory)
    if named is not None and state["step"] != named:
        raise CheckpointError(f"{path}: step {state['step']} is not the step of its checkpoint {directory.name}")
    tensors = {}
    for name in (OPTIMIZER, RNG):
        try:
            tensors[name] = load_file(str(directory / name))
        except (SafetensorError, OSError, RuntimeError) as error:
            raise CheckpointError(f"{directory / name}: cannot be read ({error}); truncated or corrupt") from None
    cpu = tensors[RNG].get("torch_cpu")
    if cpu is None or cpu.dtype != torch.uint8 or cpu.dim() != 1:
        raise CheckpointError(f"{directory / RNG}: no torch_cpu generator state (uint8 vector); truncated or corrupt")
    return state, tensors[OPTIMIZER], tensors[RNG]
