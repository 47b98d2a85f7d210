"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"; the needle test of long-context
papers): a 5-digit number hidden at depth ``d`` of a long filler, asked for at the end.

Filler: stdlib Python code (ropelab's corpus), so the haystack looks like the long code inputs of
the other tasks. The needle is a comment line inserted at a line boundary at fraction ``d`` of the
filler tokens::

    # The pass key is 68217. Remember it. 68217 is the pass key.

and the prompt ends with ``# What is the pass key? The pass key is``; the gold answer is
`` 68217``. Sample ``i`` of ``n`` sits at depth ``i / (n - 1)`` (0 = start, 1 = end), so a run over
``n`` samples and several lengths is the depth x length grid of the heatmap (one sample: depth
0.25). Scored teacher-forced:
exact match means greedy decoding would produce the five digits.
"""

from __future__ import annotations

import random

from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.corpus import long_code

QUESTION = "\n# What is the pass key? The pass key is"


def depth_of(index: int, n: int) -> float:
    """Depth of sample ``index`` of ``n``: evenly from 0 to 1; a single sample sits at 0.25, so at
    1.5x the train length its needle is further from the question than the train length reaches
    (a truncated-context ``window`` cannot see it)."""
    return 0.25 if n == 1 else index / (n - 1)


class Passkey(Task):
    name = "passkey"
    description = "retrieve a 5-digit pass key hidden at depth d of a long code filler"
    mode = "teacher_forced"
    metric = "exact_match"
    min_length = 96

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        filler_text, files = long_code(min_chars=length * 6, skip=1 + seed % 5)
        filler_lines = filler_text.splitlines(keepends=True)
        samples = []
        for index in range(n):
            rng = random.Random(f"passkey:{seed}:{length}:{index}")
            key = str(rng.randint(10000, 99999))
            needle = f"# The pass key is {key}. Remember it. {key} is the pass key.\n"
            answer = f" {key}"
            fixed = len(tokenizer.encode(needle)) + len(tokenizer.encode(QUESTION)) + 2
            budget = length - fixed
            # whole filler lines up to the token budget, then the needle at depth d (a line boundary)
            line_ids, total = [], 0
            for line in filler_lines:
                ids = tokenizer.encode(line)
                if total + len(ids) > budget:
                    break
                line_ids.append(ids)
                total += len(ids)
            depth = depth_of(index, n)
            # the line boundary whose token offset is nearest to depth x filler tokens
            boundaries = [0]
            for ids in line_ids:
                boundaries.append(boundaries[-1] + len(ids))
            at = min(range(len(boundaries)), key=lambda b: abs(boundaries[b] - depth * total))
            pieces = [*line_ids[:at], tokenizer.encode(needle), *line_ids[at:], tokenizer.encode(QUESTION)]
            prompt_ids = [t for piece in pieces for t in piece]
            samples.append(
                Sample(
                    task=self.name,
                    length=length,
                    index=index,
                    seed=seed,
                    prompt=tokenizer.decode(prompt_ids),
                    prompt_ids=prompt_ids,
                    answer=answer,
                    answer_ids=tokenizer.encode(answer),
                    language="python",
                    extra={"depth": depth, "needle_token": sum(len(p) for p in line_ids[:at]), "files": files},
                )
            )
        return samples

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        correct = [int(p == g) for p, g in zip(outputs.answer_argmax, sample.answer_ids)]
        return {"exact_match": float(all(correct)), "digit_accuracy": sum(correct) / len(correct)}
