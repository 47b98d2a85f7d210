"""Attention with an additive position bias (ALiBi, KERPLE, FIRE), query chunk by query chunk.

The bias of a pair depends on both positions, so it is a float mask of SDPA's. Built for all
queries at once it is a ``[heads, T, T]`` float tensor per layer (4 GB at 16K tokens with 8
heads), most of it the masked upper triangle. Here the queries are processed in chunks
``[s, e)``: each chunk attends only to the keys it may see under the causal mask (``past + e``
of them, never the later ones), with its own ``[B|1, heads, chunk, past + e]`` bias, computed by
the encoding's ``attention_bias`` for just those query and key positions; the causal ``-inf``
goes only into the chunk's diagonal block. Memory is linear in ``T`` (one chunk's bias at a time,
:data:`CHUNK_ELEMENTS` floats), about half the full matrix's arithmetic is never done, and the
result equals the one-shot computation (same bias values, same kernel; tested to 1e-5 in fp32,
with padding, with the KV cache and for the gradients of the learned bias parameters).

Training: autograd keeps each chunk's bias (and SDPA's attention weights: a mask that needs a
gradient takes SDPA's plain path) for the backward pass. When all chunks together would hold
more than :data:`RECOMPUTE_ELEMENTS` floats, each chunk is checkpointed instead
(``torch.utils.checkpoint``): its bias and attention are recomputed in the backward pass, so long
sequences train in memory linear in ``T``.

The attention happens in float32 whatever the activations' dtype, so the bias (distances up to
``T``) is never rounded to 8 bits; the output comes back in the activations' dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ropelab.pe.base import PositionEncoding

#: Floats in one chunk's bias (``batch x heads x chunk x keys``): 32 MB. Sets the chunk length.
CHUNK_ELEMENTS = 2**23
#: Bias floats of the whole causal attention (all chunks) above which training recomputes each
#: chunk in the backward pass instead of keeping its bias and attention weights (1 GB).
RECOMPUTE_ELEMENTS = 2**28

BiasFn = Callable[[Tensor, Tensor], "Tensor | None"]


def has_bias(pe: PositionEncoding) -> bool:
    """Whether ``pe`` provides ``attention_bias`` (overrides the base class's ``None``)."""
    return type(pe).attention_bias is not PositionEncoding.attention_bias


def chunk_length(rows: int, q_len: int, k_len: int, elements: int | None = None) -> int:
    """Queries per chunk so that ``rows x chunk x k_len`` stays within ``elements`` (default
    :data:`CHUNK_ELEMENTS`; at least 1 query, a multiple of 64 when above 64, at most ``q_len``)."""
    elements = CHUNK_ELEMENTS if elements is None else elements
    chunk = max(1, elements // max(1, rows * k_len))
    if chunk > 64:
        chunk -= chunk % 64
    return min(q_len, chunk)


def bias_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: BiasFn,
    q_positions: Tensor,
    k_positions: Tensor,
    *,
    causal: bool,
    allowed: Tensor | None = None,
    gqa: bool = False,
    chunk: int | None = None,
) -> Tensor | None:
    """Attention of ``q [B, H, T, D]`` to ``k, v [B, Hkv, K, D]`` (the queries are the last ``T`` of
    the ``K`` tokens: ``past = K - T``) with the additive bias ``bias(q_pos, k_pos)``.

    ``bias`` takes positions ``[B|1, Tq]`` and ``[B|1, Tk]`` (slices of ``q_positions`` and
    ``k_positions``) and returns the float32 bias ``[B|1, H, Tq, Tk]``, or ``None`` when the
    encoding has none (then this returns ``None`` and the caller attends without a bias).
    ``causal``: query ``i`` sees keys ``0 .. past + i`` only. ``allowed``: a bool mask ``[T, K]``
    or ``[B, 1, T, K]`` of the pairs that may attend (padding), itself causal; with it, ``causal``
    only trims the keys. ``gqa``: ``k, v`` have fewer heads than ``q`` (SDPA's ``enable_gqa``).
    ``chunk``: queries per chunk (default from :data:`CHUNK_ELEMENTS`).
    """
    B, H, T, _ = q.shape
    K = k.shape[2]
    past = K - T
    dtype = q.dtype
    if dtype.is_floating_point and torch.finfo(dtype).bits < 32:  # never round the bias to 8 bits
        q, k, v = q.float(), k.float(), v.float()
    if chunk is None:
        chunk = chunk_length(B * H, T, K)
    extra = {"enable_gqa": True} if gqa else {}
    above = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1) if causal and allowed is None else None

    def attend(start: int, q_part: Tensor, k_part: Tensor, v_part: Tensor) -> Tensor | None:
        end = start + q_part.shape[2]
        keys = k_part.shape[2]
        scores = bias(q_positions[:, start:end], k_positions[:, :keys])
        if scores is None:
            return None
        in_place = scores.is_contiguous() and not (torch.is_grad_enabled() and scores.requires_grad)
        if allowed is not None:
            visible = allowed[..., start:end, :keys]
            if in_place and scores.dim() == 4 and scores.shape[0] >= visible.shape[0]:
                scores.masked_fill_(~visible, float("-inf"))
            else:  # (also a bias shared by the rows of a padded batch: one per row now)
                scores = scores.masked_fill(~visible, float("-inf"))
        elif above is not None:  # only the diagonal block holds future keys
            n = end - start
            diagonal = scores[..., past + start : past + end]
            if in_place:
                diagonal.masked_fill_(above[:n, :n], float("-inf"))
            else:
                scores = torch.cat(
                    (scores[..., : past + start], diagonal.masked_fill(above[:n, :n], float("-inf"))), -1
                )
        return F.scaled_dot_product_attention(q_part, k_part, v_part, attn_mask=scores.to(q_part.dtype), **extra)

    recompute = torch.is_grad_enabled() and B * H * T * (past + (T + 1) / 2) > RECOMPUTE_ELEMENTS
    outputs = []
    for start in range(0, T, chunk):
        end = min(T, start + chunk)
        keys = past + end if causal else K
        parts = (q[:, :, start:end], k[:, :, :keys], v[:, :, :keys])
        if recompute:
            out = checkpoint(attend, start, *parts, use_reentrant=False)
        else:
            out = attend(start, *parts)
        if out is None:
            return None
        outputs.append(out)
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.to(dtype)
