"""One runner for every task x method x length: results streamed to JSONL, resumable.

    run = evaluate(model, tokenizer, methods=["rope", "yarn:factor=2"], tasks=["ppl", "passkey"],
                   lengths=["0.5x", "1x", "1.5x"], samples=2, out="runs/demo")

A run directory holds ``config.json`` (everything needed to reproduce it), ``results.jsonl`` (one
record per task x method x length x sample, appended as soon as it is measured, so an interrupted
run resumes where it stopped), ``summary.json`` and the rendered report (``ropelab.eval.report``).

``window`` is a reference "method" in every run: the model's own method with what it sees limited
to the training length. For the ``context`` task that is one pass with attention limited to the
previous ``L`` tokens plus four sink tokens (:mod:`ropelab.pe.sliding`); for the other tasks each
input is truncated to its last ``L`` tokens. A method that does not beat it is not using the
longer context.
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

from ropelab.core.lengths import parse_length
from ropelab.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task

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

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _hierarchy_positions(
    sample: Sample, ids: list[int], tokenizer, levels: int
) -> tuple[torch.Tensor | None, str | None]:
    """HiRoPE positions ``[1, T, levels]`` for ``ids`` (the sample's input), or (None, reason)."""
    from ropelab.code import align, segment_text

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
            return model.hidden_states(torch.tensor([ids]), positions, cache)[0]
        return window_prefill(model, self._own, model.pe, ids, cache if cache is not None else model.new_cache())

    @torch.no_grad()
    def session(self, task: Task, sample: Sample) -> dict:
        """Run a ``session`` task (it drives the model itself through :meth:`prefill`)."""
        if not self.window:
            return task.run(self, sample)
        from ropelab.pe.sliding import SlidingWindow

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
        return _hierarchy_positions(sample, ids, self.tokenizer, getattr(pe, "levels", 2))

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
        hidden = self.model.hidden_states(torch.tensor([ids]), positions)[0]
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
                self._last_losses = self.model.losses_from_hidden(hidden[None, :-1], torch.tensor([last_ids[1:]]))[0]
            return Outputs(losses=self._last_losses[: len(ids) - 1].tolist()), info
        if task.mode == "teacher_forced":
            answer = list(sample.answer_ids)
            if self.window and self.truncates(task, sample):
                ids = ids[-(self.train_len - len(answer)) :]
                info["context"] = len(ids)
            hidden = self._hidden(sample, ids + answer, info)[len(ids) - 1 : -1]
            logits = self.model.lm_head(hidden).float()
            target = torch.tensor(answer)
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
        from ropelab.model.generate import stream

        generated: list[int] = []
        text = ""
        for token in stream(
            self.model, torch.tensor([ids]), task.max_new_tokens, eos_id=self.tokenizer.eos_id, positions=positions
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
    tensor = torch.tensor([ids])
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


def _stopped(text: str, stops: Iterable[str]) -> bool:
    body = text.lstrip("\n")
    return any(stop in body for stop in stops) if body.strip() else False


def _cut(text: str, stops: Iterable[str]) -> str:
    body = text.lstrip("\n")
    cut = min((body.find(s) for s in stops if s in body), default=-1)
    return body if cut < 0 else body[:cut]


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
    ``ppl_document="haystack"`` scores ppl on the passkey haystacks (see :mod:`ropelab.eval.ppl`):
    one forward pass per method and sample then serves both tasks.
    """
    from ropelab.eval import get_task
    from ropelab.pe import canonical_spec

    if samples < 1:
        raise RopelabError(f"samples must be >= 1, got {samples}")
    train_len = model.config.train_len
    methods = [canonical_spec(m) for m in methods]  # validates every spec before any work
    task_objects = [get_task(name) for name in tasks]
    unknown = sorted(set(task_lengths or {}) - set(tasks))
    if unknown:
        raise RopelabError(f"lengths given for tasks that are not run: {', '.join(unknown)}")
    per_task = {name: [parse_length(x, train_len) for x in (task_lengths or {}).get(name, lengths)] for name in tasks}
    token_lengths = sorted({n for values in per_task.values() for n in values})
    haystack = _check_ppl_document(ppl_document, per_task)
    config = RunConfig(
        model=model_name,
        methods=methods,
        tasks=tasks,
        lengths=token_lengths,
        length_labels=list(lengths),
        task_lengths=per_task,
        samples=samples,
        seed=seed,
        train_len=train_len,
        include_window=include_window,
        ppl_document=ppl_document,
    )
    if haystack:  # the ppl inputs are cut from the passkey samples, so those are built first
        task_objects.sort(key=lambda t: t.name != "passkey")
    built: dict[tuple[str, int], list[Sample]] = {}
    for task in task_objects:
        for length in per_task[task.name]:
            task.check_length(length)
            if haystack and task.name == "ppl":
                sources = built[("passkey", max(per_task["passkey"]))]
                built[(task.name, length)] = [task.from_haystack(tokenizer, s, length) for s in sources]
            else:
                built[(task.name, length)] = task.build(tokenizer, length, samples, seed, train_len)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.exists():
        previous = {"ppl_document": "code", **json.loads(config_path.read_text())}  # runs older than the option
        if previous != config.to_json():
            raise RopelabError(f"{out} holds a run with a different configuration; choose another --out directory")
    else:
        from ropelab.core.io import atomic_write_text

        atomic_write_text(config_path, json.dumps(config.to_json(), indent=2))
    results_path = out / "results.jsonl"
    done = _done_keys(results_path)
    # the model's own method, if it is run: ``window`` copies its records where it truncates nothing
    own = canonical_spec(model.pe.spec)
    own_records = {
        (r["task"], r["length"], r["index"]): r
        for r in (read_results(results_path) if results_path.exists() else [])
        if r["method"] == own
    }

    all_methods = methods + ([WINDOW] if include_window else [])
    # per sample index, longest first, so shorter inputs reuse the longest pass (ppl); on the haystack
    # the longest passkey input goes first and the ppl inputs cut from its haystack right after it
    longest_passkey = max(per_task.get("passkey", [0]))

    def rank(unit: tuple[Task, Sample]) -> int:
        task, sample = unit
        if not haystack:
            return 0
        return 0 if task.name == "passkey" and sample.length == longest_passkey else 1 if task.name == "ppl" else 2

    units = [
        (method, task, sample)
        for method in all_methods
        for index in range(samples)
        for task, sample in sorted(
            (
                (task, built[(task.name, length)][index])
                for task in task_objects
                for length in sorted(per_task[task.name], reverse=True)
            ),
            key=rank,
        )
    ]
    todo = [u for u in units if (u[1].name, u[0], u[2].length, u[2].index) not in done]
    original = model.pe.spec
    bar = tqdm(
        total=len(units),
        initial=len(units) - len(todo),
        disable=not progress,
        desc="evaluating",
        unit="sample",
        file=sys.stderr,
    )
    evaluator = None
    try:
        with open(results_path, "a") as results:
            for method, task, sample in todo:
                if evaluator is None or evaluator.method != method:
                    model.with_method(original if method == WINDOW else method)
                    evaluator = Evaluator(model, tokenizer, method)
                bar.set_postfix_str(f"{method} {task.name} {sample.length}", refresh=False)
                same = own_records.get((task.name, sample.length, sample.index))
                if method == WINDOW and same is not None and not evaluator.truncates(task, sample):
                    record = {**same, "method": WINDOW, "seconds": 0.0, "same_as": own}
                    results.write(json.dumps(record) + "\n")
                    results.flush()
                    bar.update(1)
                    continue
                related = [built[(task.name, n)][sample.index] for n in per_task[task.name]]
                start = time.perf_counter()
                if task.mode == "session":
                    outputs, info = None, evaluator.session(task, sample)
                    metrics = info.pop("metrics")
                else:
                    outputs, info = evaluator.outputs(task, sample, related)
                    metrics = task.score(sample, outputs)
                record = {
                    "task": task.name,
                    "method": method,
                    "length": sample.length,
                    "index": sample.index,
                    "seed": seed,
                    "metrics": metrics,
                    "seconds": round(time.perf_counter() - start, 3),
                    **info,
                }
                for key in task.recorded:
                    if key in sample.extra:
                        record[key] = sample.extra[key]
                if outputs is not None and outputs.generated is not None:
                    record["generated"] = outputs.generated
                if outputs is not None and outputs.losses is not None and task.mode == "loss":
                    record["bucket_losses"] = _buckets(outputs.losses, 8)
                results.write(json.dumps(record) + "\n")
                results.flush()
                if method == own:
                    own_records[(task.name, sample.length, sample.index)] = record
                bar.update(1)
    finally:
        bar.close()
        model.with_method(original)
    from ropelab.eval.report import write_report

    write_report(out)
    return out


PPL_DOCUMENTS = ("code", "haystack")


def _check_ppl_document(ppl_document: str, per_task: dict[str, list[int]]) -> bool:
    """Whether ppl is scored on the passkey haystacks; one clear error when it cannot be."""
    if ppl_document not in PPL_DOCUMENTS:
        raise RopelabError(f"ppl document {ppl_document!r} is not one of: {', '.join(PPL_DOCUMENTS)}")
    if ppl_document == "code" or "ppl" not in per_task:
        return False
    if "passkey" not in per_task:
        raise RopelabError("ppl on the passkey haystack needs the passkey task in the run (--tasks ppl,passkey)")
    if max(per_task["ppl"]) > max(per_task["passkey"]):
        raise RopelabError(
            f"ppl on the passkey haystack: ppl length {max(per_task['ppl'])} exceeds the longest passkey length "
            f"{max(per_task['passkey'])}"
        )
    return True


def _buckets(losses: list[float], count: int) -> list[float]:
    size = max(1, math.ceil(len(losses) / count))
    return [sum(part) / len(part) for part in (losses[i : i + size] for i in range(0, len(losses), size))]
