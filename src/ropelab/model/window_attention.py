"""Attention for windowed methods (ReRoPE, Self-Extend, HiRoPE): two score sets merged by distance.

For query ``m`` and key ``n <= m`` (sequence indices) the logit is ``q_near[m] . k_near[n]`` when
``m - n < window`` and ``q_far[m] . k_far[n]`` otherwise. Queries are processed in chunks; for a
chunk ``[s, e)`` only keys ``[s - window + 1, e)`` need near scores and only keys
``[0, e - window)`` need far scores, so the work is one causal ``Q K^T`` plus a band, and memory is
``O(chunk x T)`` per head instead of ``O(T^2)``: a 16K-token prefill never materialises a full
``T x T`` matrix. Softmax runs in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Upper bound on the float32 score block of one query chunk (all heads), in elements.
SCORE_BLOCK_ELEMENTS = 1 << 25  # 128 MB


def _scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``q`` [B, Hkv, G, C, d] against ``k`` [B, Hkv, N, d] -> [B, Hkv, G, C, N] float32."""
    return torch.matmul(q, k.unsqueeze(2).transpose(-1, -2)).float() * scale


def windowed_attention(
    q_near: Tensor,
    q_far: Tensor,
    k_near: Tensor,
    k_far: Tensor,
    value: Tensor,
    window: int,
    past: int,
    chunk_size: int | None = None,
) -> Tensor:
    """Causal attention of queries ``[B, H, Tq, d]`` (sequence indices ``past .. past+Tq-1``) over
    keys/values ``[B, Hkv, Tk, d]`` (indices ``0 .. Tk-1``, ``Tk = past + Tq``)."""
    B, H, Tq, d = q_near.shape
    Hkv, Tk = k_near.shape[1], k_near.shape[2]
    groups = H // Hkv
    scale = 1.0 / math.sqrt(d)
    if chunk_size is None:
        chunk_size = max(16, SCORE_BLOCK_ELEMENTS // max(1, B * H * Tk))
    qn = q_near.view(B, Hkv, groups, Tq, d)
    qf = q_far.view(B, Hkv, groups, Tq, d)
    out = torch.empty(B, Hkv, groups, Tq, d, dtype=value.dtype, device=value.device)
    for start in range(0, Tq, chunk_size):
        stop = min(Tq, start + chunk_size)
        first, last = past + start, past + stop - 1  # sequence indices of the chunk's queries
        n_keys = last + 1
        query_index = torch.arange(first, last + 1, device=q_near.device)[:, None]
        scores = torch.full((B, Hkv, groups, stop - start, n_keys), float("-inf"), device=q_near.device)
        far_end = max(0, last - window + 1)  # keys n <= m - window for some m in the chunk
        if far_end > 0:
            key_index = torch.arange(far_end, device=q_near.device)[None]
            far = _scores(qf[:, :, :, start:stop], k_far[:, :, :far_end], scale)
            scores[..., :far_end] = far.masked_fill(query_index - key_index < window, float("-inf"))
        near_start = max(0, first - window + 1)
        if window > 0 and near_start < n_keys:
            key_index = torch.arange(near_start, n_keys, device=q_near.device)[None]
            distance = query_index - key_index
            near = _scores(qn[:, :, :, start:stop], k_near[:, :, near_start:n_keys], scale)
            inside = (distance >= 0) & (distance < window)
            scores[..., near_start:n_keys] = torch.where(inside, near, scores[..., near_start:n_keys])
        weights = scores.softmax(dim=-1).to(value.dtype)
        out[:, :, :, start:stop] = torch.matmul(weights, value[:, :, :n_keys].unsqueeze(2))
    return out.view(B, H, Tq, d)
