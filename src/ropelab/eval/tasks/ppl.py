"""Perplexity vs input length -- the HoPE paper's protocol (Section 4.2.1): the zero-shot loss of
the **last 256 tokens** of an input of each length (the last half of an input shorter than 512),
on long documents.

Each length scores *different* tokens (the last 256 of a longer prefix), so the curve across
lengths mostly shows which lines sit where. To ask whether a method uses more context, use the
``context`` task (:mod:`ropelab.eval.tasks.context`): loss by position against a window reference, and
the same targets scored with growing context.

Documents: whole stdlib Python files, largest first, concatenated in a fixed order
(:func:`ropelab.eval.documents.long_code`); sample ``i`` starts ``3 i`` files further into that order,
so samples differ and every run sees the same text. The input of length ``L`` is the first ``L``
tokens of the document, so the inputs of one sample at different lengths are prefixes of each
other: for a causal model (and a method whose angles do not depend on the input length) the
loss of tokens ``[L-256, L)`` is the same inside any longer pass, and the runner computes all
lengths from one forward pass of the longest. Per-position loss buckets of that pass are kept for
plots.

**On the passkey haystack** (``ppl_document="haystack"``, the default of ``ropelab compare``):
the passkey task's haystack *is* this document (the same stdlib files) with one needle comment
line inserted, so the input of length ``L`` is the first ``L`` tokens of the longest passkey
sample's haystack, and one forward pass per method serves both tasks. The needle's tokens are
not scored. The haystack stops where the passkey question starts (about 15 tokens before the
passkey length): a ppl length beyond it is scored at the haystack's end and its record says so
(``input_tokens``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ropelab.core.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.documents import first_tokens, long_code, stdlib_python_files

#: tokens scored at the end of each input (the HoPE paper's protocol); an input shorter than twice
#: this scores its last half (:func:`scored_tail`), so a small model's short lengths run too
TAIL = 256


def scored_tail(length: int) -> int:
    """The tokens scored at the end of an input of ``length`` tokens: the last :data:`TAIL`, or the
    last half of an input shorter than ``2 x TAIL``."""
    return min(TAIL, length // 2)


class Document(NamedTuple):
    text: str  # long enough for the length asked (the built-in corpus), or the whole document (yours)
    files: list[str]
    name: str
    language: str


def code_document(length: int, index: int, seed: int, documents: list | None = None) -> Document:
    """Document ``index`` of a run. Built in: text long enough for ``length`` tokens, where sample
    ``i`` starts ``3 i + seed mod 7`` files into the stdlib's fixed order (when the files from there
    on hold too little text -- late samples of a long run -- it reuses the document of sample
    ``i // 2``, repeatedly). With ``documents`` (``--documents``): the ``index``-th of them, whole.
    Shared by ppl and passkey, so a passkey haystack is the ppl document plus the needle."""
    if documents is not None:
        if index >= len(documents):
            raise RopelabError(
                f"{len(documents)} document(s) given, but sample {index + 1} asked for; "
                f"use --samples {len(documents)} or more documents"
            )
        chosen = documents[index]
        return Document(chosen.text, list(chosen.files), chosen.name, chosen.language)
    skip = 3 * index + seed % 7
    text, files = long_code(min_chars=length * 6, skip=skip)
    while len(text) < length * 6 and index > 0:  # past the stdlib's long files: sample i // 2's document
        index //= 2
        skip = 3 * index + seed % 7
        text, files = long_code(min_chars=length * 6, skip=skip)
    return Document(text, files, f"stdlib:{skip}", "python")


def check_stdlib_holds(tokenizer, length: int) -> None:
    """Refuse at once a length the standard library's code cannot fill: its size from file sizes, in
    tokens at the tokenizer's characters per token on a 100K-character sample, with a margin of 1.25
    (a length between the estimate and 1.25 times it is tried, and refused exactly if it does not fit)."""
    files = stdlib_python_files()
    size = sum(path.stat().st_size for path in files)
    sample = long_code(min_chars=100_000)[0][:100_000]
    estimate = int(size * len(tokenizer.encode(sample)) / max(1, len(sample)))
    if length > 1.25 * estimate:
        raise RopelabError(
            f"length {length:,} tokens: the standard library's Python code ({len(files):,} files, {size:,} bytes) "
            f"is about {estimate:,} tokens; use a shorter length (or --documents with more code)"
        )


class Perplexity(Task):
    name = "ppl"
    description = (
        "the HoPE paper's protocol: loss of the last 256 tokens of an input of each length (long stdlib code; "
        "each length scores different tokens -- the context task compares lengths on the same ones)"
    )
    mode = "loss"
    metric = "loss"
    higher_is_better = False
    min_length = 16
    reads_documents = True
    recorded = ("document",)
    report_note = "the HoPE paper's protocol: loss of the last 256 tokens of each input (the last half below 512)"

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        if self.documents is None:
            check_stdlib_holds(tokenizer, length)
        samples = []
        for index in range(n):
            document = code_document(length, index, seed, self.documents)
            ids = first_tokens(tokenizer, document.text, length)
            if len(ids) < length:
                raise RopelabError(
                    f"ppl: {document.name} has fewer than {length:,} tokens; use a shorter length"
                    + (" or longer documents" if self.documents is not None else "")
                )
            samples.append(
                self.sample(
                    length, index, seed, tokenizer.decode(ids), ids,
                    language=document.language, files=document.files, document=document.name,
                )
            )  # fmt: skip
        return samples

    def from_haystack(self, tokenizer, passkey: Sample, length: int) -> Sample:
        """The ppl input of ``length`` tokens cut from a passkey sample's haystack (its prompt
        without the question); the needle's token span is kept so that it is not scored."""
        self.check_length(length)
        haystack = passkey.prompt_ids[: passkey.extra["haystack_tokens"]]
        ids = haystack[:length]
        start, end = passkey.extra["needle_token"], passkey.extra["needle_end"]
        extra = {
            "files": passkey.extra["files"],
            "document": passkey.extra["document"],
            "haystack": f"passkey sample {passkey.index} at {passkey.length} tokens",
        }
        if start < len(ids):
            extra["needle"] = [start, min(end, len(ids))]
        return self.sample(
            length, passkey.index, passkey.seed, tokenizer.decode(ids), ids,
            language=passkey.language, **extra,
        )  # fmt: skip

    def derive(self, tokenizer, source: Sample, length: int) -> Sample:
        """Cut from a passkey sample's haystack (:meth:`from_haystack`)."""
        return self.from_haystack(tokenizer, source, length)

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        # entry t of the losses scores token t + 1; the needle's tokens (haystack inputs) are skipped
        first = max(0, len(outputs.losses) - scored_tail(sample.length))
        start, end = sample.extra.get("needle", (0, 0))
        tail = [loss for t, loss in enumerate(outputs.losses[first:], first) if not start <= t + 1 < end]
        loss = sum(tail) / len(tail)
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
