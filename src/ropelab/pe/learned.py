"""Learned absolute position embeddings -- Vaswani et al. 2017 ("Attention Is All You Need",
Section 3.5 mentions the learned variant) as used by GPT-2 (Radford et al. 2019): a trainable
``[max_len, dim]`` table added to the token embeddings, initialised N(0, 0.02) like GPT-2.

A learned table has no entries past ``max_len`` (default: the training length; a shorter one is
refused): asking for a later position raises a clear error instead of indexing out of range. It
cannot extrapolate.

The table is at most :data:`MAX_LEN` positions and must fit in the machine's memory: a larger one
(``learned:max_len=1e11``, or a model whose training length is that large) is refused before
anything is allocated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ropelab.core.errors import RopelabError
from ropelab.core.machine import physical_memory
from ropelab.pe.base import MethodInfo, Param, PEContext, PositionEncoding

#: the largest table (positions); far beyond any trained context of a learned-APE model (GPT-2: 1024)
MAX_LEN = 1_000_000


class LearnedAbsolute(PositionEncoding):
    def __init__(self, ctx: PEContext, spec: str, max_len: int) -> None:
        super().__init__(ctx, spec)
        if ctx.dim is None:
            raise RopelabError("learned: the model width (dim) is needed to build the embedding table")
        if 0 < max_len < ctx.train_len:  # the model could not even run at its training length
            raise RopelabError(
                f"learned: max_len={max_len} is shorter than the training length {ctx.train_len}; "
                f"use max_len=0 (the training length) or at least {ctx.train_len}"
            )
        self.max_len = max_len or ctx.train_len
        if self.max_len > MAX_LEN:
            raise RopelabError(
                f"learned: a table of {self.max_len} positions (max_len, else the training length) is more than "
                f"the limit of {MAX_LEN}"
            )
        memory, needed = physical_memory(), 4 * self.max_len * ctx.dim
        if memory is not None and needed > memory:
            raise RopelabError(
                f"learned: a table of {self.max_len} x {ctx.dim} needs {needed / 2**30:.1f} GiB, more than this "
                f"machine's memory ({memory / 2**30:.1f} GiB)"
            )
        self.table = nn.Embedding(self.max_len, ctx.dim)
        nn.init.normal_(self.table.weight, mean=0.0, std=0.02)

    @property
    def max_position(self) -> int:
        return self.max_len - 1

    def input_embedding(self, positions: Tensor) -> Tensor:
        """The table's rows (positions checked against :attr:`max_position` at the boundary,
        :func:`ropelab.model.inputs.check_inputs`)."""
        if positions.dim() != 2:
            raise RopelabError("learned: positions must be one index per token ([batch, seq])")
        return self.table(positions.to(torch.long))


def _build(ctx: PEContext, spec: str, max_len: int) -> LearnedAbsolute:
    return LearnedAbsolute(ctx, spec, max_len)


METHODS = [
    MethodInfo(
        name="learned",
        family="absolute",
        kind="encoding",
        description="Learned absolute position embeddings added to the input (GPT-2 style).",
        paper="Vaswani et al. 2017, Attention Is All You Need (arXiv 1706.03762); Radford et al. 2019 (GPT-2)",
        params=(Param("max_len", int, 0, "table size; 0 = the training length", minimum=0, maximum=MAX_LEN),),
        factory=_build,
    )
]
