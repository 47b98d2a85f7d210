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

import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ropelab.core.checks import int_between, is_int, is_real
from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_write_text, check_out_dir, read_json_file
from ropelab.core.lengths import parse_length
from ropelab.core.log import log
from ropelab.eval import TASKS, get_task
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.hierarchy import align, file_spans, segment_text
from ropelab.model.config import shown
from ropelab.model.device import dtype_name
from ropelab.model.generate import stream
from ropelab.pe import canonical_spec
from ropelab.pe.sliding import SlidingWindow

WINDOW = "window"
RESULTS = "results.jsonl"
#: a process's records while a sharded run is going on, merged into ``results.jsonl`` at its end
PART = "results.rank-{rank}.jsonl"


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


@dataclass(kw_only=True)
class RunConfig:
    model: str
    methods: list[str]
    tasks: list[str]
    lengths: list[int]
    length_labels: list[str]
    task_lengths: dict[str, list[int]]
    samples: int
    seed: int
    train_len: int
    include_window: bool = True
    ppl_document: str = "code"
    dtype: str = "float32"  # the model's weights and activations; angles and losses are float32 always
    documents: list | None = None  # the user's documents (Document.describe()), or None: the built-in ones
    skipped: dict = field(default_factory=dict)  # task -> length -> why that cell cannot run

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _hierarchy_positions(
    sample: Sample, ids: list[int], tokenizer, levels: int, granularity: str = "function"
) -> tuple[torch.Tensor | None, str | None]:
    """HiRoPE positions ``[1, T, levels]`` for ``ids`` (the sample's input) with ``function`` or
    ``class`` segments, or (None, reason)."""
    text = tokenizer.decode(ids)
    encoding = tokenizer.encode_with_offsets(text)
    if encoding.ids != list(ids):
        return None, "re-tokenised prompt differs from the input ids; fixed chunks used"
    chars = sample.extra.get("file_chars")
    if chars:  # a project: each file parsed on its own (the last one as far as the input reaches)
        bounds = [sum(chars[:i]) for i in range(len(chars) + 1)]
        texts = [text[a:b] for a, b in itertools.pairwise(bounds) if a < len(text)]
        spans, _ = file_spans(texts, sample.language, granularity)
    else:
        spans, _ = segment_text(text, sample.language, granularity)
    language = sample.language or "text"
    hierarchy = align(text, encoding.ids, encoding.offsets, spans, language, granularity, levels=levels)
    return hierarchy.positions()[None], None


