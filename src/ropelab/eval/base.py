"""What every evaluation task provides, and what the runner gives back to it.

A task turns ``(tokenizer, length, n, seed)`` into :class:`Sample` objects -- the exact text and
tokens the model sees plus the gold answer -- and scores a sample from the model's
:class:`Outputs`. Tasks never look at the method: the runner applies every method unchanged.

Scoring modes (``Task.mode``):

* ``"loss"``: the runner returns per-token losses of the whole prompt (``ppl``).
* ``"teacher_forced"``: one forward over prompt + gold answer; the runner returns the losses and
  the argmax prediction at every answer token. "Every argmax equals the gold token" is exactly
  "greedy decoding reproduces the answer", at the cost of one forward (passkey, copy).
* ``"generate"``: greedy decoding of up to ``max_new_tokens`` after the prompt, cut at the first
  of ``stop`` strings (completion, few-shot, symbols).
* ``"session"``: the task drives the model itself (``Task.run(evaluator, sample)`` returns the
  record's fields, ``metrics`` among them), through the evaluator's ``prefill`` so that the
  ``window`` reference applies (``context``: one pass, its KV cache and extra passes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ropelab.core.errors import RopelabError


@dataclass
class Sample:
    task: str
    length: int  # the requested input length in tokens
    index: int  # sample number within (task, length)
    seed: int
    prompt: str  # exactly the text the model sees
    prompt_ids: list[int]  # its tokens (the model input; may be cut to ``length``)
    answer: str  # the gold continuation / label / answer text
    answer_ids: list[int] = field(default_factory=list)  # gold continuation tokens (teacher-forced tasks)
    language: str | None = None  # programming language of the prompt (for HiRoPE's hierarchy), or None
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific fields, dumped with the sample

    def to_json(self, with_ids: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_ids:
            data.pop("prompt_ids")
            data.pop("answer_ids")
        extra = data.pop("extra")
        return {**data, **extra, "num_prompt_tokens": len(self.prompt_ids)}


@dataclass
class Outputs:
    """What the runner observed for one sample under one method."""

    losses: list[float] | None = None  # loss mode: per-token losses of the prompt (entry t scores token t+1)
    answer_losses: list[float] | None = None  # teacher-forced: loss of each gold answer token
    answer_argmax: list[int] | None = None  # teacher-forced: argmax prediction at each answer position
    generated: str | None = None  # generate mode: the decoded continuation (cut at a stop string)


class Task:
    """Base class of an evaluation task (one file per task in ``ropelab/eval/``)."""

    name: ClassVar[str]
    description: ClassVar[str]
    mode: ClassVar[str]  # "loss" | "teacher_forced" | "generate" | "session"
    metric: ClassVar[str]  # the headline metric in reports
    higher_is_better: ClassVar[bool] = True
    max_new_tokens: ClassVar[int] = 0
    stop: ClassVar[tuple[str, ...]] = ()
    #: the smallest input length the task can build (tokens)
    min_length: ClassVar[int] = 64
    #: keys of ``Sample.extra`` copied into every result record (reports group by them)
    recorded: ClassVar[tuple[str, ...]] = ()
    #: True when sample sizes vary with the draw, so one built sample does not tell whether
    #: every sample fits a length
    variable_size: ClassVar[bool] = False
    #: True for the tasks that read long documents, which ``--documents`` replaces by the user's
    reads_documents: ClassVar[bool] = False
    #: the user's documents (:class:`ropelab.eval.user_documents.Document`, set by the runner before
    #: ``build``), or None for the task's built-in ones
    documents: list | None = None

    # -- how the report (:mod:`ropelab.reporting.eval`) shows the task --------------------------
    #: the report's layout: ``"table"`` (methods x lengths of the headline metric, a curve per
    #: method) or ``"context"`` (the sections and figures of the ``context`` task)
    report_kind: ClassVar[str] = "table"
    #: appended to the table's heading after " -- " (what the metric measures), or ""
    report_note: ClassVar[str] = ""
    #: a key of :attr:`recorded`: the report adds a heatmap of the headline metric (a 0/1 rate)
    #: over that key x length, one panel per method, when both axes have several values
    grid_key: ClassVar[str | None] = None
    #: the heatmap's title (before the model and the train length); the task name when ""
    grid_title: ClassVar[str] = ""

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        raise NotImplementedError

    def sample(
        self, length: int, index: int, seed: int, prompt: str, prompt_ids, *, answer: str = "", answer_ids=(),
        language: str | None = None, **extra: Any,
    ) -> Sample:  # fmt: skip
        """A :class:`Sample` of this task; ``extra`` holds the task's own fields."""
        return Sample(
            task=self.name, length=length, index=index, seed=seed, prompt=prompt, prompt_ids=list(prompt_ids),
            answer=answer, answer_ids=list(answer_ids), language=language, extra=extra,
        )  # fmt: skip

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        raise NotImplementedError

    def run(self, evaluator, sample: Sample) -> dict:
        """``session`` tasks only: evaluate ``sample`` under the evaluator's method."""
        raise NotImplementedError

    def derive(self, tokenizer, source: Sample, length: int) -> Sample:
        """The input of ``length`` tokens cut from another task's ``source`` sample, so that one
        forward pass serves both tasks. Only tasks that a run option pairs with another override it
        (``ppl_document="haystack"`` of :func:`ropelab.eval.runner.evaluate`: ppl cut from the
        passkey haystacks)."""
        raise RopelabError(f"{self.name}: cannot be built from another task's samples")

    def recorded_fields(self, sample: Sample) -> dict[str, Any]:
        """The fields of ``sample`` its result records carry (the keys in :attr:`recorded`)."""
        return {key: sample.extra[key] for key in self.recorded if key in sample.extra}

    def check_length(self, length: int) -> None:
        if length < self.min_length:
            raise RopelabError(
                f"{self.name}: length {length} is too short; the task needs at least {self.min_length} tokens"
            )
