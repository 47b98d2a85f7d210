"""What ``ropelab analyze PATH`` analyses: PATH resolved into subjects, each a checkpoint series.

* a model name, ``.gguf`` file, Hugging Face directory or ropelab checkpoint directory: one subject;
* a training run directory (``RUN/checkpoints/step-*/`` from ``ropelab train``; ``latest.json``
  names the newest): its latest checkpoint, or with ``checkpoints="all"`` every ``step-*``
  checkpoint in step order (the VAF-over-training series; the other analyses use the last one);
* an experiment directory (``EXP/models/<name>/``, one run each, from ``ropelab experiment``):
  one subject per run, analysed side by side.

``methods`` (position-method specs) multiplies the subjects: every subject under every method,
applied to the same weights with ``model.with_method``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ropelab.core.errors import RopelabError
from ropelab.model.checkpoint import CHECKPOINTS, CONFIG, checkpoint_step, list_checkpoints, run_checkpoint

CHECKPOINT_CHOICES = ("latest", "all")


@dataclass(frozen=True)
class Checkpoint:
    path: str  # what load_model takes
    step: int | None = None


@dataclass
class Subject:
    label: str
    source: str
    kind: str  # "model" | "run"
    method: str | None
    checkpoints: list[Checkpoint] = field(default_factory=list)  # oldest first; the last is analysed in full

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]


def is_run(path: Path) -> bool:
    return path.is_dir() and ((path / CHECKPOINTS).is_dir() or (path / "train_config.json").is_file())


def is_experiment(path: Path) -> bool:
    return path.is_dir() and (path / "models").is_dir() and not (path / CONFIG).is_file()


def _run_label(run: Path) -> str:
    """The run's position method from ``train_config.json`` (top level or ``requested``), else its name."""
    try:
        config = json.loads((run / "train_config.json").read_text())
    except (OSError, ValueError):
        return run.name
    for section in (config, config.get("requested") if isinstance(config, dict) else None):
        if isinstance(section, dict) and isinstance(section.get("pe"), str):
            return section["pe"]
    return run.name


def _run_subject(run: Path, label: str, checkpoints: str) -> Subject:
    """Every ``checkpoints/step-N`` checkpoint in step order (``"all"``), or the latest one
    (:func:`~ropelab.model.checkpoint.find_latest_checkpoint`, lenient: else the highest step)."""
    if checkpoints == "all":
        series = list_checkpoints(run / CHECKPOINTS)
        if not series:
            raise RopelabError(f"{run}: a training run without checkpoints (no checkpoints/step-*/config.json)")
    else:
        series = [run_checkpoint(run)]
    return Subject(label, str(run), "run", None, [Checkpoint(str(path), checkpoint_step(path)) for path in series])


def discover(path: str, methods: list[str] | None = None, checkpoints: str = "latest") -> list[Subject]:
    """The subjects to analyse for ``path`` (see the module doc)."""
    if checkpoints not in CHECKPOINT_CHOICES:
        raise RopelabError(f"--checkpoints must be one of {', '.join(CHECKPOINT_CHOICES)}, got {checkpoints!r}")
    root = Path(str(path)).expanduser()
    if is_experiment(root):
        runs = sorted(p for p in (root / "models").iterdir() if is_run(p))
        if not runs:
            raise RopelabError(f"{root}: an experiment directory without runs (models/<name>/checkpoints/...)")
        runs.sort(key=lambda p: (p.name != "rope", p.name))  # the baseline first
        subjects = [_run_subject(run, run.name, checkpoints) for run in runs]
    elif is_run(root):
        subjects = [_run_subject(root, _run_label(root), checkpoints)]
    else:
        if checkpoints == "all":
            raise RopelabError(
                f"--checkpoints all needs a training run directory (RUN/checkpoints/step-*), got {str(path)!r}"
            )
        subjects = [
            Subject(root.name if root.exists() else str(path), str(path), "model", None, [Checkpoint(str(path))])
        ]
    if not methods:
        return subjects
    many = len(subjects) > 1
    return [
        Subject(f"{s.label} [{m}]" if many else m, s.source, s.kind, m, list(s.checkpoints))
        for s in subjects
        for m in methods
    ]
