"""A run directory's files: ``config.json`` (checked against the run asked for), ``results.jsonl``
(one checked record per unit, appended as measured; a half-written last line from an interrupted
run is cut) and the per-process part files of a sharded run, merged at its end."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ropelab.core.checks import is_int, is_real
from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_write_text, check_out_dir, differing_keys, saved_settings
from ropelab.eval.base import Sample, Task
from ropelab.eval.plan import REFERENCE, Plan, RunConfig, unit_key
from ropelab.model.config import shown

if TYPE_CHECKING:
    from ropelab.eval.evaluator import Evaluator

RESULTS = "results.jsonl"


#: a process's records while a sharded run is going on, merged into ``results.jsonl`` at its end
PART = "results.rank-{rank}.jsonl"


#: options added after runs were first written, with the value older runs had
_DEFAULTS = {"ppl_document": "code", "dtype": "float32", "documents": None}


def check_run_dir(out: str | os.PathLike, config: RunConfig | None = None) -> dict | None:
    """The configuration of the run already in ``out`` (None: a new run), checked before any work:
    one :class:`RopelabError` when ``out`` is a file, its ``config.json`` is damaged, or (given the
    run asked for) it holds another run -- the differing settings named."""
    path = check_out_dir(out) / "config.json"

    def differing(saved: dict) -> list[str]:
        return [] if config is None else differing_keys(config.to_json(), {**_DEFAULTS, **saved})

    return saved_settings(path, "run", differing)


def open_run(out: Path, config: RunConfig, write: bool = True) -> None:
    """Create ``out`` and write ``config.json`` there, or check that the run already there is this one.

    ``write=False`` (the other processes of a sharded run) only checks a ``config.json`` already there."""
    found = check_run_dir(out, config)
    out.mkdir(parents=True, exist_ok=True)
    if found is None and write:
        atomic_write_text(out / "config.json", json.dumps(config.to_json(), indent=2))


def drop_partial_line(path: Path) -> None:
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


def done_keys(path: Path) -> set[tuple]:
    """(task, method, length, index) of every record already in ``results.jsonl``: those samples are
    not measured again. A half-written last line is cut first (:func:`drop_partial_line`); any other
    bad line is one :class:`RopelabError` (:func:`_records`), never a sample silently skipped or reused."""
    drop_partial_line(path)
    if not path.exists():
        return set()
    return {(r["task"], r["method"], r["length"], r["index"]) for r in _records(path, keyed=True)}


def read_results(path: str | os.PathLike) -> list[dict]:
    """Every record of a ``results.jsonl``, checked line by line: a half-written last line (a run
    interrupted, or still writing) is skipped; any other line that is not a record is one
    :class:`RopelabError` naming the file and the line number (see :func:`_records`)."""
    return list(_records(Path(path), keyed=False))


class OwnRecords:
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
        if evaluator.method != REFERENCE or same is None or evaluator.truncates(task, sample):
            return None
        return {**same, "method": REFERENCE, "seconds": 0.0, "same_as": self.method}


def part_files(out: Path) -> list[Path]:
    """Every process's part file of a sharded run, by rank."""
    prefix, _, suffix = PART.partition("{rank}")
    ranks = []
    for path in out.glob(PART.format(rank="*")):
        rank = path.name[len(prefix) : len(path.name) - len(suffix)]
        if rank.isdigit():
            ranks.append((int(rank), path))
    return [path for _, path in sorted(ranks)]


def merge_parts(out: Path, plan: Plan, parts: list[Path]) -> None:
    """``results.jsonl`` and the part files as one ``results.jsonl`` in the run's order (each record
    once), written atomically; then the part files are removed."""
    order = {unit_key(unit): i for i, unit in enumerate(plan.units)}
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
