"""Evaluation: one runner, every task (one file each), every method unchanged.

Tasks: ``ppl`` (loss of the last 256 tokens vs input length), ``passkey`` (needle retrieval),
``copy`` (HoPE's in-context copying), ``fewshot`` (few-shot following), ``completion`` (long code
completion, LCC style), ``symbols`` (HiRoPE's code symbol understanding). See
:mod:`ropelab.eval.base` for the interface and :mod:`ropelab.eval.runner` for the runner.
"""

from __future__ import annotations

import importlib

from ropelab.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task

#: task name -> "module:Class" (imported on first use)
TASKS = {
    "ppl": "ropelab.eval.ppl:Perplexity",
    "copy": "ropelab.eval.copy:Copy",
    "fewshot": "ropelab.eval.fewshot:FewShot",
    "passkey": "ropelab.eval.passkey:Passkey",
    "completion": "ropelab.eval.completion:Completion",
    "symbols": "ropelab.eval.symbols:Symbols",
    "context": "ropelab.eval.context:LongContext",
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise RopelabError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["TASKS", "Outputs", "Sample", "Task", "get_task"]
