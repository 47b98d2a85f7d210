"""The order in which training sees the packed tokens: a pure function of (seed, sample index).

The train array is cut into ``n = (len - 1) // seq_len`` chunks; chunk ``c`` is the tokens
``[c * seq_len, c * seq_len + seq_len + 1)`` (inputs plus the shifted targets). Sample ``i`` of
the stream is chunk ``perm_e[i mod n]`` of epoch ``e = i // n``, where ``perm_e`` is a
permutation drawn from ``numpy.random.default_rng([seed, e])``. Every chunk is seen once per
epoch, and the data position of a run is one integer (samples consumed), so a resumed run reads
exactly what an uninterrupted one would, and a distributed run can split the same global batch
between ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from ropelab.core.errors import RopelabError


class ChunkSampler:
    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, split: str = "train") -> None:
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        self.num_chunks = (len(tokens) - 1) // seq_len if len(tokens) else 0
        if self.num_chunks < 1:
            raise RopelabError(
                f"the {split} split has {len(tokens)} tokens, fewer than one sequence of {seq_len} + 1; "
                "use more data or a shorter --train-len"
            )
        self._epoch: int | None = None
        self._perm: np.ndarray | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_chunks)
            self._epoch = epoch
        return self._perm

    def chunk_ids(self, start: int, count: int) -> list[int]:
        """Chunk index of samples ``start .. start + count - 1``."""
        ids = []
        for i in range(start, start + count):
            epoch, offset = divmod(i, self.num_chunks)
            ids.append(int(self.permutation(epoch)[offset]))
        return ids

    def chunks(self, chunk_ids: list[int]) -> torch.Tensor:
        """``[len(chunk_ids), seq_len + 1]`` int64 token ids."""
        rows = [self.tokens[c * self.seq_len : c * self.seq_len + self.seq_len + 1] for c in chunk_ids]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def batch(self, start: int, count: int) -> torch.Tensor:
        return self.chunks(self.chunk_ids(start, count))

    def epoch_of(self, sample: int) -> float:
        return sample / self.num_chunks


def evenly_spaced_chunks(sampler: ChunkSampler, count: int) -> list[int]:
    """``count`` chunk indices spread evenly over the split (all chunks when there are fewer):
    a fixed validation set."""
    if count >= sampler.num_chunks:
        return list(range(sampler.num_chunks))
    return sorted({round(float(x)) for x in np.linspace(0, sampler.num_chunks - 1, count)})
