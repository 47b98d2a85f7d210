"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"; the needle test of long-context
papers): a 5-digit number hidden at depth ``d`` of a long filler, asked for at the end.

Filler (the haystack): stdlib Python code, the same document as the ppl task's sample of the same
index (:func:`ropelab.eval.tasks.ppl.code_document`), tokenized as one text, so the haystack is natural
code. The needle is a comment line inserted at the line start nearest fraction ``d`` of the
haystack tokens::

    # The pass key is 68217. Remember it. 68217 is the pass key.

and the prompt ends with ``# What is the pass key? The pass key is``; the gold answer is
`` 68217``. Prompt plus answer is exactly the requested length: the haystack fills what the
question and the answer leave. Sample ``i`` of ``n`` sits at depth ``i / (n - 1)`` (0 = start,
1 = end), so a run over ``n`` samples and several lengths is the depth x length grid of the
heatmap (one sample: depth 0.25). Scored teacher-forced: exact match means greedy decoding would
produce the five digits.
"""

from __future__ import annotations

import random

from ropelab.core.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.documents import first_tokens
from ropelab.eval.tasks.ppl import check_stdlib_holds, code_document

QUESTION = "\n# What is the pass key? The pass key is"


def depth_of(index: int, n: int) -> float:
    """Depth of sample ``index`` of ``n``: evenly from 0 to 1; a single sample sits at 0.25, so at
    1.5x the train length its needle is further from the question than the train length reaches
    (a truncated-context ``window`` cannot see it)."""
    return 0.25 if n == 1 else index / (n - 1)


def insert_needle(
    tokenizer, text: str, count: int, depth: float, needle: str, name: str = "the filler"
) -> tuple[list[int], int, int]:
    """The first ``count`` tokens of ``text`` with ``needle`` inserted at a line start near
    fraction ``depth`` of them; returns ``(ids, needle_start, needle_end)`` (token offsets).

    The needle goes to the line start nearest token ``depth x (count - its length)`` -- the next
    one only if the needle still ends within the ``count`` tokens there, so even at depth 1 it lies
    wholly inside them."""
    plain = first_tokens(tokenizer, text, count)
    if len(plain) < count:
        raise RopelabError(f"passkey: {name} has fewer than {count:,} tokens; use a shorter length")
    size = len(tokenizer.encode(needle))
    target = max(0, round(depth * (count - size)))
    char = len(tokenizer.decode(plain[:target]))
    cut = text.rfind("\n", 0, char) + 1  # the start of the line that holds token ``target``
    after = text.find("\n", char) + 1  # the next line start (0: none)
    if after and after - char < char - cut and len(tokenizer.encode(text[:after])) + size <= count:
        cut = after
    ids = first_tokens(tokenizer, text[:cut] + needle + text[cut:], count)
    start = len(tokenizer.encode(text[:cut]))
    end = len(tokenizer.encode(text[:cut] + needle))
    return ids, start, end


class Passkey(Task):
    name = "passkey"
    description = "retrieve a 5-digit pass key hidden at depth d of a long code filler"
    mode = "teacher_forced"
    metric = "exact_match"
    recorded = ("depth", "document")
    min_length = 96
    reads_documents = True
    grid_key = "depth"
    grid_title = "passkey retrieval"

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        if self.documents is None:
            check_stdlib_holds(tokenizer, length)
        question = {mark: tokenizer.encode(QUESTION.replace("#", mark, 1)) for mark in ("#", "//")}
        samples = []
        for index in range(n):
            document = code_document(length, index, seed, self.documents)
            rng = random.Random(f"passkey:{seed}:{length}:{index}")
            key = str(rng.randint(10000, 99999))
            mark = "#" if document.language in ("python", "text") else "//"  # a comment line in the code
            needle = f"{mark} The pass key is {key}. Remember it. {key} is the pass key.\n"
            answer = f" {key}"
            answer_ids = tokenizer.encode(answer)
            depth = depth_of(index, n)
            count = length - len(question[mark]) - len(answer_ids)
            haystack, start, end = insert_needle(tokenizer, document.text, count, depth, needle, document.name)
            prompt_ids = haystack + question[mark]
            samples.append(
                self.sample(
                    length, index, seed, tokenizer.decode(prompt_ids), prompt_ids,
                    answer=answer, answer_ids=answer_ids, language=document.language, depth=depth, needle_token=start,
                    needle_end=end, haystack_tokens=count, files=document.files, document=document.name,
                )
            )  # fmt: skip
        return samples

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        correct = [int(p == g) for p, g in zip(outputs.answer_argmax, sample.answer_ids)]
        return {"exact_match": float(all(correct)), "digit_accuracy": sum(correct) / len(correct)}
