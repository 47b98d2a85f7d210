"""The training loop: ``train(TrainConfig(...), out)``.

One optimizer step consumes ``batch_size`` sequences of ``train_len + 1`` tokens: samples
``[step * batch_size, (step + 1) * batch_size)`` of the data order (:mod:`ropelab.data.loader`),
each process taking a contiguous share and each share split into micro-batches. Every
micro-batch's mean token loss is divided by the number of micro-batches, and DDP averages the
gradients over processes, so the gradient is the mean over the whole global batch -- the same
as one process computing it alone (up to float summation order; tested).

``parallel="fsdp"`` (``ropelab train --parallel fsdp`` under torchrun) shards the model with FSDP2
instead (:func:`ropelab.train.distributed.shard_model`: every block, then the root): parameters,
gradients and AdamW's state are split over the processes, the update is the same (reduce-scatter
averages the gradients; tested against one process). Checkpoints stay ordinary single-file ropelab
checkpoints: every process takes part in gathering the whole weights and optimizer state onto rank
0's CPU, which writes them exactly as an unsharded run does, so a run resumes under DDP, FSDP or in
one process alike (all on the same files). The model is built, calibrated and resumed whole on
every process, then sharded when the loop starts.

Exact resume: a checkpoint stores the weights, AdamW's state, the RNG state and the step; the
data position is ``step * batch_size`` and the learning rate a function of the step, so a run
interrupted (SIGINT / SIGTERM: it finishes the current step and writes a checkpoint) and started
again with the same command ends with bit-identical weights (tested). ``log.jsonl`` lines after
the resumed step are dropped, so the log reads as one run.

On CUDA the forward runs under bf16 autocast (weights, optimizer and positions stay float32:
RoPE angles are float32 elementwise products that autocast does not touch); on CPU it is float32.

The parts: :func:`train` sets up the process group and runs a :class:`Trainer` -- ``setup``,
``resume``, ``write_run_record``, then ``fit``, the loop of ``train_step``, ``log_step`` (with
``validate``) and ``checkpoint``. Checkpoint files: :mod:`ropelab.train.state`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from ropelab.core.errors import CheckpointError, RopelabError
from ropelab.core.io import atomic_write_text
from ropelab.core.log import log
from ropelab.data import ChunkSampler, Corpus, TokenData, evenly_spaced_chunks, prepare_data
from ropelab.data.synthetic import MixtureSampler
from ropelab.model.checkpoint import CHECKPOINTS, checkpoint_name, load_checkpoint
from ropelab.model.config import ModelConfig
from ropelab.model.transformer import Transformer
from ropelab.train import distributed, state
from ropelab.train.config import RUNTIME_FIELDS, TrainConfig, learning_rate, make_optimizer
from ropelab.train.parallel import check_shardable, shard_fsdp, unsharded_copy, wrap_ddp
from ropelab.train.run_files import (
    LOG,
    TRAIN_CONFIG,
    Progress,
    TrainResult,
    check_resumable,
    describe_result,
    read_log,
    run_record,
    truncate_log,
)

__all__ = [
    "LOG",
    "TRAIN_CONFIG",
    "TrainResult",
    "Trainer",
    "build_model",
    "calibrate_step_seconds",
    "describe_result",
    "load_data",
    "make_optimizer",
    "read_log",
    "train",
    "training_sampler",
    "validation_loss",
]


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to stop after the current step; a second one is immediate."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
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
    model: Transformer,
    sampler: ChunkSampler,
    chunk_ids: list[int],
    micro: int,
    info: distributed.Dist,
    lockstep: bool = False,
) -> float:
    """Mean token loss over the fixed validation sequences (shared out over processes).

    ``lockstep`` (a sharded model, whose every forward is a collective): every process runs as
    many forwards as the one with the most sequences, the extra ones on its last batch, unscored."""
    was_training = model.training
    model.eval()
    mine = chunk_ids[info.rank :: info.world_size]
    starts = list(range(0, len(mine), micro))
    if lockstep:
        most = math.ceil(len(chunk_ids[0 :: info.world_size]) / micro)  # rank 0 has the most
        starts += [None] * (most - len(starts))
    total, count = 0.0, 0
    batch = sampler.chunks(chunk_ids[:1]).to(info.device) if lockstep else None  # one with no sequence of its own
    for start in starts:
        if start is not None:
            batch = sampler.chunks(mine[start : start + micro]).to(info.device)
        with _autocast(info.device):
            loss = _loss(model, batch)
        if start is None:
            continue
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
        trainer = Trainer(config, Path(out), info, progress=progress, on_step=on_step, max_seconds=max_seconds)
        trainer.setup()
        trainer.resume()
        trainer.write_run_record()
        return trainer.fit()
    finally:
        distributed.teardown(info)


def _set_threads(config: TrainConfig, info: distributed.Dist) -> None:
    """``config.threads`` when set; else, under torchrun on CPU, the cores shared out over the
    machine's processes; else torch's default."""
    threads = config.threads or distributed.default_threads(info)
    if threads:
        torch.set_num_threads(threads)


def _batch_split(config: TrainConfig, world_size: int) -> tuple[int, int, int]:
    """(sequences each process takes per step, micro-batch size, micro-batches per step)."""
    if config.batch_size % world_size:
        raise RopelabError(f"batch size {config.batch_size} is not divisible by {world_size} processes")
    per_rank = config.batch_size // world_size
    micro = config.micro_batch_size or per_rank
    if per_rank % micro:
        raise RopelabError(
            f"micro-batch size {micro} does not divide the {per_rank} sequences each process takes per step"
        )
    return per_rank, micro, per_rank // micro


def _calibrated_steps(
    config: TrainConfig,
    model: Transformer,
    sampler: ChunkSampler | MixtureSampler,
    micro: int,
    accum: int,
    info: distributed.Dist,
    start_time: float,
) -> int:
    """The steps that fit in ``config.minutes``: 95% of it, less the time since ``start_time``,
    over the slowest process's :func:`calibrate_step_seconds`."""
    seconds = calibrate_step_seconds(model, sampler, micro, accum, info.device)
    seconds = info.all_reduce([seconds], op="max")[0]
    budget = config.minutes * 60 * 0.95 - (time.perf_counter() - start_time)
    steps = max(1, int(budget / seconds))
    log(f"calibrated {seconds:.3f} s per step: {steps} steps fit in {config.minutes:g} minutes")
    return steps


