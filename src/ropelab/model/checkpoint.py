"""Checkpoints: ``model.safetensors`` (weights) + ``config.json`` (model config, position method,
tokenizer reference, training length, sha256 of the weights) in one directory.

Both files are written atomically (temporary file in the same directory, fsync, rename), weights
first, so a crash never leaves a config pointing at half-written weights. Loading never unpickles
anything; a truncated, corrupt or mismatched checkpoint raises :class:`CheckpointError` naming the
file and the problem.

A training run keeps its checkpoints as ``step-NNNNNN`` directories in one folder, with
``latest.json`` naming the newest (:mod:`ropelab.train.state` writes them);
:func:`list_checkpoints` and :func:`find_latest_checkpoint` read that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ropelab.core.errors import CheckpointError, RopelabError
from ropelab.core.io import atomic_path, atomic_write_text
from ropelab.model.config import ModelConfig
from ropelab.model.device import check_supported, resolve_device, resolve_dtype
from ropelab.model.transformer import Transformer

FORMAT = "ropelab-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
#: in a run's checkpoint folder: names the newest ``step-NNNNNN`` checkpoint
LATEST = "latest.json"
#: a training run keeps its checkpoints in this folder, one ``step-NNNNNN`` directory each
CHECKPOINTS = "checkpoints"
_STEP = re.compile(r"step-(\d+)")


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint written after ``step`` optimizer steps."""
    return f"step-{step:06d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as embed_tokens.weight
    return state


def save_checkpoint(
    directory: str | os.PathLike,
    model: Transformer,
    *,
    tokenizer: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory`` atomically; returns the directory."""
    directory = Path(directory)
    weights = directory / WEIGHTS

    with atomic_path(weights) as tmp:
        save_file(_state_dict(model), str(tmp), metadata={"format": "pt", "producer": FORMAT})
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.config.to_dict(),
        "pe": model.pe.spec,
        "train_len": model.config.train_len,
        "tokenizer": tokenizer,
        "weights_sha256": _sha256(weights),
        "extra": extra or {},
    }
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=2))
    return directory


def read_checkpoint_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; not a ropelab checkpoint directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); the checkpoint is corrupt") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: not a ropelab checkpoint config")
    if config.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {config.get('version')!r} is not supported (expected {VERSION})"
        )
    return config


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    method: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> Transformer:
    """Load a checkpoint written by :func:`save_checkpoint`; ``method`` overrides its position method.

    ``device``: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``; ``dtype``: the weights' dtype
    (``float32``, ``bfloat16``, ``float16``; default: as stored, float32 for ropelab's own).
    """
    device = resolve_device(device)
    if dtype is not None:
        dtype = resolve_dtype(dtype)
        check_supported(device, dtype)
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    expected = config.get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise CheckpointError(f"{weights}: contents do not match the checksum in {CONFIG} (truncated or corrupt file)")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{weights}: cannot be read ({error}); the file is truncated or corrupt") from None
    try:
        model_config = ModelConfig.from_dict(config["model"])
        model_config.pe = config.get("pe", model_config.pe)
        model = Transformer.from_state_dict(model_config, state).to(device)
    except CheckpointError as error:
        raise CheckpointError(f"{weights} does not match {CONFIG}: {error}") from None
    except RopelabError as error:
        raise CheckpointError(f"{directory / CONFIG}: {error}") from None
    if dtype is not None:
        model.to(dtype=dtype)
    if method is not None:
        model.with_method(method)
    return model


# -- a training run's checkpoint folder --------------------------------------------------------


def checkpoint_step(directory: str | os.PathLike) -> int | None:
    """N of a ``step-N`` checkpoint directory; None for any other name."""
    match = _STEP.fullmatch(Path(directory).name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """The finished checkpoints in ``root`` (``step-N`` directories holding a config), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if checkpoint_step(path) is not None and (path / CONFIG).is_file()]
    return sorted(found, key=checkpoint_step)


def find_latest_checkpoint(root: str | os.PathLike, *, strict: bool) -> Path | None:
    """The checkpoint ``root/latest.json`` names, ``root`` being a run's checkpoint folder.

    ``latest.json`` is ``{"checkpoint": "step-000100", "step": 100, ...}`` as ``ropelab train``
    writes it; also read: a plain string, a dict naming the directory under ``path``, ``dir``,
    ``name`` or ``latest``, or a dict with only the ``step``.

    ``strict=True`` (resuming a run): None when there is no ``latest.json`` yet; a
    :class:`CheckpointError` when it is unreadable or names no finished checkpoint.
    ``strict=False`` (reading a run, e.g. for analysis): the newest ``step-N`` checkpoint when
    ``latest.json`` is missing, unreadable or names none; None when there is no checkpoint at all.
    """
    root = Path(root)
    pointer = root / LATEST
    if not pointer.exists():
        return None if strict else _newest(root)
    try:
        name, step = _pointer_target(json.loads(pointer.read_text()))
    except (OSError, ValueError):
        name = step = None
    if name is None and step is None:
        if strict:
            raise CheckpointError(f"{pointer}: unreadable; delete it to resume from {root} by hand")
        return _newest(root)
    if name is not None and (root / name / CONFIG).is_file():
        return root / name
    for path in list_checkpoints(root):
        if checkpoint_step(path) == step:
            return path
    if strict:
        named = name if name is not None else f"step {step}"
        raise CheckpointError(f"{pointer} names {named}, which is missing or incomplete")
    return _newest(root)


def _newest(root: Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def _pointer_target(data: Any) -> tuple[str | None, int | None]:
    """(directory name, step) that a parsed ``latest.json`` names; the step is that of the name if it has one."""
    if isinstance(data, str):
        name = Path(data).name
        return name, checkpoint_step(name)
    if not isinstance(data, dict):
        return None, None
    for key in ("checkpoint", "path", "dir", "name", "latest"):
        if isinstance(data.get(key), str):
            name = Path(data[key]).name
            return name, checkpoint_step(name)
    step = data.get("step")
    return None, step if isinstance(step, int) and not isinstance(step, bool) else None
