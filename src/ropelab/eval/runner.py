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
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_write_text
from ropelab.core.lengths import parse_length
from ropelab.eval import get_task
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.hierarchy import align, segment_text
from ropelab.model.device import dtype_name
from ropelab.model.generate import stream
from ropelab.pe import canonical_spec
from ropelab.pe.sliding import SlidingWindow

WINDOW = "window"


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

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _hierarchy_positions(
    sample: Sample, ids: list[int], tokenizer, levels: int
) -> tuple[torch.Tensor | None, str | None]:
    """HiRoPE positions ``[1, T, levels]`` for ``ids`` (the sample's input), or (None, reason)."""
    text = tokenizer.decode(ids)
    encoding = tokenizer.encode_with_offsets(text)
    if encoding.ids != list(ids):
        return None, "re-tokenised prompt differs from the input ids; fixed chunks used"
    spans, _ = segment_text(text, sample.language)
    hierarchy = align(text, encoding.ids, encoding.offsets, spans, sample.language or "text", levels=levels)
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
        if self.window or not pe.uses_hierarchy or not sample.language:
            return None, None
        return _hierarchy_positions(sample, ids, self.tokenizer, pe.levels)

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
) -> Path:
    """Run every task x method x length x sample into ``out``; returns the run directory.

    ``lengths`` apply to every task unless ``task_lengths`` names other lengths for a task.
    ``ppl_document="haystack"`` scores ppl on the passkey haystacks (see :mod:`ropelab.eval.tasks.ppl`):
    one forward pass per method and sample then serves both tasks.
    """
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
    )
    plan = _plan(config, task_objects, tokenizer)  # every sample is built before anything is written
    out = Path(out)
    _open_run(out, config)
    results_path = out / "results.jsonl"
    done = _done_keys(results_path)
    own = _OwnRecords(results_path, canonical_spec(model.pe.spec))
    todo = [(m, t, s) for m, t, s in plan.units if (t.name, m, s.length, s.index) not in done]
    _run_units(model, tokenizer, plan, todo, results_path, own, progress)
    return out


# -- planning: the configuration, the samples and the units of work -----------------------------------------------


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
) -> tuple[RunConfig, list[Task]]:
    """The run's configuration and its tasks; every argument is checked here, before any work."""
    if samples < 1:
        raise RopelabError(f"samples must be >= 1, got {samples}")
    methods = [canonical_spec(m) for m in methods]  # validates every spec before any work
    task_objects = [get_task(name) for name in tasks]
    unknown = sorted(set(task_lengths) - set(tasks))
    if unknown:
        raise RopelabError(f"lengths given for tasks that are not run: {', '.join(unknown)}")
    per_task = {name: [parse_length(x, train_len) for x in task_lengths.get(name, lengths)] for name in tasks}
    _derived_from(ppl_document, per_task)  # one clear error where the option cannot be honoured
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
    )
    return config, task_objects


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


def _plan(config: RunConfig, tasks: list[Task], tokenizer) -> _Plan:
    """Build every sample of the run and order its units."""
    derived = _derived_from(config.ppl_document, config.task_lengths)
    tasks = sorted(tasks, key=lambda t: t.name not in derived.values())  # sources are built first
    samples = _build_samples(config, tasks, derived, tokenizer)
    return _Plan(config=config, samples=samples, units=_units(config, tasks, derived, samples))


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


def _open_run(out: Path, config: RunConfig) -> None:
    """Create ``out`` and write ``config.json`` there, or check that the run already there is this one."""
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if not config_path.exists():
        atomic_write_text(config_path, json.dumps(config.to_json(), indent=2))
        return
    # runs older than an option had its default
    previous = {"ppl_document": "code", "dtype": "float32", **json.loads(config_path.read_text())}
    if previous != config.to_json():
        if previous.get("dtype") != config.dtype:
            raise RopelabError(
                f"{out} holds a run measured in {previous.get('dtype')}, not {config.dtype}; "
                "choose another --out directory (or the same --dtype to resume it)"
            )
        raise RopelabError(f"{out} holds a run with a different configuration; choose another --out directory")


def _drop_partial_line(path: Path) -> None:
    """An interrupted run can leave half a record at the end: cut it, so appends start clean."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def _done_keys(path: Path) -> set[tuple]:
    keys = set()
    _drop_partial_line(path)
    if not path.exists():
        return keys
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted write: measured again
            keys.add((record["task"], record["method"], record["length"], record["index"]))
    return keys


def read_results(path: str | os.PathLike) -> list[dict]:
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class _OwnRecords:
    """The records of the model's own method ``method`` (read from an earlier run, added as they are
    measured): where the ``window`` reference truncates nothing it sees the same input, and its record
    is a copy of the own method's."""

    def __init__(self, path: Path, method: str) -> None:
        self.method = method
        previous = read_results(path) if path.exists() else []
        self.records = {(r["task"], r["length"], r["index"]): r for r in previous if r["method"] == method}

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


def _run_units(
    model, tokenizer, plan: _Plan, todo: list[_Unit], results_path: Path, own: _OwnRecords, progress: bool
) -> None:
    """Measure ``todo`` in order, appending each record to ``results_path`` as soon as it is measured;
    the model's method is switched per unit and restored at the end."""
    original = model.pe.spec
    total = len(plan.units)
    bar = tqdm(
        total=total, initial=total - len(todo), disable=not progress, desc="evaluating", unit="sample", file=sys.stderr
    )
    evaluator = None
    try:
        with open(results_path, "a") as results:
            for method, task, sample in todo:
                if evaluator is None or evaluator.method != method:
                    model.with_method(original if method == WINDOW else method)
                    evaluator = Evaluator(model, tokenizer, method)
                bar.set_postfix_str(f"{method} {task.name} {sample.length}", refresh=False)
                record = own.window_copy(evaluator, task, sample) or _measure(
                    evaluator, task, sample, plan.related(task, sample), plan.config.seed
                )
                results.write(json.dumps(record) + "\n")
                results.flush()
                own.add(record)
                bar.update(1)
    finally:
        bar.close()
        model.with_method(original)


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
