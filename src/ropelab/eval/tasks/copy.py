"""In-context copying (HoPE paper, Section 4.2.1 and Figure 4).

Protocol (paper): a sample is ``N`` sequences of about 12 tokens, each an 8-gram prefix plus a
4-gram suffix, prefixes unique; the input is the ``N`` sequences followed by the prefix of the
*middle* sequence, and the model must continue with that sequence's 4-token suffix (exact match).
The paper uses N = 30..80 at a training length of 512 with 500 samples per N.

Choices made here:

* Every sequence is exactly 12 tokens (8 + 4); sequences are separated by the tokenizer's
  encoding of ``"\\n"``; the prompt is ``seq_0 \\n seq_1 \\n ... seq_{N-1} \\n prefix_{N//2}``
  and the gold continuation is the 4 suffix tokens. There is no BOS: ``prompt_ids`` holds
  exactly the text's tokens, and adding a BOS is the runner's decision.
* ``N`` fills the requested length: ``N = (length - 8) // (12 + len(sep))``, so copying gets
  harder as the runner asks for longer inputs (the paper's "scale N with L"). A fixed
  ``num_sequences`` reproduces the paper's N axis instead (it must fit in ``length``).
* Scoring is teacher-forced: one forward over prompt + suffix; ``exact_match`` is 1 when the
  argmax at all 4 answer positions equals the gold tokens (== greedy decoding reproduces the
  suffix); ``token_accuracy`` is the fraction of the 4 that match.
* Prefixes are unique among the N sequences, and the queried prefix occurs exactly once among all
  8-grams of the joined sequences (separators included; otherwise the draw is repeated), so the
  answer is unambiguous. Sample ``i`` comes from a generator seeded by ``(source, seed, i)``.

Sources (constructor ``source``; the paper does not say where its sequences come from):

* ``"corpus"`` (default): the first 12 tokens of stripped lines (at least 24 characters) of the
  running interpreter's standard library (``ropelab.eval.documents``; ``pydoc_data`` and the
  generated ``encodings`` tables left out), at most 64 lines per file spread over the file,
  files in the corpus' fixed order (largest first), unique by prefix. The pool grows
  deterministically and ``N`` sequences are drawn from its first ``max(2048, 8 N)`` windows, so
  a sample depends only on (tokenizer, length, seed, index).
  Re-tokenisation: ``prompt_ids`` are assembled from ids and ``prompt = decode(prompt_ids)``.
  A window enters the pool only if ``encode("\\n" + text + "\\n") == sep + window + sep`` and
  ``encode("\\n" + prefix_text) == sep + prefix``, i.e. its text tokenises to the same ids
  between separators and also when the text stops after the prefix. With a pre-tokenizer that
  isolates ``"\\n"`` (GPT-2/byte-level BPE, SmolLM2) this makes ``encode(prompt) == prompt_ids``
  hold exactly; ``extra["retokenizes"]`` records whether it does for each sample.
* ``"random"``: tokens drawn uniformly from the vocabulary (no special tokens, nothing that
  decodes to a newline, whitespace only or an invalid byte sequence). ``prompt_ids`` remain the
  model input; the decoded text generally does not re-tokenise to them.
"""

from __future__ import annotations

import random

from ropelab.core.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.documents import caches_reads, read_text, stdlib_python_files

PREFIX_TOKENS = 8
SUFFIX_TOKENS = 4
SEQUENCE_TOKENS = PREFIX_TOKENS + SUFFIX_TOKENS
SOURCES = ("corpus", "random")

_WINDOWS_PER_FILE = 64
_MIN_LINE_CHARS = 24


class Copy(Task):
    name = "copy"
    description = (
        "HoPE in-context copying: N sequences of an 8-token prefix + 4-token suffix, then the middle "
        "sequence's prefix; the model must reproduce its suffix"
    )
    mode = "teacher_forced"
    metric = "exact_match"
    min_length = 64

    def __init__(self, source: str = "corpus", num_sequences: int | None = None) -> None:
        if source not in SOURCES:
            raise RopelabError(f"copy: unknown source {source!r}; choose one of {', '.join(SOURCES)}")
        if num_sequences is not None and num_sequences < 1:
            raise RopelabError(f"copy: num_sequences must be at least 1, got {num_sequences}")
        self.source = source
        self.num_sequences = num_sequences

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        sep = list(tokenizer.encode("\n"))
        if not sep:
            raise RopelabError("copy: the tokenizer encodes a newline to no tokens; it cannot separate sequences")
        per_sequence = SEQUENCE_TOKENS + len(sep)
        fits = (length - PREFIX_TOKENS) // per_sequence
        count = self.num_sequences or fits
        if count > fits:
            raise RopelabError(
                f"copy: {count} sequences need {count * per_sequence + PREFIX_TOKENS} tokens, more than length {length}"
            )
        if count < 1:
            raise RopelabError(f"copy: length {length} is too short for one sequence plus a query")
        if self.source == "corpus":
            windows = _corpus_windows(tokenizer, max(2048, 8 * count))
            if len(windows) < count:
                raise RopelabError(
                    f"copy: only {len(windows)} usable 12-token windows of stdlib code for this tokenizer, "
                    f"{count} needed; use a shorter length or source='random'"
                )

            def draw(rng: random.Random) -> list[list[int]]:
                return [list(window) for window in rng.sample(windows, count)]

        else:
            vocabulary = [token for token in _random_vocabulary(tokenizer) if token not in sep]
            if len(vocabulary) < 16:
                raise RopelabError("copy: the tokenizer has too few printable tokens for source='random'")

            def draw(rng: random.Random) -> list[list[int]]:
                return [[rng.choice(vocabulary) for _ in range(SEQUENCE_TOKENS)] for _ in range(count)]

        samples = []
        for index in range(n):
            rng = random.Random(f"{self.name}:{self.source}:{seed}:{index}")
            sequences = _draw_unambiguous(draw, rng, sep)
            samples.append(self._sample(tokenizer, sequences, sep, length, index, seed))
        return samples

    def _sample(self, tokenizer, sequences, sep, length, index, seed) -> Sample:
        query_index = len(sequences) // 2
        queried = sequences[query_index]
        prompt_ids: list[int] = []
        for sequence in sequences:
            prompt_ids += sequence + sep
        prompt_ids += queried[:PREFIX_TOKENS]
        answer_ids = queried[PREFIX_TOKENS:]
        prompt = tokenizer.decode(prompt_ids)
        return self.sample(
            length, index, seed, prompt, prompt_ids,
            answer=tokenizer.decode(answer_ids), answer_ids=answer_ids,
            query=tokenizer.decode(queried[:PREFIX_TOKENS]), num_sequences=len(sequences), query_index=query_index,
            source=self.source, retokenizes=list(tokenizer.encode(prompt)) == prompt_ids,
        )  # fmt: skip

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        if outputs.answer_argmax is None:
            raise RopelabError("copy: scoring needs the teacher-forced argmax predictions (answer_argmax)")
        gold = sample.answer_ids
        predicted = list(outputs.answer_argmax)[: len(gold)]
        hits = sum(int(p) == g for p, g in zip(predicted, gold))
        return {"exact_match": float(hits == len(gold)), "token_accuracy": hits / len(gold)}