class Evaluator:
    """Computes :class:`Outputs` for samples under the model's current method.

    It keeps the hidden states of its last forward pass: a later sample whose input is a prefix
    of that pass's input (a shorter ppl length, or a ppl input cut from the passkey haystack just
    evaluated) is scored from them instead of a new pass. For a causal model whose angles do not
    depend on the input length this is exact: token ``t`` sees only tokens ``<= t``.
    """

    def __init__(self, model, tokenizer, method: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.method = method
        self.window = method == WINDOW
        self.train_len = model.config.train_len
        self._last: tuple[list[int], torch.Tensor] | None = None  # (input ids, hidden [T, D]) of the last pass
        self._last_losses: torch.Tensor | None = None  # its next-token losses [T - 1], once asked for

    def forget(self) -> None:
        """Drop the remembered pass (a new group of units: what it measures must not depend on
        which units ran before it on this process)."""
        self._last, self._last_losses = None, None

    def prefill(self, ids: list[int], positions: torch.Tensor | None, cache) -> torch.Tensor:
        """Final hidden states ``[len(ids), D]`` of one pass (``cache``, if given, extended in place).

        For the ``window`` reference the model's encoding is the sliding window
        (:mod:`ropelab.pe.sliding`) during a session: the first ``L`` tokens, where it equals the
        model's own method, run through the own method's fused attention, and the rest continues
        from their cache with the window.
        """
        model = self.model
        if not self.window or len(ids) <= self.train_len:
            return model.hidden_states(_tensor(model, ids), positions, cache)[0]
        return window_prefill(model, self._own, model.pe, ids, cache if cache is not None else model.new_cache())

    @torch.no_grad()
    def session(self, task: Task, sample: Sample) -> dict:
        """Run a ``session`` task (it drives the model itself through :meth:`prefill`)."""
        if not self.window:
            return task.run(self, sample)
        self._own = self.model.pe
        self.model.pe = SlidingWindow(self._own, self.train_len)
        try:
            return task.run(self, sample)
        finally:
            self.model.pe = self._own

    def positions(self, sample: Sample, ids: list[int]) -> tuple[torch.Tensor | None, str | None]:
        pe = self.model.pe
        granularity = getattr(pe, "granularity", "function")
        if self.window or not pe.uses_hierarchy or not sample.language or granularity == "chunk":
            return None, None  # no positions: a hierarchical encoding falls back to fixed chunks
        return _hierarchy_positions(sample, ids, self.tokenizer, pe.levels, granularity)

    def _prefixes_shared(self) -> bool:
        return not self.model.pe.rotation_depends_on_length

    def _shared_source(self, ids: list[int], related: list[Sample]) -> Sample | None:
        """The longest related sample whose input starts with ``ids`` and can be scored in one
        pass for all of them (causal model, angles independent of the input length)."""
        if not self._prefixes_shared():
            return None
        limit = self.train_len if self.window else None
        fitting = [
            s
            for s in related
            if len(s.prompt_ids) >= len(ids)
            and (limit is None or len(s.prompt_ids) <= limit)
            and s.prompt_ids[: len(ids)] == ids
        ]
        return max(fitting, key=lambda s: len(s.prompt_ids), default=None)

    def _hidden(self, sample: Sample, ids: list[int], info: dict) -> torch.Tensor:
        """Final hidden states ``[len(ids), D]``, from the last pass when ``ids`` is a prefix of its input."""
        if self._last is not None and self._prefixes_shared():
            last_ids, hidden = self._last
            if len(last_ids) >= len(ids) and last_ids[: len(ids)] == ids:
                if len(last_ids) > len(ids):
                    info["shared_pass"] = len(last_ids)
                return hidden[: len(ids)]
        positions, note = self.positions(sample, ids)
        if note:
            info["hierarchy"] = note
        hidden = self.model.hidden_states(_tensor(self.model, ids), positions)[0]
        self._last, self._last_losses = (list(ids), hidden), None
        return hidden

    @torch.no_grad()
    def outputs(self, task: Task, sample: Sample, related: list[Sample] = ()) -> tuple[Outputs, dict]:
        info: dict = {}
        ids = list(sample.prompt_ids)
        if task.mode == "loss":
            if len(ids) != sample.length:
                info["input_tokens"] = len(ids)
            if self.window and len(ids) > self.train_len:
                ids = ids[-self.train_len :]
                info["context"] = len(ids)
            source = self._shared_source(ids, related)
            if source is not None:
                info["shared_pass"] = len(source.prompt_ids)
            self._hidden(sample, list(source.prompt_ids) if source is not None else ids, info)
            if self._last_losses is None:  # the whole pass once; every prefix reads its share (``ids`` is one)
                last_ids, hidden = self._last
                targets = _tensor(self.model, last_ids[1:])
                self._last_losses = self.model.losses_from_hidden(hidden[None, :-1], targets)[0]
            return Outputs(losses=self._last_losses[: len(ids) - 1].tolist()), info
        if task.mode == "teacher_forced":
            answer = list(sample.answer_ids)
            if self.window and self.truncates(task, sample):
                ids = ids[-(self.train_len - len(answer)) :]
                info["context"] = len(ids)
            hidden = self._hidden(sample, ids + answer, info)[len(ids) - 1 : -1]
            logits = self.model.lm_head(hidden).float()
            target = _tensor(self.model, answer)[0]
            losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
            return Outputs(answer_losses=losses.tolist(), answer_argmax=logits.argmax(-1).tolist()), info
        if task.mode == "generate":
            if self.window and self.truncates(task, sample):
                ids = ids[-(self.train_len - task.max_new_tokens) :]
                info["context"] = len(ids)
            positions, note = self.positions(sample, ids)
            if note:
                info["hierarchy"] = note
            return Outputs(generated=self._generate(task, ids, positions)), info
        raise RopelabError(f"task {task.name}: unknown mode {task.mode!r}")

    def truncates(self, task: Task, sample: Sample) -> bool:
        """Whether the ``window`` reference would cut this sample's context (otherwise it sees
        exactly what the model's own method sees, and its result is that method's)."""
        if task.mode == "session":
            return len(sample.prompt_ids) > self.train_len
        extra = len(sample.answer_ids) if task.mode == "teacher_forced" else task.max_new_tokens
        return len(sample.prompt_ids) + extra > self.train_len

    def _generate(self, task: Task, ids: list[int], positions) -> str:
        generated: list[int] = []
        text = ""
        for token in stream(
            self.model, _tensor(self.model, ids), task.max_new_tokens, eos_id=self.tokenizer.eos_id, positions=positions
        ):
            if self.tokenizer.eos_id is not None and int(token[0]) == self.tokenizer.eos_id:
                break
            generated.append(int(token[0]))
            text = self.tokenizer.decode(generated)
            if _stopped(text, task.stop):
                break
        return _cut(text, task.stop)


def window_prefill(model, own, sliding, ids: list[int], cache) -> torch.Tensor:
    """Hidden states ``[len(ids), D]`` of the sliding-window reference ``sliding``
    (:class:`ropelab.pe.sliding.SlidingWindow` around ``own``), extending ``cache``.

    The first ``sliding.window`` tokens, where the window cuts nothing, run under ``own`` (its
    fused attention); the rest continue from their cache under ``sliding``, whose far keys are its
    near keys, so the cached keys serve as both sets. ``model.pe`` is left as it was found.
    """
    found, split = model.pe, sliding.window
    tensor = _tensor(model, ids)
    try:
        model.pe = own
        head = model.hidden_states(tensor[:, :split], None, cache)[0]
        cache.share_far_keys()
        if len(ids) <= split:  # nothing beyond the window: the own method alone
            return head
        model.pe = sliding
        tail = model.hidden_states(tensor[:, split:], None, cache)[0]
    finally:
        model.pe = found
    return torch.cat((head, tail))


def _tensor(model, ids: list[int]) -> torch.Tensor:
    """``[1, len(ids)]`` token ids on the model's device."""
    return torch.tensor([ids], device=model.embed_tokens.weight.device)


def _stopped(text: str, stops: Iterable[str]) -> bool:
    body = text.lstrip("\n")
    return any(stop in body for stop in stops) if body.strip() else False


def _cut(text: str, stops: Iterable[str]) -> str:
    body = text.lstrip("\n")
    cut = min((body.find(s) for s in stops if s in body), default=-1)
    return body if cut < 0 else body[:cut]


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
    config, task_objects = _run_config(
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
    plan = _plan(config, task_objects, tokenizer, order)  # every sample is built before anything is written
    out = Path(out)
    shard = shard or Shard()
    _open_run(out, config, write=shard.rank == 0)
    shard.barrier()  # config.json is there
    results_path = out / RESULTS
    parts = _part_files(out)  # an earlier sharded run's records (any number of processes)
    done = _done_keys(results_path).union(*(_done_keys(part) for part in parts))
    own = _OwnRecords(results_path, canonical_spec(model.pe.spec), parts)
    todo = _todo(plan.units, done)
    shard.barrier()  # every process has read what is done before any of them writes
    if not shard.enabled:
        left = sum(_key(unit) not in done for unit in todo)
        bar = _bar(progress, len(plan.units), len(plan.units) - left)
        _run_units(model, tokenizer, plan, todo, results_path, own, bar, done)
    else:
        _run_shard(model, tokenizer, plan, todo, out, own, shard, progress, done)
        parts = _part_files(out)
    if shard.rank == 0 and parts:
        _merge(out, plan, parts)
    shard.barrier()  # results.jsonl is whole
    return out


def _key(unit: _Unit) -> tuple[str, str, int, int]:
    """A unit's record key: (task, method, length, sample index)."""
    method, task, sample = unit
    return (task.name, method, sample.length, sample.index)


def _group(unit: _Unit) -> tuple[str, int]:
    """The units of one method and one sample index share forward passes: they run together, in order."""
    method, _, sample = unit
    return (method, sample.index)


def _todo(units: list[_Unit], done: set[tuple]) -> list[_Unit]:
    """The units to run, in order: of every group with a unit left to measure, its units up to the
    last one left (those before it measured already run again, unwritten, for the passes they leave)."""
    last = {_group(unit): i for i, unit in enumerate(units) if _key(unit) not in done}
    return [unit for i, unit in enumerate(units) if i <= last.get(_group(unit), -1)]


def _part_files(out: Path) -> list[Path]:
    """Every process's part file of a sharded run, by rank."""
    prefix, _, suffix = PART.partition("{rank}")
    ranks = []
    for path in out.glob(PART.format(rank="*")):
        rank = path.name[len(prefix) : len(path.name) - len(suffix)]
        if rank.isdigit():
            ranks.append((int(rank), path))
    return [path for _, path in sorted(ranks)]


def _run_shard(
    model,
    tokenizer,
    plan: _Plan,
    todo: list[_Unit],
    out: Path,
    own: _OwnRecords,
    shard: Shard,
    progress: bool,
    done: set[tuple],
) -> None:
    """This process's groups of ``todo`` (every ``world_size``-th, in run order) into its part file:
    first those of the methods, then -- once every process is done with those -- the ``window``
    reference's, which copy the own method's records where the window cuts nothing."""
    groups: dict[tuple[str, int], int] = {}
    for unit in todo:
        groups.setdefault(_group(unit), len(groups))
    mine = [unit for unit in todo if groups[_group(unit)] % shard.world_size == shard.rank]
    path = out / PART.format(rank=shard.rank)
    left = sum(_key(unit) not in done for unit in mine)
    bar = _bar(progress and shard.rank == 0, left, 0, desc=f"evaluating (rank 0 of {shard.world_size})")
    try:
        _run_units(model, tokenizer, plan, [u for u in mine if u[0] != WINDOW], path, own, bar, done, close=False)
        shard.barrier()  # every method's records are written
        window = [u for u in mine if u[0] == WINDOW]
        if window:
            others = [part for part in _part_files(out) if part != path]
            for record in (r for part in others for r in read_results(part)):
                own.add(record)
        shard.barrier()  # ... and read before any window record is appended
        _run_units(model, tokenizer, plan, window, path, own, bar, done, close=False)
        shard.barrier()  # every record is written
    finally:
        bar.close()


def _merge(out: Path, plan: _Plan, parts: list[Path]) -> None:
    """``results.jsonl`` and the part files as one ``results.jsonl`` in the run's order (each record
    once), written atomically; then the part files are removed."""
    order = {_key(unit): i for i, unit in enumerate(plan.units)}
    records: dict[tuple, dict] = {}
    for path in [out / RESULTS, *parts]:
        if path.exists():
            for record in read_results(path):
                key = (record["task"], record["method"], record["length"], record["index"])
                records.setdefault(key, record)
    ranked = sorted(records.items(), key=lambda item: order.get(item[0], len(order)))
    atomic_write_text(out / RESULTS, "".join(json.dumps(record) + "\n" for _, record in ranked))
    for path in parts:
        path.unlink(missing_ok=True)


# -- planning: the configuration, the samples and the units of work -----------------------------------------------


#: the most samples per task and length a run (or ``ropelab task-sample``) builds: every sample is
#: built before anything is measured, so a huge count would only exhaust the memory
MAX_SAMPLES = 10_000


def check_samples(samples: int) -> None:
    if not int_between(samples, 1, MAX_SAMPLES):
        raise RopelabError(f"samples must be an integer from 1 to {MAX_SAMPLES}, got {samples!r}")


def _run_config(
    model_name: str,
    train_len: int,
    methods: list[str],
    tasks: list[str],
    lengths: list[str],
    samples: int,
    *,
    seed: int,
    include_window: bool,
    task_lengths: dict[str, list[str]],
    ppl_document: str,
    dtype: str = "float32",
    documents: list | None = None,
) -> tuple[RunConfig, list[Task]]:
    """The run's configuration and its tasks; every argument is checked here, before any work."""
    check_samples(samples)
    if not methods or not tasks:
        raise RopelabError("no " + ("position method" if not methods else "task") + " given; the run would be empty")
    methods = [canonical_spec(m) for m in methods]  # validates every spec before any work
    task_objects = [get_task(name) for name in tasks]
    if documents is not None:
        _use_documents(task_objects, documents)
    unknown = sorted(set(task_lengths) - set(tasks))
    if unknown:
        raise RopelabError(f"lengths given for tasks that are not run: {', '.join(unknown)}")
    per_task = {name: [parse_length(x, train_len) for x in task_lengths.get(name, lengths)] for name in tasks}
    empty = [name for name, values in per_task.items() if not values]
    if empty:
        raise RopelabError(f"no length given for {', '.join(empty)}; e.g. --lengths 0.5x,1x")
    _derived_from(ppl_document, per_task)  # one clear error where the option cannot be honoured
    per_task, skipped = _runnable(task_objects, per_task)
    tasks = [name for name in tasks if name in per_task]
    task_objects = [task for task in task_objects if task.name in per_task]
    _derived_from(ppl_document, per_task)  # and still, with the cells that can run
    config = RunConfig(
        model=model_name,
        methods=methods,
        tasks=tasks,
        lengths=sorted({n for values in per_task.values() for n in values}),
        length_labels=list(lengths),
        task_lengths=per_task,
        samples=samples,
        seed=seed,
        train_len=train_len,
        include_window=include_window,
        ppl_document=ppl_document,
        dtype=dtype,
        documents=None if documents is None else [d.describe() for d in documents],
        skipped=skipped,
    )
    return config, task_objects


def check_document_tasks(tasks: list[str]) -> None:
    """One error when a task of ``tasks`` cannot read the user's documents (``--documents``)."""
    cannot = [name for name in tasks if not get_task(name).reads_documents]
    if cannot:
        readers = [name for name, task in TASKS.items() if task.reads_documents]
        raise RopelabError(
            f"{', '.join(cannot)}: cannot read --documents (they build their own inputs); "
            f"tasks that read documents: {', '.join(readers)}"
        )


def _use_documents(tasks: list[Task], documents: list) -> None:
    """Give the user's documents to every task (each one able to read them)."""
    check_document_tasks([task.name for task in tasks])
    for task in tasks:
        task.documents = documents


def _runnable(tasks: list[Task], per_task: dict[str, list[int]]) -> tuple[dict[str, list[int]], dict]:
    """The lengths each task can be built at, and the cells it cannot, with the reason (one log line
    each): a cell that cannot run is skipped and named in the report, never an abort of the run --
    unless no cell is left."""
    kept: dict[str, list[int]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for task in tasks:
        for length in per_task[task.name]:
            try:
                task.check_length(length)
            except RopelabError as error:
                skipped.setdefault(task.name, {})[str(length)] = str(error)
                log(f"skipped: {error}")
            else:
                kept.setdefault(task.name, []).append(length)
    if not kept:
        reasons = "; ".join(reason for cells in skipped.values() for reason in cells.values())
        raise RopelabError(f"no task can run at the lengths given: {reasons}")
    return kept, skipped


PPL_DOCUMENTS = ("code", "haystack")


def _derived_from(ppl_document: str, per_task: dict[str, list[int]]) -> dict[str, str]:
    """Task -> the task whose longest samples its inputs are cut from (:meth:`Task.derive`), so that
    one forward pass per method and sample serves both; one clear error when that cannot be done.

    The one place where the runner names tasks: the ``ppl_document`` option is defined in terms of
    two of them. ``"haystack"`` scores ppl on the passkey haystacks (``{"ppl": "passkey"}``);
    ``"code"``, or a run without ppl, derives nothing.
    """
    if ppl_document not in PPL_DOCUMENTS:
        raise RopelabError(f"ppl document {ppl_document!r} is not one of: {', '.join(PPL_DOCUMENTS)}")
    if ppl_document == "code" or "ppl" not in per_task:
        return {}
    if "passkey" not in per_task:
        raise RopelabError("ppl on the passkey haystack needs the passkey task in the run (--tasks ppl,passkey)")
    if max(per_task["ppl"]) > max(per_task["passkey"]):
        raise RopelabError(
            f"ppl on the passkey haystack: ppl length {max(per_task['ppl'])} exceeds the longest passkey length "
            f"{max(per_task['passkey'])}"
        )
    return {"ppl": "passkey"}


#: one unit of work: (method, task, sample)
_Unit = tuple[str, Task, Sample]


@dataclass
class _Plan:
    """Everything a run measures, fixed before any of it is measured."""

    config: RunConfig
    samples: dict[tuple[str, int], list[Sample]]  # (task name, length) -> its samples
    units: list[_Unit]  # in the order they run

    def related(self, task: Task, sample: Sample) -> list[Sample]:
        """The samples of ``task`` with ``sample``'s index at every length of the run (a shorter
        input may be scored from the pass over a longer one)."""
        return [self.samples[(task.name, n)][sample.index] for n in self.config.task_lengths[task.name]]


def _plan(config: RunConfig, tasks: list[Task], tokenizer, order: str = "method") -> _Plan:
    """Build every sample of the run and order its units."""
    derived = _derived_from(config.ppl_document, config.task_lengths)
    tasks = sorted(tasks, key=lambda t: t.name not in derived.values())  # sources are built first
    samples = _build_samples(config, tasks, derived, tokenizer)
    units = _units(config, tasks, derived, samples)
    if order == "sample":  # stable: within a sample, methods keep their order
        units.sort(key=lambda unit: unit[2].index)
    return _Plan(config=config, samples=samples, units=units)


def _build_samples(
    config: RunConfig, tasks: list[Task], derived: dict[str, str], tokenizer
) -> dict[tuple[str, int], list[Sample]]:
    """(task name, length) -> its samples; a derived task's are cut from its source's longest samples."""
    built: dict[tuple[str, int], list[Sample]] = {}
    for task in tasks:
        for length in config.task_lengths[task.name]:
            task.check_length(length)
            source = derived.get(task.name)
            if source is None:
                built[(task.name, length)] = task.build(
                    tokenizer, length, config.samples, config.seed, config.train_len
                )
            else:
                longest = built[(source, max(config.task_lengths[source]))]
                built[(task.name, length)] = [task.derive(tokenizer, s, length) for s in longest]
    return built


def _units(
    config: RunConfig, tasks: list[Task], derived: dict[str, str], built: dict[tuple[str, int], list[Sample]]
) -> list[_Unit]:
    """Every unit, method by method and sample index by sample index, each task's lengths longest
    first, so that shorter inputs reuse the longest pass (ppl). A source's longest sample goes first
    and the inputs derived from it right after (ppl on the passkey haystack)."""
    per_task = config.task_lengths
    sources = {name: max(per_task[name]) for name in derived.values()}

    def rank(unit: tuple[Task, Sample]) -> int:
        task, sample = unit
        if sources.get(task.name) == sample.length:
            return 0
        return 1 if task.name in derived else 2

    methods = config.methods + ([WINDOW] if config.include_window else [])
    return [
        (method, task, sample)
        for method in methods
        for index in range(config.samples)
        for task, sample in sorted(
            (
                (task, built[(task.name, length)][index])
                for task in tasks
                for length in sorted(per_task[task.name], reverse=True)
            ),
            key=rank,
        )
    ]


# -- the run directory: its configuration, and what an earlier (interrupted) run already measured -----------------


def check_run_dir(out: str | os.PathLike) -> dict | None:
    """The configuration of the run already in ``out`` (None: a new run), checked before any work:
    one :class:`RopelabError` when ``out`` is a file or its ``config.json`` is damaged."""
    config_path = check_out_dir(out) / "config.json"
    if not config_path.exists():
        return None
    try:
        return read_json_file(config_path, "the run's configuration")
    except RopelabError as error:
        raise RopelabError(f"{error}; choose another --out directory, or remove this one") from None


def _open_run(out: Path, config: RunConfig, write: bool = True) -> None:
    """Create ``out`` and write ``config.json`` there, or check that the run already there is this one.

    ``write=False`` (the other processes of a sharded run) only checks a ``config.json`` already there."""
    found = check_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if found is None:
        if write:
            atomic_write_text(config_path, json.dumps(config.to_json(), indent=2))
        return
    # runs older than an option had its default
    previous = {"ppl_document": "code", "dtype": "float32", "documents": None, **found}
    if previous != config.to_json():
        if previous.get("dtype") != config.dtype:
            raise RopelabError(
                f"{out} holds a run measured in {previous.get('dtype')}, not {config.dtype}; "
                "choose another --out directory (or the same --dtype to resume it)"
            )
        raise RopelabError(f"{out} holds a run with a different configuration; choose another --out directory")


def _drop_partial_line(path: Path) -> None:
    """An interrupted run can leave half a record at the end: cut it, so appends start clean.

    Only the file's tail is read (backwards, block by block, to the last newline), whatever its size."""
    try:
        handle = open(path, "rb+")
    except FileNotFoundError:
        return
    with handle:
        end = handle.seek(0, os.SEEK_END)
        if not end:
            return
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return
        position = end
        while position > 0:
            start = max(0, position - (1 << 16))
            handle.seek(start)
            block = handle.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return
            position = start
        handle.truncate(0)


#: what each kind of record in a ``results.jsonl`` must hold (field -> description, check): the
#: evaluation runner's (one task x method x length x sample; ``index`` too, optional for reading)
#: and the experiment runners' (one method x document, ``ropelab experiment hirope``). A record is
#: of the first kind when it has a ``task``, of the second when it has a ``document``.
RECORD_FIELDS: dict[str, dict[str, tuple]] = {
    "task": {
        "task": ("a non-empty string", lambda v: isinstance(v, str) and bool(v)),
        "method": ("a non-empty string", lambda v: isinstance(v, str) and bool(v)),
        "length": ("a positive integer", lambda v: is_int(v) and v > 0),
        "metrics": (
            "an object of numbers",
            lambda v: isinstance(v, dict) and all(x is None or is_real(x) for x in v.values()),
        ),
        "seconds": ("a number >= 0", lambda v: is_real(v) and v >= 0),
    },
    "document": {  # a whole-document record (ropelab experiment hirope, python -m bench hirope-sweep)
        "method": ("a non-empty string", lambda v: isinstance(v, str) and bool(v)),
        "seed": ("a non-negative integer", lambda v: is_int(v) and v >= 0),
        "language": ("a string", lambda v: isinstance(v, str)),
        "document": ("a project name", lambda v: isinstance(v, str) and bool(v)),
        "blocks": ("a list of numbers", lambda v: isinstance(v, list) and all(x is None or is_real(x) for x in v)),
    },
}


def _record_problem(record: object, *, keyed: bool) -> str | None:
    """What is wrong with one parsed line of ``results.jsonl`` (None: a good record); ``keyed``
    (resuming): an evaluation record must also carry its sample ``index``."""

    if not isinstance(record, dict):
        return f"expected a record (a JSON object), got {type(record).__name__}"
    kind = "task" if "task" in record else "document" if "document" in record else None
    if kind is None:
        return "not a result record: it has neither a task nor a document field"
    for key, (expected, ok) in RECORD_FIELDS[kind].items():
        if key not in record:
            return f"{key} is missing"
        if not ok(record[key]):
            return f"{key} must be {expected}, got {shown(record[key])}"
    if kind == "task" and ("index" in record or keyed) and not (is_int(record.get("index")) and record["index"] >= 0):
        return f"index must be a non-negative integer, got {shown(record.get('index'))}"
    return None


def _records(path: Path, *, keyed: bool) -> Iterable[dict]:
    """The records of ``results.jsonl``, each checked (:func:`_record_problem`).

    A last line without its newline is an interrupted write, skipped (a resume cuts it and measures
    that sample again); blank lines are skipped. Any other line that is not a record -- not UTF-8,
    not JSON, nested beyond the parser, a JSON value that is not a record, a record missing a field
    or with one of the wrong type -- is one :class:`RopelabError` naming the file and the line:
    such a line cannot be trusted, so neither a report nor a resume uses it."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            complete = raw.endswith(b"\n")
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, huge integers
                if not complete:
                    continue
                reason = "nested too deeply" if isinstance(error, RecursionError) else f"not valid JSON: {error}"[:200]
                problem = reason
            else:
                problem = _record_problem(record, keyed=keyed)
            if problem is not None:
                raise RopelabError(
                    f"{path}:{number}: {problem}; this line cannot be trusted: delete it (a resumed run measures "
                    "that sample again) or evaluate into another --out directory"
                )
            yield record


def _done_keys(path: Path) -> set[tuple]:
    """(task, method, length, index) of every record already in ``results.jsonl``: those samples are
    not measured again. A half-written last line is cut first (:func:`_drop_partial_line`); any other
    bad line is one :class:`RopelabError` (:func:`_records`), never a sample silently skipped or reused."""
    _drop_partial_line(path)
    if not path.exists():
        return set()
    return {(r["task"], r["method"], r["length"], r["index"]) for r in _records(path, keyed=True)}


def read_results(path: str | os.PathLike) -> list[dict]:
    """Every record of a ``results.jsonl``, checked line by line: a half-written last line (a run
    interrupted, or still writing) is skipped; any other line that is not a record is one
    :class:`RopelabError` naming the file and the line number (see :func:`_records`)."""
    return list(_records(Path(path), keyed=False))


class _OwnRecords:
    """The records of the model's own method ``method`` (read from an earlier run, added as they are
    measured): where the ``window`` reference truncates nothing it sees the same input, and its record
    is a copy of the own method's."""

    def __init__(self, path: Path, method: str, parts: Iterable[Path] = ()) -> None:
        self.method = method
        self.records: dict[tuple, dict] = {}
        for source in [path, *parts]:
            for record in read_results(source) if source.exists() else []:
                self.add(record)

    def add(self, record: dict) -> None:
        if record["method"] == self.method:
            self.records[(record["task"], record["length"], record["index"])] = record

    def window_copy(self, evaluator: Evaluator, task: Task, sample: Sample) -> dict | None:
        """The ``window`` record of ``sample`` copied from the own method's, or None where there is none
        to copy or the window cuts the sample's context."""
        same = self.records.get((task.name, sample.length, sample.index))
        if evaluator.method != WINDOW or same is None or evaluator.truncates(task, sample):
            return None
        return {**same, "method": WINDOW, "seconds": 0.0, "same_as": self.method}


# -- measuring ------------------------------------------------------------------------------------------------------


def _bar(progress: bool, total: int, initial: int, desc: str = "evaluating") -> tqdm:
    return tqdm(total=total, initial=initial, disable=not progress, desc=desc, unit="sample", file=sys.stderr)


def _use_method(model, own, spec: str) -> None:
    """Give ``model`` the method ``spec``: its own encoding object ``own`` (learned parameters
    and all) when ``spec`` is the model's own method, else a new one (``with_method``)."""
    if canonical_spec(spec) == canonical_spec(own.spec):
        model.pe = own
        model.config.pe = own.spec
    elif canonical_spec(model.pe.spec) != canonical_spec(spec):
        model.with_method(spec)


def _run_units(
    model,
    tokenizer,
    plan: _Plan,
    todo: list[_Unit],
    results_path: Path,
    own: _OwnRecords,
    bar: tqdm,
    done: set[tuple] = frozenset(),
    close: bool = True,
) -> None:
    """Measure ``todo`` in order, appending each record to ``results_path`` as soon as it is measured
    (those of ``done`` units are not written: they run for the passes they leave); the model's method
    is switched per unit and restored at the end (the model's own encoding object: a learned one
    keeps its trained parameters). Each group of units (:func:`_group`) starts with no pass
    remembered."""
    own_pe = model.pe
    evaluator, group = None, None
    try:
        with open(results_path, "a") as results:
            for method, task, sample in todo:
                if evaluator is None or evaluator.method != method:
                    _use_method(model, own_pe, own_pe.spec if method == WINDOW else method)
                    evaluator = Evaluator(model, tokenizer, method)
                if _group((method, task, sample)) != group:
                    evaluator.forget()
                    group = _group((method, task, sample))
                bar.set_postfix_str(f"{method} {task.name} {sample.length}", refresh=False)
                record = own.window_copy(evaluator, task, sample) or _measure(
                    evaluator, task, sample, plan.related(task, sample), plan.config.seed
                )
                if _key((method, task, sample)) in done:  # run again for its pass; its record is there
                    continue
                results.write(json.dumps(record) + "\n")
                results.flush()
                own.add(record)
                bar.update(1)
    finally:
        if close:
            bar.close()
        _use_method(model, own_pe, own_pe.spec)


def _measure(evaluator: Evaluator, task: Task, sample: Sample, related: list[Sample], seed: int) -> dict:
    """The result record of ``sample`` under the evaluator's method."""
    start = time.perf_counter()
    if task.mode == "session":
        outputs, info = None, evaluator.session(task, sample)
        metrics = info.pop("metrics")
    else:
        outputs, info = evaluator.outputs(task, sample, related)
        metrics = task.score(sample, outputs)
    record = {
        "task": task.name,
        "method": evaluator.method,
        "length": sample.length,
        "index": sample.index,
        "seed": seed,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - start, 3),
        **info,
        **task.recorded_fields(sample),
    }
    if outputs is not None and outputs.generated is not None:
        record["generated"] = outputs.generated
    if outputs is not None and outputs.losses is not None and task.mode == "loss":
        record["bucket_losses"] = _buckets(outputs.losses, 8)
    return record


def _buckets(losses: list[float], count: int) -> list[float]:
    size = max(1, math.ceil(len(losses) / count))
    return [sum(part) / len(part) for part in (losses[i : i + size] for i in range(0, len(losses), size))]
