"""One runner for every task x method x length: results streamed to JSONL, resumable.

    run = evaluate(model, tokenizer, methods=["rope", "yarn:factor=2"], tasks=["ppl", "passkey"],
                   lengths=["0.5x", "1x", "1.5x"], samples=2, out="runs/demo")

A run directory holds ``config.json`` (everything needed to reproduce it), ``results.jsonl`` (one
record per task x method x length x sample, appended as soon as it is measured, so an interrupted
run resumes where it stopped). :func:`ropelab.reporting.eval.write_report` then writes ``summary.json``,
``report.md`` and the plots beside them.

``window`` is a reference "method" in every run: the model's own method with what it sees limited
to the training length. For the ``context`` task that is one pass with attention limited to the
previous ``L`` tokens plus four sink tokens (:mod:`ropelab.pe.sliding`); for the other tasks each
input is truncated to its last ``L`` tokens. A method that does not beat it is not using the
longer context.

The runner works on whatever device and dtype the model has (``load_model(..., device=,
dtype=)``): token ids and targets are made on the model's device, losses and log-probabilities
come from float32 logits, and only Python numbers reach ``results.jsonl``. The dtype is part of
the run's configuration (``config.json``; runs written before it was recorded were float32), so a
bf16 run never resumes into a float32 one; the device is not (resuming a CPU run on a GPU is fine).

Several processes (``torchrun --nproc_per_node N -m ropelab eval ...``; :class:`Shard`) share a
run out: the units of work come in *groups* -- the units of one method and one sample index, in
their run order -- because a group's units share forward passes (a shorter ppl length is read
from the longest one's pass, ppl on the haystack from the passkey's); process ``r`` measures the
groups ``g`` with ``g % N == r`` (numbered in run order over what is left to do) and appends their
records to its own ``results.rank-<r>.jsonl``. The ``window`` reference's groups run after every
other group is done (a barrier), since a record of the window that cuts nothing is a copy of the
own method's. Rank 0 then merges every record into ``results.jsonl`` in the order one process
writes them and removes the part files. Every group starts with no pass remembered, alone or
sharded, so a run gives the same records with 1 or N processes (timing aside; tested). An
interrupted run resumes with any number of processes: what ``results.jsonl`` and any part files
hold is done; a group cut short runs again from its first unit, the units measured already
without being written again, so its later units read what they would have read uninterrupted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ropelab.core.errors import RopelabError
from ropelab.eval.evaluator import REFERENCE, Evaluator, hierarchy_positions, measure, use_method, window_prefill
from ropelab.eval.plan import (
    MAX_SAMPLES,
    PPL_DOCUMENTS,
    Plan,
    RunConfig,
    Unit,
    check_document_tasks,
    check_samples,
    plan_run,
    run_config,
    unit_group,
    unit_key,
    units_to_do,
)
from ropelab.eval.records import (
    PART,
    RESULTS,
    OwnRecords,
    check_run_dir,
    done_keys,
    merge_parts,
    open_run,
    part_files,
    read_results,
)
from ropelab.model.device import dtype_name

__all__ = [
    "MAX_SAMPLES",
    "PART",
    "PPL_DOCUMENTS",
    "REFERENCE",
    "RESULTS",
    "Evaluator",
    "RunConfig",
    "Shard",
    "check_document_tasks",
    "check_run_dir",
    "check_samples",
    "evaluate",
    "hierarchy_positions",
    "read_results",
    "window_prefill",
]


def _no_barrier() -> None:
    return None


@dataclass(frozen=True)
class Shard:
    """This process's share of a run: rank ``rank`` of ``world_size`` processes, which
    ``barrier()`` waits for (``torch.distributed.barrier`` under torchrun). The default is one
    process doing everything."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = field(default=_no_barrier, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise RopelabError(f"rank {self.rank} is not in 0..{self.world_size - 1}")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def evaluate(
    model,
    tokenizer,
    model_name: str,
    methods: list[str],
    tasks: list[str],
    lengths: list[str],
    samples: int,
    out: str | os.PathLike,
    seed: int = 0,
    include_window: bool = True,
    progress: bool = True,
    task_lengths: dict[str, list[str]] | None = None,
    ppl_document: str = "code",
    shard: Shard | None = None,
    order: str = "method",
    documents: list | None = None,
) -> Path:
    """Run every task x method x length x sample into ``out``; returns the run directory.

    ``lengths`` apply to every task unless ``task_lengths`` names other lengths for a task.
    ``ppl_document="haystack"`` scores ppl on the passkey haystacks (see :mod:`ropelab.eval.tasks.ppl`):
    one forward pass per method and sample then serves both tasks. ``shard``: this process's share
    when several processes run it (every one calls this with the same arguments; see the module's
    docstring); ``results.jsonl`` is whole when it returns, on every process. ``order``: the units
    run method by method (``"method"``), or sample by sample (``"sample"``: every method on the
    first document, then the next -- an interrupted long study then holds complete pairs).
    ``documents``: the user's documents (:func:`ropelab.eval.user_documents.load_documents`) for
    every task that reads documents, in place of the built-in ones.
    """
    if order not in ("method", "sample"):
        raise RopelabError(f"order must be 'method' or 'sample', got {order!r}")
    config, task_objects = run_config(
        model_name,
        model.config.train_len,
        methods,
        tasks,
        lengths,
        samples,
        seed=seed,
        include_window=include_window,
        task_lengths=task_lengths or {},
        ppl_document=ppl_document,
        dtype=dtype_name(model.embed_tokens.weight.dtype),
        documents=documents,
    )
    plan = plan_run(config, task_objects, tokenizer, order, model.config.vocab_size)  # every sample, before any write
    out = Path(out)
    shard = shard or Shard()
    open_run(out, config, write=shard.rank == 0)
    shard.barrier()  # config.json is there
    results_path = out / RESULTS
    parts = part_files(out)  # an earlier sharded run's records (any number of processes)
    done = done_keys(results_path).union(*(done_keys(part) for part in parts))
    own = OwnRecords(results_path, model.pe.spec, parts)  # an encoding's spec is canonical
    todo = units_to_do(plan.units, done)
    shard.barrier()  # every process has read what is done before any of them writes
    if not shard.enabled:
        left = sum(unit_key(unit) not in done for unit in todo)
        bar = _bar(progress, len(plan.units), len(plan.units) - left)
        _run_units(model, tokenizer, plan, todo, results_path, own, bar, done)
    else:
        _run_shard(model, tokenizer, plan, todo, out, own, shard, progress, done)
        parts = part_files(out)
    if shard.rank == 0 and parts:
        merge_parts(out, plan, parts)
    shard.barrier()  # results.jsonl is whole
    return out