def _draw_unambiguous(draw, rng: random.Random, sep: list[int], attempts: int = 100) -> list[list[int]]:
    """Sequences with unique prefixes whose queried (middle) prefix occurs exactly once as an 8-gram
    of the joined sequences (separators included), so the query has one continuation."""
    for _ in range(attempts):
        sequences = draw(rng)
        if len({tuple(s[:PREFIX_TOKENS]) for s in sequences}) != len(sequences):
            continue
        query = sequences[len(sequences) // 2][:PREFIX_TOKENS]
        body = [token for sequence in sequences for token in (*sequence, *sep)]
        starts = (k for k in range(len(body) - PREFIX_TOKENS + 1) if body[k] == query[0])
        if sum(body[k : k + PREFIX_TOKENS] == query for k in starts) == 1:
            return sequences
    raise RopelabError("copy: could not draw sequences with an unambiguous query; the token source is too repetitive")


_VOCABULARIES: dict[int, tuple[object, list[int]]] = {}


def _random_vocabulary(tokenizer) -> list[int]:
    """Ids that decode on their own to printable, newline-free, non-blank text (no special tokens)."""
    cached = _VOCABULARIES.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    backend = tokenizer.backend
    special = set(backend.get_added_tokens_decoder()) | {tokenizer.bos_id, tokenizer.eos_id} - {None}
    ids = [i for i in range(tokenizer.vocab_size) if i not in special]
    texts = backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    vocabulary = [
        i for i, t in zip(ids, texts) if t.strip() and "\n" not in t and "\ufffd" not in t and t.isprintable()
    ]
    _VOCABULARIES[id(tokenizer)] = (tokenizer, vocabulary)
    return vocabulary


class _WindowPool:
    """12-token windows of stdlib lines, grown file by file in a fixed order, unique by prefix."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.sep = list(tokenizer.encode("\n"))
        self.windows: list[tuple[int, ...]] = []
        self.prefixes: set[tuple[int, ...]] = set()
        self.files = iter(stdlib_python_files())

    def grow(self, size: int) -> list[tuple[int, ...]]:
        for path in self.files:
            if len(self.windows) >= size:
                break
            text = read_text(path)
            if text is not None:
                self._add_file(text)
        return self.windows[:size]

    def _add_file(self, text: str) -> None:
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if len(line) >= _MIN_LINE_CHARS and line.isprintable()]
        if not lines:
            return
        step = max(1, len(lines) // _WINDOWS_PER_FILE)
        lines = lines[::step][:_WINDOWS_PER_FILE]
        backend = self.tokenizer.backend
        candidates = []
        for encoding in backend.encode_batch(lines, add_special_tokens=False):
            window = tuple(encoding.ids[:SEQUENCE_TOKENS])
            if len(window) == SEQUENCE_TOKENS and window[:PREFIX_TOKENS] not in self.prefixes:
                candidates.append(window)
        if not candidates:
            return
        texts = backend.decode_batch([list(w) for w in candidates])
        prefix_texts = backend.decode_batch([list(w[:PREFIX_TOKENS]) for w in candidates])
        checks = backend.encode_batch(
            [f"\n{t}\n" for t in texts] + [f"\n{t}" for t in prefix_texts], add_special_tokens=False
        )
        sep = self.sep
        for k, window in enumerate(candidates):
            if "\n" in texts[k] or window[:PREFIX_TOKENS] in self.prefixes:
                continue
            whole, prefix = checks[k].ids, checks[len(candidates) + k].ids
            if whole == [*sep, *window, *sep] and prefix == [*sep, *window[:PREFIX_TOKENS]]:
                self.windows.append(window)
                self.prefixes.add(window[:PREFIX_TOKENS])


class _Pools(dict):
    """Window pools by tokenizer id; ``cache_clear`` empties them (``documents.caches_reads``)."""

    cache_clear = dict.clear


_POOLS: dict[int, _WindowPool] = caches_reads(_Pools())


def _corpus_windows(tokenizer, size: int) -> list[tuple[int, ...]]:
    pool = _POOLS.get(id(tokenizer))
    if pool is None or pool.tokenizer is not tokenizer:
        pool = _POOLS[id(tokenizer)] = _WindowPool(tokenizer)
    return pool.grow(size)
