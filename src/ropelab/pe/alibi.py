"""ALiBi -- Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input
Length Extrapolation" (arXiv 2108.12409), Section 3.

Head ``h`` (1-based) of ``n`` adds ``-m_h * (i - j)`` to the logit of query ``i`` and key ``j``.
For ``n`` a power of two the slopes are the geometric sequence starting at ``2^(-8/n)`` with that
ratio; otherwise the slopes of the closest lower power of two ``p`` followed by every other slope
of ``2p`` heads (the paper's reference code). The slopes are fixed, not learned, and shared by all
layers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ropelab.pe.base import MethodInfo, PEContext, PositionEncoding, relative_distance


def alibi_slopes(n_heads: int) -> list[float]:
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


class ALiBi(PositionEncoding):
    def __init__(self, ctx: PEContext, spec: str) -> None:
        super().__init__(ctx, spec)
        slopes = torch.tensor(alibi_slopes(ctx.n_heads), dtype=torch.float32)
        self.register_buffer("slopes", slopes, persistent=False)

    def attention_bias(self, layer: int, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        distance = relative_distance(q_pos, k_pos).abs_()
        return distance * -self.slopes[None, :, None, None]  # [B|1, H, Tq, Tk]

    def distance_bias(self, layer: int, distance: Tensor) -> Tensor:
        return distance.abs()[None] * -self.slopes[:, None]  # [H, n]


def _build(ctx: PEContext, spec: str) -> ALiBi:
    return ALiBi(ctx, spec)


METHODS = [
    MethodInfo(
        name="alibi",
        family="bias",
        kind="encoding",
        description="ALiBi: fixed per-head linear distance penalty on attention logits.",
        paper="Press et al. 2022, Train Short, Test Long: Attention with Linear Biases (arXiv 2108.12409)",
        factory=_build,
    )
]
