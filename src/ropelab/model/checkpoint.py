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

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ropelab.core.checks import is_int
from ropelab.core.errors import CheckpointError, RopelabError
from ropelab.core.io import atomic_path, atomic_write_text, file_sha256
from ropelab.model.config import ModelConfig, shown
from ropelab.model.device import check_supported, resolve_device, resolve_dtype
from ropelab.model.transformer import Transformer
from ropelab.pe import canonical_spec

FORMAT = "ropelab-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
#: in a run's checkpoint folder: names the newest ``step-NNNNNN`` checkpoint
LATEST = "latest.json"
#: a training run keeps its checkpoints in this folder, one ``step-NNNNNN`` directory each
CHECKPOINTS = "checkpoints"
_STEP = re.compile(r"step-(\d{1,18})")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint written after ``step`` optimizer steps."""
    return f"step-{step:06d}"


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
        # one metadata key: safetensors writes its metadata map in a per-process random order, so
        # with two keys the same weights gave different bytes (and sha256) from run to run
        save_file(_state_dict(model), str(tmp), metadata={"format": "pt"})
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.config.to_dict(),
        "pe": model.pe.spec,
        "train_len": model.config.train_len,
        "tokenizer": tokenizer,
        "weights_sha256": file_sha256(weights),
        "extra": extra or {},
    }
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=2))
    return directory


def read_json(path: Path, what: str = "") -> Any:
    """The JSON value in ``path``; a :class:`CheckpointError` naming the file when it is unreadable,
    not UTF-8, not JSON, nested too deeply for the parser or holds an integer of more than 4300
    digits (Python's limit). ``what`` ends the message (e.g. "; the checkpoint is corrupt")."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:200]
        raise CheckpointError(f"{path}: not valid JSON ({reason}){what}") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error}){what}") from None


def read_checkpoint_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint, its fields checked (types; the model config
    itself is checked by :class:`ModelConfig` when the model is built)."""
    path = Path(directory) / CONFIG
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    try:
        config = read_json(path, "; the checkpoint is corrupt")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; not a ropelab checkpoint directory") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: not a ropelab checkpoint config")
    if config.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {shown(config.get('version'))} is not supported (expected {VERSION})"
        )
    checks = {
        "pe": (lambda v: isinstance(v, str) and v, "a method spec string"),
        "tokenizer": (lambda v: v is None or isinstance(v, str), "a file name or null"),
        "weights_sha256": (lambda v: v is None or (isinstance(v, str) and _HEX64.fullmatch(v)), "64 hex digits"),
        "extra": (lambda v: isinstance(v, dict), "a JSON object"),
    }
    for key, (ok, expected) in checks.items():
        if key in config and not ok(config[key]):
            raise CheckpointError(f"{path}: {key} must be {expected}, got {shown(config[key])}")
    return config


def checkpoint_model_config(directory: str | os.PathLike, config: dict[str, Any] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a checkpoint, validated (types, ranges, memory) before any
    weight is read; one :class:`CheckpointError` naming the file otherwise."""
    config = read_checkpoint_config(directory) if config is None else config
    try:
        model_config = ModelConfig.from_dict({**config["model"], **({"pe": config["pe"]} if "pe" in config else {})})
        canonical_spec(model_config.pe)  # its parameters too (a learned table's size, ...), before any is built
        return model_config
    except RopelabError as error:
        raise CheckpointError(f"{Path(directory) / CONFIG}: {error}") from None


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
    model_config = checkpoint_model_config(directory, config)  # before any weight is read
    weights = directory / WEIGHTS
    if not weights.is_file():
        what = "missing" if not weights.exists() else "not a regular file"
        raise CheckpointError(f"{weights}: {what}; a checkpoint stores its weights there")
    expected = config.get("weights_sha256")
    if expected and file_sha256(weights) != expected:
        raise CheckpointError(f"{weights}: contents do not match the checksum in {CONFIG} (truncated or corrupt file)")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{weights}: cannot be read ({error}); the file is truncated or corrupt") from None
    try:
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


def run_checkpoint(run: str | os.PathLike) -> Path:
    """The checkpoint a training run directory (``RUN/checkpoints/step-N``) stands for: the one
    ``latest.json`` names, else the highest finished step; one error when it has none yet."""
    latest = find_latest_checkpoint(Path(run) / CHECKPOINTS, strict=False)
    if latest is None:
        raise RopelabError(f"{run}: a training run without a finished checkpoint (no checkpoints/step-*/config.json)")
    return latest


