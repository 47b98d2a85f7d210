"""Long-context use, three views from one long code document per sample (the default of
``ropelab compare``).

Does a method use context beyond the train length ``L``, and what does it cost inside it? A
sample is one long source document (a Python sample: whole stdlib files; a Java sample: whole JDK
``java.util`` files; samples alternate between the two when JDK sources are installed) of
``length`` tokens with needle lines inserted. One forward pass per method over it gives:

1. **Loss by position** -- the next-token loss of every token of the document (needle tokens
   not scored). The report averages them per position bucket. The ``window`` reference is the
   model's own method with attention limited to the previous ``L`` tokens plus four sink tokens,
   in one pass (:mod:`ropelab.pe.sliding`): a method whose loss beyond ``L`` is below it uses
   context a window cannot reach.
2. **Fixed targets, growing context** -- the last :data:`TARGETS` tokens of the document scored
   with only the previous ``c`` tokens as context (a separate pass over ``c + TARGETS`` tokens)
   for each ``c`` in :func:`contexts`, and with the whole document (from the main pass). The
   targets are the same in every column, so the loss must fall as ``c`` grows for a method that
   uses the context.
3. **Needle grid** -- needle comment lines ``# The pass key of amber is amber60494.`` (distinct
   names and 5-digit keys) sit at depths 0.1, 0.5 and 0.9 of each of three cut lengths
   (``length/3``, ``2 length/3``, ``length``): nine needles in one document. At each cut the
   question ``# The pass key of amber is amber`` is asked about every needle before the cut,
   answered teacher-forced (exact match = greedy decoding gives the five digits). The document's
   KV cache serves every cut: questions are asked from the cached prefix (cut-points descending,
   the cache truncated in place), so the grid costs one prefill per method. This is exact for
   methods whose angles do not depend on the input length (tested against a separate pass);
   ``dynamic-ntk`` says so (``rotation_depends_on_length``) and gets a separate pass per
   question. The name directly before the digits makes the needle retrievable by a small model:
   with ``... of amber is 60494`` SmolLM2-135M confused the first digit between needles.

HiRoPE reads the hierarchy of the document's own text (tree-sitter); its question tokens extend
the last segment, exactly as cached generation does, and its fixed-target passes read the
document's positions for their slice (HiRoPE's scores depend on position differences only).
"""

from __future__ import annotations

import random

import torch

from ropelab.core.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.documents import first_tokens, jdk_sources, long_java
from ropelab.eval.tasks.ppl import code_document

#: target tokens of the fixed-target view (the last ones of the document; at most a quarter of it)
TARGETS = 512
#: needle depths (fraction of the cut's prefix)
DEPTHS = (0.1, 0.5, 0.9)
#: distinct one-token-ish names; a document uses nine of them
NAMES = (
    "amber", "cobalt", "falcon", "juniper", "marble", "orchid", "saffron", "walnut", "copper",
    "lagoon", "meadow", "harbor", "violet", "granite", "willow", "ember",
)  # fmt: skip


def needle_text(name: str, key: str) -> str:
    return f"# The pass key of {name} is {name}{key}. Remember it.\n"


def question_text(name: str) -> str:
    return f"\n# The pass key of {name} is {name}"


