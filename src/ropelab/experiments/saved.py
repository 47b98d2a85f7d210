"""An experiment directory's record, ``experiment.json``: what makes a second run resume."""

from __future__ import annotations

import json
from pathlib import Path

from ropelab.core.errors import RopelabError


def saved_experiment(out: Path, config: dict) -> dict | None:
    """The record in ``out/experiment.json`` when ``out`` holds this experiment (to resume), None
    when there is none; one clear error when it is unreadable or holds other settings."""
    record_path = out / "experiment.json"
    if not record_path.exists():
        return None
    try:
        saved = json.loads(record_path.read_text())
    except (OSError, ValueError):
        raise RopelabError(f"{record_path}: unreadable; choose another --out directory") from None
    if not isinstance(saved, dict) or saved.get("config") != config:
        raise RopelabError(f"{out} holds an experiment with other settings; choose another --out directory")
    return saved