def _run_shard(
    model,
    tokenizer,
    plan: Plan,
    todo: list[Unit],
    out: Path,
    own: OwnRecords,
    shard: Shard,
    progress: bool,
    done: set[tuple],
) -> None:
    """This process's groups of ``todo`` (every ``world_size``-th, in run order) into its part file:
    first those of the methods, then -- once every process is done with those -- the ``window``
    reference's, which copy the own method's records where the window cuts nothing."""
    groups: dict[tuple[str, int], int] = {}
    for unit in todo:
        groups.setdefault(unit_group(unit), len(groups))
    mine = [unit for unit in todo if groups[unit_group(unit)] % shard.world_size == shard.rank]
    path = out / PART.format(rank=shard.rank)
    left = sum(unit_key(unit) not in done for unit in mine)
    bar = _bar(progress and shard.rank == 0, left, 0, desc=f"evaluating (rank 0 of {shard.world_size})")
    try:
        _run_units(model, tokenizer, plan, [u for u in mine if u[0] != REFERENCE], path, own, bar, done, close=False)
        shard.barrier()  # every method's records are written
        window = [u for u in mine if u[0] == REFERENCE]
        if window:
            others = [part for part in part_files(out) if part != path]
            for record in (r for part in others for r in read_results(part)):
                own.add(record)
        shard.barrier()  # ... and read before any window record is appended
        _run_units(model, tokenizer, plan, window, path, own, bar, done, close=False)
        shard.barrier()  # every record is written
    finally:
        bar.close()


def _bar(progress: bool, total: int, initial: int, desc: str = "evaluating") -> tqdm:
    return tqdm(total=total, initial=initial, disable=not progress, desc=desc, unit="sample", file=sys.stderr)


def _run_units(
    model,
    tokenizer,
    plan: Plan,
    todo: list[Unit],
    results_path: Path,
    own: OwnRecords,
    bar: tqdm,
    done: set[tuple] = frozenset(),
    close: bool = True,
) -> None:
    """Measure ``todo`` in order, appending each record to ``results_path`` as soon as it is measured
    (those of ``done`` units are not written: they run for the passes they leave); the model's method
    is switched per unit and restored at the end (the model's own encoding object: a learned one
    keeps its trained parameters). Each group of units (:func:`unit_group`) starts with no pass
    remembered."""
    own_pe = model.pe
    evaluator, group = None, None
    try:
        with open(results_path, "a") as results:
            for method, task, sample in todo:
                if evaluator is None or evaluator.method != method:
                    use_method(model, own_pe, own_pe.spec if method == REFERENCE else method)
                    evaluator = Evaluator(model, tokenizer, method)
                if unit_group((method, task, sample)) != group:
                    evaluator.forget()
                    group = unit_group((method, task, sample))
                bar.set_postfix_str(f"{method} {task.name} {sample.length}", refresh=False)
                record = own.window_copy(evaluator, task, sample) or measure(
                    evaluator, task, sample, plan.related(task, sample), plan.config.seed
                )
                if unit_key((method, task, sample)) in done:  # run again for its pass; its record is there
                    continue
                results.write(json.dumps(record) + "\n")
                results.flush()
                own.add(record)
                bar.update(1)
    finally:
        if close:
            bar.close()
        use_method(model, own_pe, own_pe.spec)
