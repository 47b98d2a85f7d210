"""Synthetic record sequences mixed into training, so that in-context copying is learnable at CPU scale.

Copying a span seen earlier in the context ("induction") is what the HoPE paper's copy, few-shot
and passkey tasks measure. Language models acquire it from billions of tokens of natural text; a
small model trained for minutes on natural code does not acquire it at all (docs/results.md,
section 7). Sequences in which copying pays off on many tokens make it appear within a few
hundred steps, so :class:`MixtureSampler` replaces a share of the training sequences with
*record sequences*:

* a record is a span of ``6..16`` consecutive tokens of the **training split** (a span holding
  the end-of-text token or a token whose text contains a newline is drawn again), so records are
  natural code fragments, never text of the held-out evaluation files;
* records are joined by the tokenizer's newline token (the separator of the copy task);
* every record after the first is, with probability ``repeat``, a copy of a uniformly chosen
  earlier record of the same sequence (so the distance between a record and its copy is spread
  over the whole train length), otherwise a new span.

Inside a repeated record every token after the first is predictable from the earlier copy; the
loss rewards nothing else as much. The other sequences stay natural code chunks, in the order of
:class:`~ropelab.data.loader.ChunkSampler` (sample ``i`` is natural chunk ``i`` of the stream
when it is not synthetic).

Determinism: whether sample ``i`` is synthetic and what it holds are a pure function of
``(seed, i)`` (a generator seeded by ``[seed, i, SALT]``), like the natural order, so resumed and
distributed runs read exactly what an uninterrupted single-process run would.
"""

from __future__ import annotations

import numpy as np
import torch

from ropelab.core.errors import RopelabError
from ropelab.data.loader import ChunkSampler

#: record lengths drawn uniformly from this range (inclusive); the copy task's records are 12 tokens
RECORD_TOKENS = (6, 16)
_SALT = 0x5EC0  # keeps the synthetic draws apart from any other generator seeded by (seed, i)
_MAX_DRAWS = 1000


class MixtureSampler:
    """Natural chunks of ``natural`` with a ``fraction`` of the samples replaced by record
    sequences; the same interface as :class:`ChunkSampler` (``batch``, ``epoch_of``)."""

    def __init__(
        self,
        natural: ChunkSampler,
        tokenizer,
        fraction: float,
        repeat: float = 0.5,
        record_tokens: tuple[int, int] = RECORD_TOKENS,
    ) -> None:
        if not 0 <= fraction <= 1:
            raise RopelabError(f"synthetic fraction must be in [0, 1], got {fraction}")
        if not 0 <= repeat < 1:
            raise RopelabError(f"repeat probability must be in [0, 1), got {repeat}")
        low, high = record_tokens
        if not 1 <= low <= high:
            raise RopelabError(f"record lengths must satisfy 1 <= low <= high, got {record_tokens}")
        self.natural = natural
        self.seq_len = natural.seq_len
        self.seed = natural.seed
        self.fraction = fraction
        self.repeat = repeat
        self.record_tokens = (low, high)
        separator = list(tokenizer.encode("\n"))
        if len(separator) != 1:
            raise RopelabError("synthetic records need a tokenizer that encodes a newline as one token")
        self.separator = separator[0]
        self.tokens = np.asarray(natural.tokens)
        if fraction > 0:
            self._unusable = np.concatenate([[0], np.cumsum(_unusable_ids(tokenizer)[self.tokens.astype(np.int64)])])
            if len(self.tokens) <= high or self._unusable[-1] == len(self.tokens):
                raise RopelabError("the train split is too small to draw synthetic records from")

    # -- the stream ------------------------------------------------------------------------------
    def is_synthetic(self, index: int) -> bool:
        return self.fraction > 0 and self._rng(index).random() < self.fraction

    def sample(self, index: int) -> np.ndarray:
        """Sample ``index`` of the stream: ``seq_len + 1`` token ids."""
        rng = self._rng(index)
        if self.fraction > 0 and rng.random() < self.fraction:
            return self._records(rng)
        return self.natural.chunks(self.natural.chunk_ids(index, 1))[0].numpy()

    def batch(self, start: int, count: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.sample(i) for i in range(start, start + count)]).astype(np.int64))

    def epoch_of(self, sample: int) -> float:
        return self.natural.epoch_of(sample)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, _SALT])

    # -- record sequences ------------------------------------------------------------------------
    def _record(self, rng: np.random.Generator) -> list[int]:
        low, high = self.record_tokens
        for _ in range(_MAX_DRAWS):
            size = int(rng.integers(low, high + 1))
            start = int(rng.integers(0, len(self.tokens) - size))
            if self._unusable[start + size] == self._unusable[start]:
                return self.tokens[start : start + size].tolist()
        raise RopelabError("the train split has too few newline-free spans to draw synthetic records from")

    def _records(self, rng: np.random.Generator) -> np.ndarray:
        out: list[int] = []
        records: list[list[int]] = []
        while len(out) < self.seq_len + 1:
            if records and rng.random() < self.repeat:
                record = records[int(rng.integers(0, len(records)))]
            else:
                record = self._record(rng)
                records.append(record)
            out += record
            out.append(self.separator)
        return np.asarray(out[: self.seq_len + 1], dtype=np.int64)


def _unusable_ids(tokenizer) -> np.ndarray:
    """``[vocab]`` booleans: the token may not appear inside a record (special tokens, and tokens
    whose text holds a newline, which would blur the record boundaries)."""
    size = tokenizer.vocab_size
    texts = tokenizer.backend.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
    unusable = np.array(["\n" in text for text in texts], dtype=bool)
    for name in ("bos_id", "eos_id"):
        special = getattr(tokenizer, name, None)
        if special is not None:
            unusable[special] = True
    return unusable


__all__ = ["RECORD_TOKENS", "MixtureSampler"]
