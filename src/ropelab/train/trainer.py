"""The training loop: ``train(TrainConfig(...), out)``.

One optimizer step consumes ``batch_size`` sequences of ``train_len + 1`` tokens: samples
``[step * batch_size, (step + 1) * batch_size)`` of the data order (:mod:`ropelab.data.loader`),
each process taking a contiguous share and each share split into micro-batches. Every
micro-batch's mean token loss is divided by the number of micro-batches, and DDP averages the
gradients over processes, so the gradient is the mean over the whole global batch -- the same
as one process computing it alone (up to float summation order; tested).

Exact resume: a checkpoint stores the weights, AdamW's state, the RNG state and the step; the
data position is ``step * batch_size`` and the learning rate a function of the step, so a run
interrupted (SIGINT / SIGTERM: it finishes the current step and writes a checkpoint) and started
again with the same command ends with bit-identical weights (tested). ``log.jsonl`` lines after
the resumed step are dropped, so the log reads as one run.

On CUDA the forward runs under bf16 autocast (weights, optimizer and positions stay float32:
RoPE angles are float32 elementwise products that autocast does not touch); on CPU it is float32.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ropelab.core.io import atomic_write_text
from ropelab.core.log import log
from ropelab.data import ChunkSampler, Corpus, TokenData, evenly_spaced_chunks, prepare_data
from ropelab.data.synthetic import MixtureSampler
from ropelab.errors import CheckpointError, RopelabError
from ropelab.model.config import ModelConfig
from ropelab.model.transformer import Transformer
from ropelab.train import distributed, state
from ropelab.train.config import RUNTIME_FIELDS, TrainConfig, learning_rate

TRAIN_CONFIG = "train_config.json"
LOG = "log.jsonl"
CHECKPOINTS = "checkpoints"


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


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to stop after the current step; a second one is immediate."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log(f"{signal.Signals(signum).name}: finishing this step, then writing a checkpoint (again to abort)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def build_model(config: TrainConfig, vocab_size: int, device: torch.device) -> Transformer:
    model_config = ModelConfig.from_name(
        config.model_config, pe=config.pe, train_len=config.train_len, vocab_size=vocab_size
    )
    torch.manual_seed(config.seed)
    return Transformer(model_config).to(device)


def make_optimizer(model: Transformer, config: TrainConfig) -> torch.optim.AdamW:
    seen, decay, no_decay = set(), [], []
    for _, param in model.named_parameters():
        if id(param) in seen or not param.requires_grad:
            continue
        seen.add(id(param))
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)


def load_data(config: TrainConfig, info: distributed.Dist, progress: bool) -> TokenData:
    """Tokenized data; under torchrun each machine's local rank 0 builds the cache, others wait."""

    def build() -> TokenData:
        corpus = Corpus.from_sources(
            config.data,
            val_fraction=config.val_fraction,
            seed=config.seed if config.split_seed is None else config.split_seed,
            holdout=config.holdout,
        )
        return prepare_data(corpus, config.tokenizer, progress=progress and info.main)

    if info.local_rank == 0:
        data = build()
        info.barrier()
    else:
        info.barrier()
        data = build()
    return data


def training_sampler(config: TrainConfig, data: TokenData, train_len: int) -> ChunkSampler | MixtureSampler:
    """The order of training sequences: natural chunks, with ``config.synthetic`` of them
    replaced by record sequences when it is positive."""
    natural = ChunkSampler(data.train, train_len, config.seed, "train")
    if not config.synthetic:
        return natural
    return MixtureSampler(natural, data.tokenizer, config.synthetic, config.synthetic_repeat)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


@torch.no_grad()
def validation_loss(
    model: Transformer, sampler: ChunkSampler, chunk_ids: list[int], micro: int, info: distributed.Dist
) -> float:
    """Mean token loss over the fixed validation sequences (shared out over processes)."""
    was_training = model.training
    model.eval()
    mine = chunk_ids[info.rank :: info.world_size]
    total, count = 0.0, 0
    for start in range(0, len(mine), micro):
        batch = sampler.chunks(mine[start : start + micro]).to(info.device)
        with _autocast(info.device):
            loss = _loss(model, batch)
        tokens = batch[:, 1:].numel()
        total += float(loss) * tokens
        count += tokens
    model.train(was_training)
    total, count = info.all_reduce([total, float(count)])
    return total / count


def calibrate_step_seconds(
    model: Transformer, sampler: ChunkSampler | MixtureSampler, micro: int, accum: int, device: torch.device
) -> float:
    """Seconds per optimizer step: two timed micro-batch forward+backward passes after a warm-up
    one, times the accumulation count. Gradients are cleared; no weight changes."""
    batch = sampler.batch(0, micro).to(device)
    times = []
    for i in range(3):
        start = time.perf_counter()
        with _autocast(device):
            _loss(model, batch).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return min(times) * accum * 1.05  # + optimizer step and logging


