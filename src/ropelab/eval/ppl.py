"""Perplexity vs input length -- the HoPE paper's protocol (Section 4.2.1): the zero-shot loss of
the **last 256 tokens** of an input of each length, on long documents.

Documents: whole stdlib Python files, largest first, concatenated in a fixed order
(:func:`ropelab.eval.corpus.long_code`); sample ``i`` starts ``i`` files further into that order,
so samples differ and every run sees the same text. The input of length ``L`` is the first ``L``
tokens of the document, so the inputs of one sample at different lengths are prefixes of each
other: for a causal model (and a method whose angles do not depend on the input length) the
loss of tokens ``[L-256, L)`` is the same inside any longer pass, and the runner computes all
lengths from one forward pass of the longest. Per-position loss buckets of that pass are kept for
plots.
"""

from __future__ import annotations

import math

from ropelab.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.corpus import first_tokens, long_code

TAIL = 256


class Perplexity(Task):
    name = "ppl"
    description = "loss / perplexity of the last 256 tokens at each input length (long stdlib code)"
    mode = "loss"
    metric = "loss"
    higher_is_better = False
    min_length = TAIL + 1

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        samples = []
        for index in range(n):
            text, files = long_code(min_chars=length * 6, skip=3 * index + seed % 7)
            ids = first_tokens(tokenizer, text, length)
            if len(ids) < length:
                raise RopelabError(f"ppl: the stdlib corpus has fewer than {length} tokens from file {3 * index}")
            samples.append(
                Sample(
                    task=self.name,
                    length=length,
                    index=index,
                    seed=seed,
                    prompt=tokenizer.decode(ids),
                    prompt_ids=ids,
                    answer="",
                    language="python",
                    extra={"files": files, "document": f"stdlib:{3 * index + seed % 7}"},
                )
            )
        return samples

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        tail = outputs.losses[-TAIL:]
        loss = sum(tail) / len(tail)
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