def targets(tokens: int) -> int:
    """Target tokens of the fixed-target view for a document of ``tokens`` tokens."""
    return min(TARGETS, tokens // 4)


def cuts(length: int) -> list[int]:
    """The three cut lengths of the needle grid: a third, two thirds and all of ``length``."""
    return sorted({round(length / 3), round(2 * length / 3), length})


def contexts(train_len: int, available: int) -> list[int]:
    """Context lengths of the fixed-target view besides the whole document: ``L/4`` and ``L/2``
    (each a separate pass; ``L`` itself is left out for time -- the ``window`` row is the
    reference at ``L``), capped below what the document holds."""
    return [c for c in (train_len // 4, train_len // 2) if 0 < c < available]


def document(language: str, length: int, index: int, seed: int) -> tuple[str, list[str], str]:
    """Text of ``language`` long enough for ``length`` tokens, its files, its name."""
    skip = 3 * index + seed % 7
    if language == "java":
        source = long_java(min_chars=length * 6, skip=skip)
        if source is None:
            raise RopelabError("context: no JDK sources installed (apt install openjdk-17-source)")
        text, files = source
        return text, files, f"jdk:{skip}"
    return code_document(length, index, seed)


def languages(n: int) -> list[tuple[str, int]]:
    """(language, document index) of each sample: Python and Java alternate when JDK sources are
    installed (``ropelab.eval.documents.jdk_sources``), else every sample is Python."""
    if jdk_sources() is None:
        return [("python", i) for i in range(n)]
    return [("python" if i % 2 == 0 else "java", i // 2) for i in range(n)]


class LongContext(Task):
    name = "context"
    description = (
        "loss by position (vs the one-pass sliding-window reference), fixed targets with growing context, "
        "and a needle grid (3 depths x 3 lengths) from one pass over a long code document"
    )
    mode = "session"
    metric = "loss_beyond"
    higher_is_better = False
    min_length = 256
    report_kind = "context"

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        samples = []
        for index, (language, doc_index) in enumerate(languages(n)):
            samples.append(self._sample(tokenizer, length, index, language, doc_index, seed, train_len))
        return samples

    def _sample(self, tokenizer, length, index, language, doc_index, seed, train_len) -> Sample:
        text, files, name = document(language, length, doc_index, seed)
        rng = random.Random(f"context:{seed}:{length}:{index}")
        grid = [(cut, depth) for cut in cuts(length) for depth in DEPTHS]
        names = rng.sample(NAMES, len(grid))
        keys = [str(k) for k in rng.sample(range(10000, 100000), len(grid))]
        room = max(len(tokenizer.encode(question_text(n))) + len(tokenizer.encode(k)) for n, k in zip(names, keys))
        if len(first_tokens(tokenizer, text, length)) < length:
            raise RopelabError(f"context: {name} has fewer than {length} tokens")
        # needles in order of their place: needle j goes to the line start nearest token
        # depth x (cut - room) of the text with the earlier needles already in it
        order = sorted(zip(grid, names, keys), key=lambda item: item[0][1] * (item[0][0] - room))
        full, floor = text, 0
        for (cut, depth), needle_name, key in order:
            size = len(tokenizer.encode(needle_text(needle_name, key)))
            target = min(round(depth * (cut - room)), cut - room - size)  # deep needles must end before the cut
            char = len(tokenizer.decode(first_tokens(tokenizer, full, target)))
            before = full.rfind("\n", 0, char) + 1
            after = full.find("\n", char) + 1
            closer = after and after - char < char - before
            place = after if closer and len(tokenizer.encode(full[:after])) + size <= cut - room else before
            place = max(place, floor)  # never before (or inside) a needle already placed
            full = full[:place] + needle_text(needle_name, key) + full[place:]
            floor = place + len(needle_text(needle_name, key))
        ids = first_tokens(tokenizer, full, length - room)
        needles = []
        for (cut, depth), needle_name, key in order:
            char = full.index(needle_text(needle_name, key))
            start = len(tokenizer.encode(full[:char]))
            end = len(tokenizer.encode(full[: char + len(needle_text(needle_name, key))]))
            if end > cut - room:
                raise RopelabError(f"context: needle {needle_name} does not fit before its cut {cut}")
            needles.append({"name": needle_name, "key": key, "cut": cut, "depth": depth, "start": start, "end": end})
        return Sample(
            task=self.name,
            length=length,
            index=index,
            seed=seed,
            prompt=tokenizer.decode(ids),
            prompt_ids=ids,
            answer="",
            language=language,
            extra={
                "document": name,
                "files": files,
                "needles": needles,
                "room": room,
                "targets": targets(len(ids)),
                "contexts": contexts(train_len, len(ids) - targets(len(ids))),
            },
        )

    def run(self, evaluator, sample: Sample) -> dict:
        return run(evaluator, sample)

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        raise RopelabError("the context task is scored by its session (LongContext.run)")


def _answer(model, cache, question: list[int], answer: list[int]) -> tuple[list[int], list[float]]:
    """Argmax and loss at each answer token after ``question`` over the cached prefix."""
    logits = model(torch.tensor([question + answer[:-1]]), cache=cache)[0, len(question) - 1 :].float()
    losses = torch.nn.functional.cross_entropy(logits, torch.tensor(answer, device=logits.device), reduction="none")
    return logits.argmax(-1).tolist(), losses.tolist()


def run(evaluator, sample: Sample) -> dict:
    """Everything the record of one (method, document) holds; see the module docstring."""
    model, tokenizer = evaluator.model, evaluator.tokenizer
    extra = sample.extra
    ids = list(sample.prompt_ids)
    length, room = sample.length, extra["room"]
    positions, note = evaluator.positions(sample, ids)
    record: dict = {"document": extra["document"], "language": sample.language, "files": extra["files"]}
    if note:
        record["hierarchy"] = note
    separate = model.pe.rotation_depends_on_length
    cache = model.new_cache()
    hidden = evaluator.prefill(ids, positions, cache)
    losses = model.losses_from_hidden(hidden[None, :-1], torch.tensor([ids[1:]]))[0].tolist()
    del hidden
    skip = {t for n in extra["needles"] for t in range(n["start"], n["end"])}
    token_losses = [None] + [None if t in skip else round(v, 4) for t, v in enumerate(losses, 1)]
    record["token_losses"] = token_losses
    record["metrics"] = _loss_metrics(token_losses, evaluator.train_len)

    # needle grid: every needle before each cut, longest cut first so truncation keeps what is needed
    questions = []
    for cut in sorted(cuts(length), reverse=True):
        prefix = cut - room
        for needle in extra["needles"]:
            if needle["end"] <= prefix:
                questions.append((cut, prefix, needle))
    results = []
    for cut, prefix, needle in questions:
        question = tokenizer.encode(question_text(needle["name"]))
        answer = tokenizer.encode(needle["key"])
        if separate:
            fresh = model.new_cache()
            evaluator.prefill(ids[:prefix], None if positions is None else positions[:, :prefix], fresh)
            predicted, answer_losses = _answer(model, fresh, question, answer)
        else:
            cache.truncate(prefix)
            predicted, answer_losses = _answer(model, cache, question, answer)
        correct = [int(p == g) for p, g in zip(predicted, answer)]
        results.append(
            {
                "name": needle["name"],
                "cut": cut,
                "grid_depth": needle["depth"] if needle["cut"] == cut else None,
                "depth": round(needle["start"] / prefix, 4),
                "distance": prefix - needle["start"],
                "exact": int(all(correct)),
                "digits": sum(correct) / len(correct),
                "loss": sum(answer_losses) / len(answer_losses),
            }
        )
    del cache
    record["needles"] = results
    record["metrics"]["needle_exact"] = sum(r["exact"] for r in results) / len(results)

    # fixed targets: the last TARGETS tokens with context c (separate passes), and the whole document
    end = len(ids)
    first = end - extra["targets"]
    fixed = {"targets": [first, end], "contexts": [], "losses": []}
    for c in extra["contexts"]:
        if evaluator.window:
            continue  # within L the window reference is the model's own method: nothing to measure
        start = first - c
        piece = ids[start:end]
        piece_positions = None if positions is None else positions[:, start:end]
        hidden = evaluator.prefill(piece, piece_positions, None)
        target_losses = model.losses_from_hidden(hidden[None, c - 1 : -1], torch.tensor([piece[c:]]))[0].tolist()
        fixed["contexts"].append(c)
        fixed["losses"].append([None if t in skip else round(v, 4) for t, v in enumerate(target_losses, first)])
    fixed["contexts"].append(first)
    fixed["losses"].append(token_losses[first:end])
    record["fixed"] = fixed
    return record


def _loss_metrics(token_losses: list[float | None], train_len: int) -> dict[str, float]:
    inside = [v for v in token_losses[:train_len] if v is not None]
    beyond = [v for v in token_losses[train_len:] if v is not None]
    metrics = {"loss_inside": sum(inside) / len(inside)}
    if beyond:
        metrics["loss_beyond"] = sum(beyond) / len(beyond)
    return metrics
