"""Measuring one unit: the :class:`Evaluator` runs a task's sample under one method (or the
``window`` reference) and turns what the model outputs into the task's record."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable

import torch

from ropelab.core.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.plan import REFERENCE
from ropelab.hierarchy import align, file_spans, segment_text
from ropelab.model.generate import stream
from ropelab.pe import Spec, spec_of
from ropelab.pe.sliding import SlidingWindow


def hierarchy_positions(
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
        self.is_reference = method == REFERENCE  # the window reference row, not a method of its own
        self._own = model.pe  # the method the model runs (the reference limits what it sees)
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
        if not self.is_reference or len(ids) <= self.train_len:
            return model.hidden_states(_tensor(model, ids), positions, cache)[0]
        return window_prefill(model, self._own, model.pe, ids, cache if cache is not None else model.new_cache())

    @torch.no_grad()
    def session(self, task: Task, sample: Sample) -> dict:
        """Run a ``session`` task (it drives the model itself through :meth:`prefill`)."""
        if not self.is_reference:
            return task.run(self, sample)
        with self.model.using(SlidingWindow(self._own, self.train_len)):
            return task.run(self, sample)

    def positions(self, sample: Sample, ids: list[int]) -> tuple[torch.Tensor | None, str | None]:
        pe = self.model.pe
        granularity = getattr(pe, "granularity", "function")
        if self.is_reference or not pe.uses_hierarchy or not sample.language or granularity == "chunk":
            return None, None  # no positions: a hierarchical encoding falls back to fixed chunks
        return hierarchy_positions(sample, ids, self.tokenizer, pe.levels, granularity)

    def _prefixes_shared(self) -> bool:
        return not self.model.pe.rotation_depends_on_length

    def _shared_source(self, ids: list[int], related: list[Sample]) -> Sample | None:
        """The longest related sample whose input starts with ``ids`` and can be scored in one
        pass for all of them (causal model, angles independent of the input length)."""
        if not self._prefixes_shared():
            return None
        limit = self.train_len if self.is_reference else None
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
            if self.is_reference and len(ids) > self.train_len:
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
            if self.is_reference and self.truncates(task, sample):
                ids = ids[-(self.train_len - len(answer)) :]
                info["context"] = len(ids)
            hidden = self._hidden(sample, ids + answer, info)[len(ids) - 1 : -1]
            logits = self.model.lm_head(hidden).float()
            target = _tensor(self.model, answer)[0]
            losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
            return Outputs(answer_losses=losses.tolist(), answer_argmax=logits.argmax(-1).tolist()), info
        if task.mode == "generate":
            if self.is_reference and self.truncates(task, sample):
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
    split = sliding.window
    tensor = _tensor(model, ids)
    with model.using(own):
        head = model.hidden_states(tensor[:, :split], None, cache)[0]
    cache.share_far_keys()
    if len(ids) <= split:  # nothing beyond the window: the own method alone
        return head
    with model.using(sliding):
        tail = model.hidden_states(tensor[:, split:], None, cache)[0]
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


def use_method(model, own, spec: str | Spec) -> None:
    """Give ``model`` the method ``spec``: its own encoding object ``own`` (learned parameters
    and all) when ``spec`` is the model's own method, else a new one (``with_method``). Encodings'
    ``spec`` attributes are canonical already, so only ``spec`` is parsed (once: :func:`spec_of`)."""
    spec = spec_of(spec)
    if spec.text == own.spec:
        model.use(own)
    elif model.pe.spec != spec.text:
        model.with_method(spec)


def measure(evaluator: Evaluator, task: Task, sample: Sample, related: list[Sample], seed: int) -> dict:
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
