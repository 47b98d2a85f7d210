"""A training run's own files besides its checkpoints: ``train_config.json`` (what was asked and
resolved, checked when a run resumes), ``log.jsonl`` (a record per logged step, cut back on resume)
and the progress bar, and the result line a run ends with."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ropelab.core.io import atomic_write_text, differing_keys, saved_settings
from ropelab.core.version import __version__
from ropelab.data import TokenData
from ropelab.model.transformer import Transformer
from ropelab.train import distributed
from ropelab.train.config import TrainConfig

TRAIN_CONFIG = "train_config.json"


LOG = "log.jsonl"


@dataclass(kw_only=True)
class TrainResult:
    out: Path
    step: int  # optimizer steps done
    steps: int  # steps the run was planned for
    tokens: int
    train_loss: float | None
    val_loss: float | None
    seconds: float
    status: str  # "complete" | "interrupted" | "time limit"
    checkpoint: Path | None

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def truncate_log(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def check_resumable(out: Path, config: TrainConfig) -> dict | None:
    """The saved train_config.json when ``out`` holds a run with the same settings; an error
    when it holds another run; None when it holds none."""

    def differing(saved: dict) -> list[str]:
        return differing_keys(config.semantic(), TrainConfig.from_dict(saved["requested"]).semantic())

    return saved_settings(out / TRAIN_CONFIG, "training run", differing)


def run_record(
    config: TrainConfig, resolved: dict, model: Transformer, data: TokenData, info: distributed.Dist, saved: dict | None
) -> dict:
    """What ``train_config.json`` holds: the settings asked for and resolved, the model, the data,
    device and versions. A resumed run keeps its saved record but for how the batch is split over
    processes and micro-batches (which may differ between sessions)."""
    if saved is not None:
        return {
            **saved,
            "resolved": {
                **saved["resolved"],
                **{k: resolved[k] for k in ("micro_batch_size", "grad_accumulation", "world_size", "parallel")},
            },
        }
    return {
        "requested": config.to_dict(),
        "resolved": resolved,
        "model": model.config.to_dict(),
        "parameters": model.num_parameters,
        "data": {
            k: data.meta[k]
            for k in ("key", "corpus_hash", "sources", "files", "tokens", "tokenizer", "vocab_size", "skipped")
            if k in data.meta
        },
        "data_dir": str(data.directory),
        "device": info.device.type,
        "precision": "bf16 autocast" if info.device.type == "cuda" else "float32",
        "versions": {"ropelab": __version__, "torch": torch.__version__},
    }


class Progress:
    """The loop's report: a line of ``log.jsonl`` per record (main process) and the tqdm bar."""

    def __init__(self, out: Path, config: TrainConfig, steps: int, step: int, info: distributed.Dist, show: bool):
        self.bar = tqdm(
            total=steps,
            initial=step,
            disable=not (show and info.main),
            desc=f"train {config.pe}",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.file = open(out / LOG, "a") if info.main else None

    def __enter__(self) -> Progress:
        return self

    def write(self, record: dict, val_loss: float | None) -> None:
        """Append ``record``; the bar shows it with the latest validation loss."""
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        self.bar.set_postfix_str(
            f"loss {record['loss']:.3f}"
            + (f" val {val_loss:.3f}" if val_loss is not None else "")
            + f" lr {record['lr']:.2e} {record['tokens_per_s']:,.0f} tok/s",
            refresh=False,
        )

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()


def read_log(out: str | os.PathLike) -> list[dict]:
    """The records of ``OUT/log.jsonl`` (a half-written last line is skipped)."""
    records = []
    path = Path(out) / LOG
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def describe_result(result: TrainResult) -> str:
    minutes = result.seconds / 60
    text = f"{result.status}: {result.step}/{result.steps} steps, {result.tokens:,} tokens in {minutes:.1f} min"
    if result.train_loss is not None and math.isfinite(result.train_loss):
        text += f"; train loss {result.train_loss:.3f}"
    if result.val_loss is not None:
        text += f", val loss {result.val_loss:.3f}"
    if result.checkpoint is not None:
        text += f"; checkpoint {result.checkpoint}"
    if result.status == "time limit":
        text += (
            f". WARNING: the time ran out at step {result.step} of {result.steps}: the learning-rate schedule did not "
            "finish, so this is not the model a finished run gives; a new run with more --minutes (or fixed --steps) "
            "finishes its schedule"
        )
    return text