def find_latest_checkpoint(root: str | os.PathLike, *, strict: bool, resume_files: tuple[str, ...] = ()) -> Path | None:
    """The checkpoint ``root/latest.json`` names, ``root`` being a run's checkpoint folder.

    ``latest.json`` is ``{"checkpoint": "step-000100", "step": 100, ...}`` as ``ropelab train``
    writes it; also read: a plain string, a dict naming the directory under ``path``, ``dir``,
    ``name`` or ``latest`` (a name, or a path whose folder is ``root``), or a dict with only the
    ``step``. A name that leads out of ``root`` (``..``, another folder, a symbolic link elsewhere)
    is never followed: a :class:`CheckpointError`, whatever ``strict``.

    ``strict=True`` (resuming a run): None when there is no ``latest.json`` yet; a
    :class:`CheckpointError` when it is unreadable or names no finished checkpoint. The error
    says how to recover -- which newest complete checkpoint (one holding ``resume_files`` too) to
    write into ``latest.json`` -- never to delete it: a run without ``latest.json`` starts again
    from step 0.
    ``strict=False`` (reading a run, e.g. for analysis): the newest ``step-N`` checkpoint when
    ``latest.json`` is missing, unreadable or names none; None when there is no checkpoint at all.
    """
    root = Path(root)
    pointer = root / LATEST
    if not pointer.exists():
        return None if strict else _newest(root)
    try:
        raw, step = _pointer_target(read_json(pointer))
    except (CheckpointError, FileNotFoundError):
        raw = step = None
    if raw is None and step is None:
        if strict:
            raise CheckpointError(f"{pointer}: unreadable or names no checkpoint; {_recovery(root, resume_files)}")
        return _newest(root)
    name = _inside(root, raw) if raw is not None else None
    if raw is not None and name is None:
        raise CheckpointError(
            f"{pointer} names {shown(raw)}, outside the run's checkpoint folder {root}: not followed; "
            + _recovery(root, resume_files)
        )
    if name is not None and _is_file(root / name / CONFIG):
        return root / name
    for path in list_checkpoints(root):
        if checkpoint_step(path) == step:
            return path
    if strict:
        named = name if name is not None else f"step {step}"
        raise CheckpointError(
            f"{pointer} names {named}, which is missing or incomplete; {_recovery(root, resume_files)}"
        )
    return _newest(root)


def _newest(root: Path, required: tuple[str, ...] = ()) -> Path | None:
    checkpoints = [path for path in list_checkpoints(root) if all((path / name).is_file() for name in required)]
    return checkpoints[-1] if checkpoints else None


def _recovery(root: Path, required: tuple[str, ...]) -> str:
    """How to get a run going again from a damaged ``latest.json``: point it at the newest
    complete checkpoint (deleting it would silently start the run again from step 0)."""
    pointer = root / LATEST
    newest = _newest(root, required)
    if newest is None:
        return (
            f"no complete step-N checkpoint is left in {root}; only removing {pointer} lets the run start "
            "again, from step 0"
        )
    content = json.dumps({"checkpoint": newest.name, "step": checkpoint_step(newest)})
    return f"the newest complete checkpoint is {newest}; to resume from it, write {content} into {pointer}"


def _inside(root: Path, raw: str) -> str | None:
    """The directory name in ``root`` that the pointer text ``raw`` means, or None when it leads
    elsewhere: a plain name, or a path (absolute, or relative to ``root`` or to the run folder
    above it) whose folder is ``root``; ``root/name`` itself must not lead out (a symbolic link)."""
    path = Path(raw)
    name = path.name
    if not name or name in (".", "..") or "\x00" in raw:
        return None
    if len(path.parts) > 1:
        here = root.resolve()
        bases = [Path("/")] if path.is_absolute() else [root, root.parent]
        if not any((base / path).resolve().parent == here for base in bases):
            return None
    try:
        if (root / name).is_symlink() and (root / name).resolve().parent != root.resolve():
            return None
    except OSError:  # a name too long to exist: it names nothing, and nothing elsewhere
        return name
    except RuntimeError:  # a symbolic link loop
        return None
    return name


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long to exist, ...
        return False


def _pointer_target(data: Any) -> tuple[str | None, int | None]:
    """(the text naming a directory, step) of a parsed ``latest.json``; the step is that of the name if it has one."""
    if isinstance(data, str):
        return data, checkpoint_step(data)
    if not isinstance(data, dict):
        return None, None
    for key in ("checkpoint", "path", "dir", "name", "latest"):
        if isinstance(data.get(key), str):
            return data[key], checkpoint_step(data[key])
    step = data.get("step")
    return None, step if is_int(step) else None
