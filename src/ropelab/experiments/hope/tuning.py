"""The HoPE experiment's learning rate, tuned per encoding on development files.

The recipe's learning rate was chosen on ``rope`` pilots only, which can favour RoPE. Before the
models are trained, every encoding gets a short run (:data:`TUNE_STEPS` steps, seed = the
experiment's, the recipe otherwise) at each learning rate of :data:`LR_GRID`; each is scored by
its next-token loss on **development files**: files of the training corpus' validation split
that no evaluation task reads (the split by content hash, minus the evaluation holdout). The
lowest development loss picks the encoding's learning rate (ties: the lower rate); every seed of
that encoding then trains with it. Runs go to ``tuning/<encoding>.lr<rate>/``; the scores and the
choice to ``tuning.json``, written once (a resumed experiment never re-chooses).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_write_text
from ropelab.data.corpus import Corpus

#: learning rates tried per encoding (the recipe's 3e-3 in the middle)
LR_GRID = (1e-3, 3e-3, 1e-2)
#: steps of each tuning run (a third of a recipe run: long enough for the loss to separate)
TUNE_STEPS = 1000
#: development windows scored (each the first train length + 1 tokens of one file)
DEV_WINDOWS = 64
MIN_WINDOWS = 2


def development_files(data: list[str], val_fraction: float, split_seed: int, holdout: list[str]) -> list[Path]:
    """Validation-split files of the training corpus that the evaluation never reads."""
    corpus = Corpus.from_sources(data, val_fraction=val_fraction, seed=split_seed, holdout=holdout)
    held = {str(Path(p).resolve()) for p in holdout}
    return [f.path for f in corpus.split("val") if str(f.path.resolve()) not in held]


def development_windows(files: list[Path], tokenizer, length: int, count: int = DEV_WINDOWS) -> list[list[int]]:
    """The first ``length + 1`` tokens of each development file long enough, at most ``count``."""
    windows = []
    for path in sorted(files, key=str):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        ids = tokenizer.encode(text[: (length + 1) * 12])[: length + 1]
        if len(ids) == length + 1:
            windows.append(ids)
        if len(windows) == count:
            break
    if len(windows) < MIN_WINDOWS:
        raise RopelabError(
            f"only {len(windows)} development files hold {length + 1} tokens; tuning needs {MIN_WINDOWS} "
            "(a larger corpus, or --no-tune)"
        )
    return windows


@torch.no_grad()
def development_loss(model, windows: list[list[int]]) -> float:
    """Mean next-token loss over the development windows."""
    model.eval()
    ids = torch.tensor(windows)
    hidden = model.hidden_states(ids[:, :-1])
    return float(model.losses_from_hidden(hidden, ids[:, 1:]).mean())


def choose(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per encoding, the learning rate with the lowest development loss (ties: the lower rate)."""
    return {pe: float(min(by_lr, key=lambda lr: (by_lr[lr], float(lr)))) for pe, by_lr in scores.items()}


def load(out: Path) -> dict | None:
    path = out / "tuning.json"
    return json.loads(path.read_text()) if path.is_file() else None


def save(out: Path, scores: dict[str, dict[str, float]], steps: int, files: int) -> dict:
    found = {"grid": list(LR_GRID), "steps": steps, "development_files": files, "scores": scores,
             "chosen": choose(scores)}  # fmt: skip
    atomic_write_text(out / "tuning.json", json.dumps(found, indent=2))
    return found


def run_name(pe_name: str, lr: float) -> str:
    return f"{pe_name}.lr{lr:g}"