def _truncate_log(path: Path, step: int) -> None:
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


def _check_resumable(out: Path, config: TrainConfig) -> dict | None:
    """The saved train_config.json when ``out`` holds a run with the same settings; an error
    when it holds another run; None when it holds none."""
    path = out / TRAIN_CONFIG
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        previous = TrainConfig.from_dict(saved["requested"])
    except (OSError, ValueError, KeyError, TypeError, RopelabError):
        raise RopelabError(f"{path}: unreadable; {out} does not hold a ropelab training run") from None
    if previous.semantic() != config.semantic():
        changed = sorted(k for k, v in config.semantic().items() if previous.semantic().get(k) != v)
        raise RopelabError(
            f"{out} holds a training run with other settings ({', '.join(changed)} differ); "
            "choose another --out directory to start a new run"
        )
    return saved


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    on_step=None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Train (or resume) the run in ``out``; returns when done, interrupted or out of time.

    ``on_step(step, record)`` is called on every process after each optimizer step (tests use
    it); ``max_seconds`` stops the run with a checkpoint once that much wall time has passed.
    """
    config.validate()
    info = distributed.setup(config.device)
    try:
        return _train(config, Path(out), info, progress, on_step, max_seconds)
    finally:
        distributed.teardown(info)


def _train(config, out: Path, info: distributed.Dist, progress, on_step, max_seconds) -> TrainResult:
    start_time = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    elif info.enabled and info.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
    saved = _check_resumable(out, config)
    data = load_data(config, info, progress)
    vocab_size = data.tokenizer.vocab_size
    model = build_model(config, vocab_size, info.device)
    train_len = model.config.train_len
    train_sampler = training_sampler(config, data, train_len)
    val_sampler = ChunkSampler(data.val, train_len, config.seed, "val") if len(data.val) > train_len else None
    val_chunks = evenly_spaced_chunks(val_sampler, config.val_sequences) if val_sampler else []

    if config.batch_size % info.world_size:
        raise RopelabError(f"batch size {config.batch_size} is not divisible by {info.world_size} processes")
    per_rank = config.batch_size // info.world_size
    micro = config.micro_batch_size or per_rank
    if per_rank % micro:
        raise RopelabError(
            f"micro-batch size {micro} does not divide the {per_rank} sequences each process takes per step"
        )
    accum = per_rank // micro

    if saved is not None:
        steps = saved["resolved"]["steps"]
    elif config.steps is not None:
        steps = config.steps
    else:
        seconds = calibrate_step_seconds(model, train_sampler, micro, accum, info.device)
        seconds = info.all_reduce([seconds], op="max")[0]
        budget = config.minutes * 60 * 0.95 - (time.perf_counter() - start_time)
        steps = max(1, int(budget / seconds))
        log(f"calibrated {seconds:.3f} s per step: {steps} steps fit in {config.minutes:g} minutes")
    resolved = {
        "steps": steps,
        "warmup": config.resolved_warmup(steps),
        "checkpoint_every": config.resolved_checkpoint_every(steps),
        "eval_every": config.resolved_eval_every(steps),
        "micro_batch_size": micro,
        "grad_accumulation": accum,
        "world_size": info.world_size,
        "tokens_per_step": config.batch_size * train_len,
        "train_len": train_len,
    }
    checkpoints = out / CHECKPOINTS
    optimizer = make_optimizer(model, config)

    step, tokens, elapsed_before, val_loss, train_loss = 0, 0, 0.0, None, None
    latest = state.latest_checkpoint(checkpoints) if saved is not None else None
    if latest is not None:
        step, tokens, elapsed_before = _resume(latest, model, optimizer, info)
        log(f"resuming {out} from {latest.name} (step {step} of {steps})")
    if config.minutes is not None:  # the budget covers the whole run, resumed parts included
        budget_left = config.minutes * 60 - elapsed_before
        max_seconds = budget_left if max_seconds is None else min(max_seconds, budget_left)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        record = {
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
            "versions": {"ropelab": _version(), "torch": torch.__version__},
        }
        if saved is not None:
            record = {
                **saved,
                "resolved": {
                    **saved["resolved"],
                    **{k: resolved[k] for k in ("micro_batch_size", "grad_accumulation", "world_size")},
                },
            }
        atomic_write_text(out / TRAIN_CONFIG, json.dumps(record, indent=2))
        _truncate_log(out / LOG, step)
    info.barrier()

    if step >= steps:
        log(f"{out} is already complete ({step} steps)")
        return TrainResult(
            out=out,
            step=step,
            steps=steps,
            tokens=tokens,
            train_loss=None,
            val_loss=None,
            seconds=elapsed_before,
            status="complete",
            checkpoint=latest,
        )

    net = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    def save(at_step: int) -> Path | None:
        path = None
        if info.main:
            trainer_state = {
                "step": at_step,
                "tokens": tokens,
                "samples": at_step * config.batch_size,
                "epoch": train_sampler.epoch_of(at_step * config.batch_size),
                "elapsed_s": elapsed_before + time.perf_counter() - loop_start,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "steps": steps,
            }
            extra = {
                "step": at_step,
                "tokens": tokens,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "run": str(out.resolve()),
                "train_config": config.to_dict(),
            }
            path = state.write_checkpoint(
                checkpoints, at_step, model, optimizer, data.tokenizer_files, trainer_state, extra, config.keep
            )
        info.barrier()
        return checkpoints / state.checkpoint_name(at_step) if path is None else path

    bar = tqdm(
        total=steps,
        initial=step,
        disable=not (progress and info.main),
        desc=f"train {config.pe}",
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    loop_start = time.perf_counter()
    interval_start, interval_tokens = loop_start, 0
    status, last_checkpoint = "complete", latest
    log_handle = open(out / LOG, "a") if info.main else None
    net.train()
    try:
        with _StopFlag() as stop:
            while step < steps:
                lr = learning_rate(step, steps, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                first = step * config.batch_size + info.rank * per_rank
                step_loss = torch.zeros((), device=info.device)  # no host sync per micro-batch
                for k in range(accum):
                    batch = train_sampler.batch(first + k * micro, micro).to(info.device, non_blocking=True)
                    sync = not info.enabled or k == accum - 1
                    with net.no_sync() if not sync else nullcontext(), _autocast(info.device):
                        loss = _loss(net, batch) / accum
                    loss.backward()
                    step_loss += loss.detach().float()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens += config.batch_size * train_len
                interval_tokens += config.batch_size * train_len

                want_log = step % config.log_every == 0 or step == steps
                want_eval = val_sampler is not None and (step % resolved["eval_every"] == 0 or step == steps)
                if want_log or want_eval:
                    train_loss = info.all_reduce([float(step_loss)], op="mean")[0]
                record = None
                if want_log or want_eval:
                    now = time.perf_counter()
                    record = {
                        "step": step,
                        "tokens": tokens,
                        "loss": train_loss,
                        "lr": lr,
                        "tokens_per_s": interval_tokens / max(now - interval_start, 1e-9),
                        "grad_norm": float(grad_norm),
                        "elapsed_s": round(elapsed_before + now - loop_start, 3),
                    }
                    if want_eval:
                        val_loss = validation_loss(model, val_sampler, val_chunks, micro, info)
                        record["val_loss"] = val_loss
                    if log_handle is not None:
                        log_handle.write(json.dumps(record) + "\n")
                        log_handle.flush()
                    bar.set_postfix_str(
                        f"loss {train_loss:.3f}"
                        + (f" val {val_loss:.3f}" if val_loss is not None else "")
                        + f" lr {lr:.2e} {record['tokens_per_s']:,.0f} tok/s",
                        refresh=False,
                    )
                    interval_start, interval_tokens = time.perf_counter(), 0
                bar.update(1)
                if on_step is not None:
                    on_step(step, record)

                out_of_time = max_seconds is not None and time.perf_counter() - loop_start >= max_seconds
                flags = info.all_reduce([float(stop.signal is not None), float(out_of_time)], op="max")
                if step == steps or step % resolved["checkpoint_every"] == 0 or any(flags):
                    last_checkpoint = save(step)
                if flags[0]:
                    status = "interrupted"
                    break
                if flags[1] and step < steps:
                    status = "time limit"
                    break
    finally:
        bar.close()
        if log_handle is not None:
            log_handle.close()
    seconds = elapsed_before + time.perf_counter() - loop_start
    if status != "complete":
        log(f"stopped at step {step} of {steps} ({status}); the same command resumes from {last_checkpoint}")
    return TrainResult(
        out=out,
        step=step,
        steps=steps,
        tokens=tokens,
        train_loss=train_loss,
        val_loss=val_loss,
        seconds=seconds,
        status=status,
        checkpoint=last_checkpoint,
    )


def _resume(directory: Path, model: Transformer, optimizer, info: distributed.Dist) -> tuple[int, int, float]:
    from ropelab.model.checkpoint import load_checkpoint

    trainer_state, optimizer_tensors, rng = state.read_resume_state(directory)
    loaded = load_checkpoint(directory, device=info.device)  # checks the checksum, config and shapes
    if loaded.config != model.config:
        raise CheckpointError(f"{directory}: holds another model config than this run's")
    model.load_state_dict(loaded.state_dict())
    del loaded
    state.load_optimizer(
        optimizer, state.parameter_names(model), optimizer_tensors, trainer_state["optimizer"]["param_groups"]
    )
    state.restore_rng(rng)
    return int(trainer_state["step"]), int(trainer_state["tokens"]), float(trainer_state.get("elapsed_s", 0.0))


def _version() -> str:
    from ropelab.core.version import __version__

    return __version__


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
    return text


__all__ = ["RUNTIME_FIELDS", "TrainResult", "describe_result", "read_log", "train"]