class Trainer:
    """One run of :func:`train` in ``out``, in the order :func:`train` calls its parts:

    * :meth:`setup`: data, model, samplers, the batch split, the number of steps (calibrated when
      only ``minutes`` is given) and the optimizer;
    * :meth:`resume`: weights, optimizer, RNG and counters from the run's newest checkpoint;
    * :meth:`write_run_record`: ``train_config.json``, and ``log.jsonl`` cut back to the step;
    * :meth:`fit`: the loop of :meth:`train_step`, :meth:`log_step` (with :meth:`validate`) and
      :meth:`checkpoint`, until the last step, a signal or the time limit.
    """

    def __init__(
        self,
        config: TrainConfig,
        out: Path,
        info: distributed.Dist,
        *,
        progress: bool = True,
        on_step=None,
        max_seconds: float | None = None,
    ) -> None:
        self.start_time = time.perf_counter()
        self.config, self.out, self.info = config, out, info
        self.progress, self.on_step, self.max_seconds = progress, on_step, max_seconds
        self.checkpoints = out / CHECKPOINTS
        # what a checkpoint stores and resume restores
        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        self.train_loss: float | None = None
        self.val_loss: float | None = None
        self.last_checkpoint: Path | None = None
        self.sharded = False  # True once the loop has sharded the model with FSDP2 (parallel="fsdp")

    def setup(self) -> None:
        """Build what the run needs; the step count is the saved one when resuming."""
        config, info = self.config, self.info
        _set_threads(config, info)
        self.saved = check_resumable(self.out, config)
        self.data = load_data(config, info, self.progress)
        self.model = build_model(config, self.data.tokenizer.vocab_size, info.device)
        if config.parallel == "fsdp" and info.enabled:
            check_shardable(self.model, config)
        train_len = self.model.config.train_len
        self.train_sampler = training_sampler(config, self.data, train_len)
        val = self.data.val
        self.val_sampler = ChunkSampler(val, train_len, config.seed, "val") if len(val) > train_len else None
        self.val_chunks = evenly_spaced_chunks(self.val_sampler, config.val_sequences) if self.val_sampler else []
        self.per_rank, self.micro, self.accum = _batch_split(config, info.world_size)
        if self.saved is not None:
            steps = self.saved["resolved"]["steps"]
        elif config.steps is not None:
            steps = config.steps
        else:
            steps = _calibrated_steps(
                config, self.model, self.train_sampler, self.micro, self.accum, info, self.start_time
            )
        self.steps = steps
        self.resolved = {
            "steps": steps,
            "warmup": config.resolved_warmup(steps),
            "checkpoint_every": config.resolved_checkpoint_every(steps),
            "eval_every": config.resolved_eval_every(steps),
            "micro_batch_size": self.micro,
            "grad_accumulation": self.accum,
            "world_size": info.world_size,
            "parallel": config.parallel if info.enabled else None,
            "tokens_per_step": config.batch_size * train_len,
            "train_len": train_len,
        }
        self.optimizer = make_optimizer(self.model, config)

    def resume(self) -> None:
        """Continue from the newest checkpoint of a run started before (a new run starts at 0)."""
        latest = state.latest_checkpoint(self.checkpoints) if self.saved is not None else None
        if latest is not None:
            self.step, self.tokens, self.elapsed_before = _resume(latest, self.model, self.optimizer, self.info)
            log(f"resuming {self.out} from {latest.name} (step {self.step} of {self.steps})")
        self.last_checkpoint = latest
        if self.config.minutes is not None:  # the budget covers the whole run, resumed parts included
            budget_left = self.config.minutes * 60 - self.elapsed_before
            self.max_seconds = budget_left if self.max_seconds is None else min(self.max_seconds, budget_left)

    def write_run_record(self) -> None:
        """``train_config.json`` (:func:`run_record`); ``log.jsonl`` lines after the step are dropped."""
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            record = run_record(self.config, self.resolved, self.model, self.data, self.info, self.saved)
            atomic_write_text(self.out / TRAIN_CONFIG, json.dumps(record, indent=2))
            truncate_log(self.out / LOG, self.step)
        self.info.barrier()

    def fit(self) -> TrainResult:
        """Run the steps left; stop after a step on SIGINT / SIGTERM or at ``max_seconds``."""
        if self.step >= self.steps:
            log(f"{self.out} is already complete ({self.step} steps)")
            return self._result("complete", self.elapsed_before)
        if self.config.parallel == "fsdp" and self.info.enabled:  # sharded in place: also what the loop runs
            self.model, self.optimizer = shard_fsdp(self.model, self.optimizer, self.config, self.info)
            self.net, self.sharded = self.model, True
        else:
            self.net = wrap_ddp(self.model, self.info)
        status = "complete"
        with Progress(self.out, self.config, self.steps, self.step, self.info, self.progress) as report:
            self.loop_start = time.perf_counter()
            self.interval_start, self.interval_tokens = self.loop_start, 0
            self.net.train()
            with _StopFlag() as stop:
                while self.step < self.steps:
                    lr, step_loss, grad_norm = self.train_step()
                    record = self.log_step(lr, step_loss, grad_norm, report)
                    report.bar.update(1)
                    if self.on_step is not None:
                        self.on_step(self.step, record)
                    stopped = self._checkpoint_or_stop(stop)
                    if stopped is not None:
                        status = stopped
                        break
        seconds = self.elapsed_before + time.perf_counter() - self.loop_start
        if status != "complete":
            log(
                f"stopped at step {self.step} of {self.steps} ({status}); "
                f"the same command resumes from {self.last_checkpoint}"
            )
        return self._result(status, seconds)

    def train_step(self) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One optimizer step over this process's share of the global batch, in micro-batches
        (DDP and FSDP sync gradients on the last only). Returns (lr, this process's mean loss, grad norm)."""
        config, info, accum, micro = self.config, self.info, self.accum, self.micro
        lr = learning_rate(self.step, self.steps, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        first = self.step * config.batch_size + info.rank * self.per_rank
        step_loss = torch.zeros((), device=info.device)  # no host sync per micro-batch
        for k in range(accum):
            batch = self.train_sampler.batch(first + k * micro, micro).to(info.device, non_blocking=True)
            sync = not info.enabled or k == accum - 1
            if self.sharded:
                self.net.set_requires_gradient_sync(sync)
            no_sync = self.net.no_sync() if not sync and not self.sharded else nullcontext()
            with no_sync, _autocast(info.device):
                loss = _loss(self.net, batch) / accum
            loss.backward()
            step_loss += loss.detach().float()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip or float("inf"))
        grad_norm = distributed.to_local_value(grad_norm)  # sharded: a DTensor, gathered
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += self.resolved["tokens_per_step"]
        self.interval_tokens += self.resolved["tokens_per_step"]
        return lr, step_loss, grad_norm

    def log_step(self, lr: float, step_loss: torch.Tensor, grad_norm: torch.Tensor, report: Progress) -> dict | None:
        """The step's record, written to ``log.jsonl``, every ``log_every`` steps, every
        ``eval_every`` (then with the validation loss) and at the last; None at other steps."""
        step, steps = self.step, self.steps
        want_log = step % self.config.log_every == 0 or step == steps
        want_eval = self.val_sampler is not None and (step % self.resolved["eval_every"] == 0 or step == steps)
        if not (want_log or want_eval):
            return None
        self.train_loss = self.info.all_reduce([float(step_loss)], op="mean")[0]
        now = time.perf_counter()
        record = {
            "step": step,
            "tokens": self.tokens,
            "loss": self.train_loss,
            "lr": lr,
            "tokens_per_s": self.interval_tokens / max(now - self.interval_start, 1e-9),
            "grad_norm": float(grad_norm),
            "elapsed_s": round(self.elapsed_before + now - self.loop_start, 3),
        }
        if want_eval:
            self.val_loss = self.validate()
            record["val_loss"] = self.val_loss
        report.write(record, self.val_loss)
        self.interval_start, self.interval_tokens = time.perf_counter(), 0
        return record

    def validate(self) -> float:
        """Mean token loss over the fixed validation sequences (:func:`validation_loss`)."""
        return validation_loss(
            self.model, self.val_sampler, self.val_chunks, self.micro, self.info, lockstep=self.sharded
        )

    def _checkpoint_or_stop(self, stop: _StopFlag) -> str | None:
        """Checkpoint when due, at the last step or when stopping; the status to stop with
        ("interrupted", "time limit") or None to go on. All processes take the same decision."""
        out_of_time = self.max_seconds is not None and time.perf_counter() - self.loop_start >= self.max_seconds
        flags = self.info.all_reduce([float(stop.signal is not None), float(out_of_time)], op="max")
        if self.step == self.steps or self.step % self.resolved["checkpoint_every"] == 0 or any(flags):
            self.last_checkpoint = self.checkpoint()
        if flags[0]:
            return "interrupted"
        if flags[1] and self.step < self.steps:
            return "time limit"
        return None

    def checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNN`` for this step on the main process (the others wait):
        atomically, then older checkpoints lose their resume files and, beyond ``config.keep``,
        are removed (:func:`ropelab.train.state.write_checkpoint`)."""
        config, step = self.config, self.step
        path = None
        model, optimizer = self.model, self.optimizer
        if self.sharded:  # gathered whole onto rank 0 (every process takes part)
            model, optimizer = unsharded_copy(self.model, self.optimizer, config, self.info)
        if self.info.main:
            trainer_state = {
                "step": step,
                "tokens": self.tokens,
                "samples": step * config.batch_size,
                "epoch": self.train_sampler.epoch_of(step * config.batch_size),
                "elapsed_s": self.elapsed_before + time.perf_counter() - self.loop_start,
                "train_loss": self.train_loss,
                "val_loss": self.val_loss,
                "steps": self.steps,
            }
            extra = {
                "step": step,
                "tokens": self.tokens,
                "train_loss": self.train_loss,
                "val_loss": self.val_loss,
                "run": str(self.out.resolve()),
                "train_config": config.to_dict(),
            }
            files = self.data.tokenizer_files
            path = state.write_checkpoint(
                self.checkpoints, step, model, optimizer, files, trainer_state, extra, config.keep
            )
        self.info.barrier()
        return self.checkpoints / checkpoint_name(step) if path is None else path

    def _result(self, status: str, seconds: float) -> TrainResult:
        return TrainResult(
            out=self.out,
            step=self.step,
            steps=self.steps,
            tokens=self.tokens,
            train_loss=self.train_loss,
            val_loss=self.val_loss,
            seconds=seconds,
            status=status,
            checkpoint=self.last_checkpoint,
        )


def _resume(directory: Path, model: Transformer, optimizer, info: distributed.Dist) -> tuple[int, int, float]:
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


__all__ = ["RUNTIME_FIELDS", "TrainResult", "describe_result", "read_log", "train"]
