"""Checkpoints: ``model.safetensors`` (weights) + ``config.json`` (model config, position method,
tokenizer reference, training length, sha256 of the weights) in one directory.

Both files are written atomically (temporary file in the same directory, fsync, rename), weights
first, so a crash never leaves a config pointing at half-written weights. Loading never unpickles
anything; a truncated, corrupt or mismatched checkpoint raises :class:`CheckpointError` naming the
file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ropelab.core.io import atomic_path, atomic_write_text
from ropelab.errors import CheckpointError, RopelabError
from ropelab.model.config import ModelConfig
from ropelab.model.transformer import Transformer

FORMAT = "ropelab-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


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
    directory: str | os.PathLike, *, method: str | None = None, device: str | torch.device = "cpu"
) -> Transformer:
    """Load a checkpoint written by :func:`save_checkpoint`; ``method`` overrides its position method."""
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
    if method is not None:
        model.with_method(method)
    return model
