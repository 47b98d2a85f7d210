"""Evaluation: one runner, every task (one file each), every method unchanged.

Tasks: ``ppl`` (loss of the last 256 tokens vs input length; the last half below 512), ``passkey`` (needle retrieval),
``copy`` (HoPE's in-context copying), ``fewshot`` (few-shot following), ``completion`` (long code
completion, LCC style), ``symbols`` (HiRoPE's code symbol understanding). See
:mod:`ropelab.eval.base` for the interface and :mod:`ropelab.eval.runner` for the runner.
"""

from __future__ import annotations

from ropelab.core.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.tasks import completion, context, copy, fewshot, passkey, ppl, symbols

#: task name -> class; each task module holds one (the same shape as the method registry of
#: :mod:`ropelab.pe`: the registry lists modules' entries, the entries carry their names)
TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (
        ppl.Perplexity,
        copy.Copy,
        fewshot.FewShot,
        passkey.Passkey,
        completion.Completion,
        symbols.Symbols,
        context.LongContext,
        context.DevelopmentContext,
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise RopelabError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "Outputs", "Sample", "Task", "get_task"]
