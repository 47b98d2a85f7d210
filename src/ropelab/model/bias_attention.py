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

A bias that depends only on the distance ``q - k`` (ALiBi, KERPLE: ``distance_bias``) at
consecutive positions (no explicit positions or padding) is not built per chunk at all: one table
per layer holds the bias of every distance, causal ``-inf`` included, and each chunk reads it
through a strided view (queries reversed, so the distance falls by one along both axes), which
SDPA takes as its mask without copying. The bias then costs nearly nothing; other positions, and
FIRE (its bias depends on the query position too), take the chunk-by-chunk path, on which FIRE's
MLP is evaluated as the piecewise-linear function it is (``ropelab.pe.fire.scalar_mlp``).

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

#: Floats in one chunk's bias (``batch x heads x chunk x keys``): 8 MB, which sets the chunk length
#: (64 queries at 4K tokens with 8 heads). Small enough that the allocator reuses the memory of the
#: previous chunk (blocks of 32 MB and more are fresh pages each time: 5x slower to fill).
CHUNK_ELEMENTS = 2**21
#: Queries per chunk that long inputs still get, with up to twice :data:`CHUNK_ELEMENTS` (16 MB):
#: SDPA on fewer queries per call is markedly slower (32 instead of 16 queries at 16K tokens).
MIN_CHUNK = 32
#: Queries per chunk when the bias is read from a distance table (no bias tensor per chunk): SDPA
#: runs efficiently on a few hundred queries, and a chunk computes at most ``chunk / 2`` masked
#: scores per query.
TABLE_CHUNK = 256
#: Bias floats of the whole causal attention (all chunks) above which training recomputes each
#: chunk in the backward pass instead of keeping its bias and attention weights (1 GB).
RECOMPUTE_ELEMENTS = 2**28

BiasFn = Callable[[Tensor, Tensor], "Tensor | None"]
DistanceFn = Callable[[Tensor], "Tensor | None"]
#: Positions below this are exact in float32, so their differences are the integer distances.
_EXACT = 2**24


def has_bias(pe: PositionEncoding) -> bool:
    """Whether ``pe`` provides ``attention_bias`` (overrides the base class's ``None``)."""
    return type(pe).attention_bias is not PositionEncoding.attention_bias


def chunk_length(rows: int, q_len: int, k_len: int, elements: int | None = None) -> int:
    """Queries per chunk so that ``rows x chunk x k_len`` stays within ``elements`` (default
    :data:`CHUNK_ELEMENTS`), or twice that for up to :data:`MIN_CHUNK` queries; at least 1 query, a
    multiple of 64 when above 64, at most ``q_len``."""
    elements = CHUNK_ELEMENTS if elements is None else elements
    per_query = max(1, rows * k_len)
    chunk = max(1, elements // per_query)
    if chunk < MIN_CHUNK:
        chunk = max(chunk, min(MIN_CHUNK, 2 * elements // per_query))
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
    distance_bias: DistanceFn | None = None,
    consecutive: bool = False,
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

    ``distance_bias`` (optional) takes float32 distances ``[n]`` and returns their bias ``[H, n]``,
    or ``None``: for an encoding whose bias depends only on ``q - k``. When the positions are
    consecutive (one row ``p0, p0 + 1, ...``, as without explicit positions or padding) and no
    ``allowed`` mask is given, the bias of every pair is then read from one table per call: the
    table of the distances ``K - 1`` down to ``-(chunk - 1)`` (``-inf`` below 0 when causal), seen
    by each chunk as a strided view with queries in reverse order, so that the distance falls by
    one along both the (reversed) queries and the keys -- no bias tensor is built at all.
    ``consecutive=True`` says the positions are the default ``0, 1, 2, ...`` (the caller knows it
    without reading them: no host sync); otherwise they are checked.
    """
    B, H, T, _ = q.shape
    K = k.shape[2]
    past = K - T
    dtype = q.dtype
    if dtype.is_floating_point and torch.finfo(dtype).bits < 32:  # never round the bias to 8 bits
        q, k, v = q.float(), k.float(), v.float()
    extra = {"enable_gqa": True} if gqa else {}
    table = None
    in_order = (consecutive and K <= _EXACT) or (not consecutive and _consecutive(q_positions, k_positions, past))
    if distance_bias is not None and allowed is None and in_order:
        table_chunk = min(T, TABLE_CHUNK) if chunk is None else chunk
        reach = table_chunk if causal else T  # how far before the first key a query of a chunk may look
        distances = torch.arange(K - 1, -reach, -1, dtype=torch.float32, device=q.device)
        table = distance_bias(distances)
        if table is not None:
            if causal:
                table = table.masked_fill(distances < 0, float("-inf"))
            table = table.to(torch.float32).contiguous()  # [H, K + reach - 1]
    if table is not None:
        chunk = table_chunk
    elif chunk is None:
        chunk = chunk_length(B * H, T, K)
    above = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1) if causal and allowed is None else None

    def attend(start: int, q_part: Tensor, k_part: Tensor, v_part: Tensor) -> Tensor | None:
        end = start + q_part.shape[2]
        keys = k_part.shape[2]
        if table is not None:  # query past + end - 1 - u and key j are T - end + u + j entries into the table
            n = end - start
            view = table.as_strided((1, table.shape[0], n, keys), (0, table.stride(0), 1, 1), T - end)
            out = F.scaled_dot_product_attention(q_part.flip(2), k_part, v_part, attn_mask=view, **extra)
            return out.flip(2)
        scores = bias(q_positions[:, start:end], k_positions[:, :keys])
        if scores is None:
            return None
        # in place unless autograd records the bias or it is an expanded view (a stride 0)
        in_place = not (torch.is_grad_enabled() and scores.requires_grad) and all(
            stride != 0 or size == 1 for stride, size in zip(scores.stride(), scores.shape, strict=True)
        )
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


def _consecutive(q_positions: Tensor, k_positions: Tensor, past: int) -> bool:
    """Whether the keys are at ``p0, p0 + 1, ...`` (one row for the whole batch, exact in float32)
    and the queries are the last of them."""
    if k_positions.dim() != 2 or k_positions.shape[0] != 1 or q_positions.shape[0] != 1:
        return False
    keys = k_positions[0]
    first = keys[:1]
    if first.item() < 0 or first.item() + keys.numel() > _EXACT:
        return False
    expected = first + torch.arange(keys.numel(), device=keys.device, dtype=keys.dtype)
    return torch.equal(keys, expected) and torch.equal(q_positions[0], keys[past:])
