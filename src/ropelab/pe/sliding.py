"""The sliding-window reference: a RoPE-family encoding with attention limited to the previous
``window`` tokens (plus a few "sink" tokens), computed in one pass.

This is what ``ropelab compare``'s ``window`` row uses for long inputs: every query attends to the
keys at sequence distance ``< window`` with the model's own rotation (so every relative distance
is one the model was trained on), and to the first ``sinks`` tokens of the input. Sinks follow
Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks" (StreamingLLM,
arXiv 2309.17453): pretrained models park much of their attention on the first tokens, and a
window that drops them degrades sharply, which would make the reference look worse than what
the model can do without extrapolating. A sink key ``n`` is scored as if it sat at the start of a
window ending at the query: the query is rotated to ``window - 1`` and the key keeps its own
rotation, i.e. relative distance ``window - 1 - n`` (always inside the trained range).

Within the first ``window`` tokens nothing is cut, so the reference equals the model's own method
there exactly. It is not the same as scoring each token with a separate truncated pass: in one
pass the keys' hidden states were themselves computed with a window, so information from further
back can reach a token through the layers (as in any sliding-window model). It is the cheapest
reference in which no attention distance exceeds the train length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ropelab.core.errors import RopelabError
from ropelab.pe.base import PositionEncoding, WindowedRotation
from ropelab.pe.rope import RotaryEncoding

#: StreamingLLM's choice: four initial tokens are enough to keep the attention sink.
DEFAULT_SINKS = 4


class SlidingWindow(PositionEncoding):
    """``inner``'s rotation within ``window`` tokens, the first ``sinks`` tokens beyond it, nothing else."""

    def __init__(self, inner: PositionEncoding, window: int, sinks: int = DEFAULT_SINKS) -> None:
        if not isinstance(inner, RotaryEncoding) or inner.is_windowed or inner.rotation_depends_on_length:
            raise RopelabError(
                f"the sliding-window reference needs a static RoPE-family method; {inner.spec!r} is not one"
            )
        if inner.uses_hierarchy or int(inner.frequency_level.max()) > 0:
            raise RopelabError(f"the sliding-window reference needs one position per token; {inner.spec!r} reads more")
        if window < 1 or sinks < 0:
            raise RopelabError(f"sliding window: window must be >= 1 and sinks >= 0, got {window} and {sinks}")
        super().__init__(inner.ctx, f"window({inner.spec},{window},sinks={sinks})")
        self.inner = inner
        self.window = window
        self.far_keys = sinks

    def windowed_rotation(self, positions: Tensor, index: Tensor) -> WindowedRotation:
        linear = positions if positions.dim() == 2 else index
        near = self.inner.rotation(linear)
        far_q = self.inner.rotation(torch.full_like(linear, self.window - 1))
        return WindowedRotation(near_q=near, near_k=near, far_q=far_q, far_k=near)
