"""ReRoPE -- Su 2023, "Rectified Rotary Position Embeddings" (kexue.fm/archives/9708; reference
code ``bojone/rerope``), the window baseline of the HiRoPE paper.

Relative distances below ``window`` keep RoPE; every larger distance is clamped to ``window``:
the far score is ``(R(window) q_m) . k_n`` with the key unrotated, so the model never sees a
relative position it was not trained on.

``logn`` -- a choice ropelab makes explicit. The reference code (``bojone/rerope``) always
multiplies each query by ``max(1, log(m+1)/log(L))`` in both score sets (a length-dependent
attention temperature, Su's "log-n" scaling). ropelab's default is ``logn=false``: the method
then is the position rectification alone, which is what the HiRoPE paper describes as its ReRoPE
baseline (window 512, no scaling mentioned) and what keeps the comparison with the other
training-free methods about positions rather than temperature. The factor is 1 for every query
inside the train length, so the two differ only beyond it. ``rerope:logn=true`` is the reference
code's behaviour; ropelab's long-context measurements report both.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ropelab.pe.base import MethodInfo, Param, PEContext, WindowedRotation
from ropelab.pe.window import WindowedEncoding

REROPE_PAPER = "Su 2023, Rectified Rotary Position Embeddings (ReRoPE), https://kexue.fm/archives/9708"


class ReRoPE(WindowedEncoding):
    def __init__(self, ctx: PEContext, spec: str, window: int, logn: bool) -> None:
        super().__init__(ctx, spec, window)
        self.logn = logn

    def windowed_rotation(self, positions: Tensor, index: Tensor) -> WindowedRotation:
        linear = self.linear_positions(positions, index)
        factor: float | Tensor = 1.0
        if self.logn:
            factor = (torch.log(linear.to(torch.float32) + 1) / math.log(self.ctx.train_len)).clamp(min=1.0)
        near_k = self.rope(linear)
        near_q = self.rope(linear, factor)
        far_q = self.rope(torch.full_like(linear, self.window), factor)
        return WindowedRotation(near_q=near_q, near_k=near_k, far_q=far_q, far_k=self.identity(near_k))


def _build(ctx: PEContext, spec: str, window: int, logn: bool) -> ReRoPE:
    return ReRoPE(ctx, spec, window, logn)


METHODS = [
    MethodInfo(
        name="rerope",
        family="window",
        kind="window",
        description="ReRoPE: RoPE within the window, relative distance clamped to the window beyond it.",
        paper=REROPE_PAPER,
        params=(
            Param("window", int, 512, "distance below which plain RoPE is used", minimum=1),
            Param(
                "logn",
                bool,
                False,
                "scale queries by max(1, log(m+1)/log(train_len)) as the reference code always does "
                "(default off: the rectification alone, as the HiRoPE paper's baseline)",
            ),
        ),
        factory=_build,
    )
]
