"""Position tensors beyond the prompt: what the KV cache and decoding append."""

from __future__ import annotations

import torch
from torch import Tensor


def extend_positions(positions: Tensor, count: int) -> Tensor:
    """Positions of ``count`` tokens appended after ``positions``.

    One index per token: the next integers. Hierarchical vectors ``[B, T, levels]``: the new
    tokens extend the last segment (token level + 1, higher levels unchanged) -- generated code
    is not re-parsed (documented choice: a re-parse could move tokens already in the cache).
    """
    last = positions[:, -1:]
    steps = torch.arange(1, count + 1, device=positions.device)
    if positions.dim() == 2:
        return last + steps[None]
    step = torch.zeros(positions.shape[-1], dtype=positions.dtype, device=positions.device)
    step[0] = 1
    return last + steps[None, :, None] * step
