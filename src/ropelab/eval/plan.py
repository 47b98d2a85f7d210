"""Planning an evaluation run: its configuration (checked before any work), every sample built
up front, and the units of work (method x task x length x sample) in run order.

``REFERENCE`` names the reference row every run carries: the model's own method with what it sees
limited to the training length (:mod:`ropelab.eval.evaluator`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ropelab.core.checks import int_between
from ropelab.core.errors import RopelabError
from ropelab.core.lengths import parse_length
from ropelab.core.log import log
from ropelab.eval import TASKS, get_task
from ropelab.eval.base import Sample, Task
from ropelab.pe import spec_of

#: the reference row of every run: the model's own method with what it sees limited to the training
#: length (its stored label, in every results.jsonl and report, is "window")
REFERENCE = "window"


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


#: the most samples per task and length a run (or ``ropelab task-sample``) builds: every sample is
#: built before anything is measured, so a huge count would only exhaust the memory
MAX_SAMPLES = 10_000


def check_samples(samples: int) -> None:
    if not int_between(samples, 1, MAX_SAMPLES):
        raise RopelabError(f"samples must be an integer from 1 to {MAX_SAMPLES}, got {samples!r}")


def run_config(
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
    methods = [spec_of(m).text for m in methods]  # parses and validates every spec (once) before any work
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
Unit = tuple[str, Task, Sample]


@dataclass
class Plan:
    """Everything a run measures, fixed before any of it is measured."""

    config: RunConfig
    samples: dict[tuple[str, int], list[Sample]]  # (task name, length) -> its samples
    units: list[Unit]  # in the order they run

    def related(self, task: Task, sample: Sample) -> list[Sample]:
        """The samples of ``task`` with ``sample``'s index at every length of the run (a shorter
        input may be scored from the pass over a longer one)."""
        return [self.samples[(task.name, n)][sample.index] for n in self.config.task_lengths[task.name]]


def _check_token_ids(samples: dict[tuple[str, int], list[Sample]], vocab_size: int) -> None:
    """Every sample's tokens are in the model's vocabulary: checked once, where the data enters
    (the forward pass trusts its inputs, :mod:`ropelab.model.inputs`)."""
    for (task, length), built in samples.items():
        for sample in built:
            ids = [*sample.prompt_ids, *sample.answer_ids]
            if ids and (max(ids) >= vocab_size or min(ids) < 0):
                raise RopelabError(
                    f"{task} at {length}: sample {sample.index} holds token ids outside the model's vocabulary "
                    f"(0..{vocab_size - 1}); the tokenizer does not belong to this model"
                )


def plan_run(
    config: RunConfig, tasks: list[Task], tokenizer, order: str = "method", vocab_size: int | None = None
) -> Plan:
    """Build every sample of the run and order its units."""
    derived = _derived_from(config.ppl_document, config.task_lengths)
    tasks = sorted(tasks, key=lambda t: t.name not in derived.values())  # sources are built first
    samples = _build_samples(config, tasks, derived, tokenizer)
    if vocab_size is not None:
        _check_token_ids(samples, vocab_size)
    units = _units(config, tasks, derived, samples)
    if order == "sample":  # stable: within a sample, methods keep their order
        units.sort(key=lambda unit: unit[2].index)
    return Plan(config=config, samples=samples, units=units)


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
) -> list[Unit]:
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

    methods = config.methods + ([REFERENCE] if config.include_window else [])
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


def unit_key(unit: Unit) -> tuple[str, str, int, int]:
    """A unit's record key: (task, method, length, sample index)."""
    method, task, sample = unit
    return (task.name, method, sample.length, sample.index)


def unit_group(unit: Unit) -> tuple[str, int]:
    """The units of one method and one sample index share forward passes: they run together, in order."""
    method, _, sample = unit
    return (method, sample.index)


def units_to_do(units: list[Unit], done: set[tuple]) -> list[Unit]:
    """The units to run, in order: of every group with a unit left to measure, its units up to the
    last one left (those before it measured already run again, unwritten, for the passes they leave)."""
    last = {unit_group(unit): i for i, unit in enumerate(units) if unit_key(unit) not in done}
    return [unit for i, unit in enumerate(units) if i <= last.get(unit_group(unit), -1)]
