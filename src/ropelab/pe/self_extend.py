"""Self-Extend -- Jin et al. 2024, "LLM Maybe LongLM: Self-Extend LLM Context Window Without
Tuning" (arXiv 2401.01325), Section 3, Eq. (3)-(4); the HiRoPE paper's strongest baseline.

Neighbour attention: pairs with ``m - n < window`` use plain RoPE. Grouped attention: positions
are floor-divided by ``group`` and the query shifted so the two regions join smoothly:
``q at m // G + (window - window // G)``, ``k at n // G``. Defaults follow the examples in the
reference code's README (``datamllab/LongLM``: group 4, neighbour window 1024; its function default
is group 8); docs/methods.md, "Self-Extend".
"""

from __future__ import annotations

from torch import Tensor

from ropelab.pe.base import MethodInfo, Param, PEContext, WindowedRotation
from ropelab.pe.window import WindowedEncoding

SELF_EXTEND_PAPER = (
    "Jin et al. 2024, LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning (arXiv 2401.01325)"
)


class SelfExtend(WindowedEncoding):
    def __init__(self, ctx: PEContext, spec: str, group: int, window: int) -> None:
        super().__init__(ctx, spec, window)
        self.group = group

    def windowed_rotation(self, positions: Tensor, index: Tensor) -> WindowedRotation:
        linear = self.linear_positions(positions, index)
        near = self.rope(linear)
        shift = self.window - self.window // self.group
        grouped = linear.div(self.group, rounding_mode="floor")
        return WindowedRotation(near_q=near, near_k=near, far_q=self.rope(grouped + shift), far_k=self.rope(grouped))


def _build(ctx: PEContext, spec: str, group: int, window: int) -> SelfExtend:
    return SelfExtend(ctx, spec, group, window)


METHODS = [
    MethodInfo(
        name="self-extend",
        family="window",
        kind="window",
        description="Self-Extend: RoPE within the neighbour window, floor(position/group) beyond it.",
        paper=SELF_EXTEND_PAPER,
        params=(
            Param("group", int, 4, "group size G: far positions are floor(position / G)", minimum=1),
            Param("window", int, 1024, "neighbour window: distance below which plain RoPE is used", minimum=1),
        ),
        factory=_build,
    )
]
