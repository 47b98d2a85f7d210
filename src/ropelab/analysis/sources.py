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
import re
from dataclasses import dataclass, field
from pathlib import Path

from ropelab.errors import RopelabError
from ropelab.model.checkpoint import CONFIG

_STEP = re.compile(r"step-(\d+)$")
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
    return path.is_dir() and ((path / "checkpoints").is_dir() or (path / "train_config.json").is_file())


def is_experiment(path: Path) -> bool:
    return path.is_dir() and (path / "models").is_dir() and not (path / CONFIG).is_file()


def step_checkpoints(run: Path) -> list[Checkpoint]:
    """Every ``checkpoints/step-N`` directory holding a checkpoint, in step order."""
    found = []
    folder = run / "checkpoints"
    if folder.is_dir():
        for child in folder.iterdir():
            match = _STEP.match(child.name)
            if match and child.is_dir() and (child / CONFIG).is_file():
                found.append(Checkpoint(str(child), int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run: Path) -> Checkpoint:
    """The checkpoint ``checkpoints/latest.json`` names, else the highest step."""
    steps = step_checkpoints(run)
    named = _from_latest_json(run / "checkpoints" / "latest.json")
    if named is not None:
        for checkpoint in steps:
            if Path(checkpoint.path).name == named or checkpoint.step == _step_of(named):
                return checkpoint
        candidate = run / "checkpoints" / named
        if (candidate / CONFIG).is_file():
            return Checkpoint(str(candidate), _step_of(named))
    if not steps:
        raise RopelabError(f"{run}: a training run without checkpoints (no checkpoints/step-*/config.json)")
    return steps[-1]


def _step_of(name: str | None) -> int | None:
    match = _STEP.match(name or "")
    return int(match.group(1)) if match else None


def _from_latest_json(path: Path) -> str | None:
    """The checkpoint directory name in ``latest.json``: a string, or a dict's path/name/step."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, str):
        return Path(data).name
    if isinstance(data, dict):
        for key in ("checkpoint", "path", "dir", "name", "latest"):
            if isinstance(data.get(key), str):
                return Path(data[key]).name
        if isinstance(data.get("step"), int):
            return f"step-{data['step']:06d}"
    return None


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
    series = step_checkpoints(run) if checkpoints == "all" else [latest_checkpoint(run)]
    if not series:
        raise RopelabError(f"{run}: a training run without checkpoints (no checkpoints/step-*/config.json)")
    return Subject(label, str(run), "run", None, series)


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
