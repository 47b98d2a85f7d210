"""An experiment directory's record, ``experiment.json``: what makes a second run resume."""

from __future__ import annotations

from pathlib import Path

from ropelab.core.io import differing_keys, saved_settings


def saved_experiment(out: Path, config: dict) -> dict | None:
    """The record in ``out/experiment.json`` when ``out`` holds this experiment (to resume), None
    when there is none; one clear error when it is unreadable or holds other settings."""
    return saved_settings(out / "experiment.json", "experiment", lambda saved: differing_keys(config, saved["config"]))
