"""Attention for windowed methods (ReRoPE, Self-Extend, HiRoPE): two score sets merged by distance.

For query ``m`` and key ``n <= m`` (sequence indices) the logit is ``q_near[m] . k_near[n]`` when
``m - n < window`` and ``q_far[m] . k_far[n]`` otherwise.

Queries are processed in chunks ``[s, e)``. Keys before ``s - window + 1`` are far from every
query of the chunk and fully visible: that block is plain unmasked attention with the far
tables, done by a fused kernel that also returns its log-sum-exp (PyTorch's CPU flash kernel;
elsewhere a plain computation). The remaining *band* of keys ``[s - window + 1, e)`` (width
``chunk + window``) gets both score sets, merged by the distance mask and the causal mask. The two
blocks are combined exactly through their log-sum-exps. Memory is ``O(chunk x (chunk + window))``
per head beyond the kernel's own tiles: a 16K-token prefill never materialises ``T x T`` scores.
Softmax statistics are float32.

Two optional restrictions on which keys a query sees:

* ``key_mask`` (bool ``[B, Tk]``, True = a real token): padding keys are masked in both blocks. The
  fused kernel takes no mask: when the far block holds a padding key it runs row by row over each
  row's run of real keys (left or right padding), or, for any other mask, as a masked plain
  computation (``chunk x keys`` scores per head). Without padding the fused path is unchanged. A
  query that sees no key at all (a left-padding query) gets a zero output, never NaN.
* ``far_keys``: beyond the window only the first ``far_keys`` keys stay visible ("attention sinks",
  Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks", arXiv 2309.17453);
  ``far_keys=0`` is plain sliding-window attention. With a ``key_mask`` these are the first
  ``far_keys`` *real* keys of each row, so a padded row sees the sinks it would see alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ropelab.core.errors import RopelabError

#: Queries per chunk; the band costs ``chunk x (chunk + window)`` scores per head.
CHUNK = 256

_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _block(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Unmasked attention of ``q`` [B, H, C, d] over ``k``/``v`` [B, H, N, d]: (output, logsumexp)."""
    # the fused kernel's log-sum-exp carries no gradient: use it only when nothing needs one
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if (
        _FLASH_CPU is not None
        and not needs_grad
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.bfloat16)
    ):
        out, lse = _FLASH_CPU(q, k, v, 0.0, False, scale=scale)
        return out, lse.float()
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul((scores - lse[..., None]).exp().to(v.dtype), v), lse


def _masked_block(q: Tensor, k: Tensor, v: Tensor, scale: float, visible: Tensor) -> tuple[Tensor, Tensor]:
    """Attention of ``q`` over the keys where ``visible`` ([B, N] bool) is True: (output, logsumexp).

    A row with no visible key gets output 0 and log-sum-exp ``-inf`` (it then adds nothing when
    merged), with finite gradients."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    top = scores.amax(dim=-1, keepdim=True)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = (scores - shift).exp()
    total = weights.sum(dim=-1, keepdim=True)
    seen = total > 0
    total = torch.where(seen, total, 1.0)  # a row that sees nothing: weights 0, output 0
    out = torch.matmul((weights / total).to(v.dtype), v)
    lse = torch.where(seen, total.log() + shift, float("-inf"))
    return out, lse[..., 0]


def _runs(visible: Tensor) -> list[tuple[int, int]] | None:
    """Per row of ``visible [B, N]``: ``(first, stop)`` of its one run of True entries (``(0, 0)``
    for none), or ``None`` when some row has more than one run."""
    flags = visible.long()
    starts = flags[:, :1] + (flags[:, 1:] > flags[:, :-1]).long().sum(dim=1, keepdim=True)
    if bool((starts > 1).any()):
        return None
    index = torch.arange(visible.shape[1], device=visible.device)
    first = torch.where(visible, index, visible.shape[1]).amin(dim=1)
    stop = torch.where(visible, index + 1, 0).amax(dim=1)
    return [(int(a), int(b)) if b > a else (0, 0) for a, b in zip(first.tolist(), stop.tolist())]


def _far_block(
    q: Tensor, k: Tensor, v: Tensor, scale: float, visible: Tensor | None, runs: list[tuple[int, int]] | None
) -> tuple[Tensor, Tensor]:
    """The far block over keys ``[0, N)`` where ``visible`` ([B|1, N]) allows: the fused kernel when
    every key is visible, or row by row over each row's one run of visible keys (left/right
    padding, sinks), else the masked plain computation."""
    if visible is None or bool(visible.all()):
        return _block(q, k, v, scale)
    if runs is None or visible.shape[0] != q.shape[0]:
        return _masked_block(q, k, v, scale, visible)
    N = k.shape[2]
    outs, lses = [], []
    for row, (first, stop) in enumerate(runs):
        stop = min(stop, N)
        if stop > first:
            out, lse = _block(q[row : row + 1], k[row : row + 1, :, first:stop], v[row : row + 1, :, first:stop], scale)
        else:  # this row sees no far key
            out = torch.zeros_like(q[row : row + 1])
            lse = torch.full(q.shape[1:3], float("-inf"), device=q.device)[None]
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def windowed_attention(
    q_near: Tensor,
    q_far: Tensor,
    k_near: Tensor,
    k_far: Tensor,
    value: Tensor,
    window: int,
    past: int,
    chunk_size: int | None = None,
    key_mask: Tensor | None = None,
    far_keys: int | None = None,
) -> Tensor:
    """Causal attention of queries ``[B, H, Tq, d]`` (sequence indices ``past .. past+Tq-1``) over
    keys/values ``[B, Hkv, Tk, d]`` (indices ``0 .. Tk-1``, ``Tk = past + Tq``).

    ``key_mask``: bool ``[B|1, Tk]``, True where the key is a real token that may be attended
    (padding keys are False). ``far_keys``: when set, a pair at distance ``>= window`` is visible
    only for the first ``far_keys`` keys (counting real keys only when ``key_mask`` is given).
    Queries that see no key get a zero output."""
    B, H, Tq, d = q_near.shape
    Tk = k_near.shape[2]
    groups = H // k_near.shape[1]
    if groups > 1:  # grouped-query attention: give every query head its key/value head
        k_near, k_far, value = (t.repeat_interleave(groups, dim=1) for t in (k_near, k_far, value))
    chunk_size = chunk_size or CHUNK
    scale = 1.0 / math.sqrt(d)
    device = q_near.device

    if key_mask is not None:
        key_mask = torch.as_tensor(key_mask, device=device)
        if key_mask.dim() != 2 or key_mask.shape[0] not in (1, B) or key_mask.shape[1] != Tk:
            raise RopelabError(f"key_mask must be bool [{B} or 1, {Tk}] (True = real key), got {tuple(key_mask.shape)}")
        key_mask = key_mask.to(torch.bool)
        if bool(key_mask.all()):
            key_mask = None  # nothing masked: the unmasked (fused) path
    if far_keys is not None and (isinstance(far_keys, bool) or not isinstance(far_keys, int) or far_keys < 0):
        raise RopelabError(f"far_keys must be a non-negative integer or None, got {far_keys!r}")

    # keys visible beyond the window ([B|1, Tk] bool, None = all), and the first column past the last one
    sinks: Tensor | None = None
    far_limit = Tk
    if far_keys is not None:
        if key_mask is None:
            sinks = torch.arange(Tk, device=device)[None] < far_keys
            far_limit = min(far_keys, Tk)
        else:
            sinks = key_mask & (key_mask.long().cumsum(dim=1) <= far_keys)
            columns = sinks.any(dim=0).nonzero()
            far_limit = int(columns.max()) + 1 if columns.numel() else 0
    far_visible = key_mask if sinks is None else (sinks if key_mask is None else sinks & key_mask)
    may_see_nothing = far_visible is not None  # some query may have no visible key at all
    far_runs = None if far_visible is None else _runs(far_visible)

    out = torch.empty(B, H, Tq, d, dtype=value.dtype, device=device)
    for start in range(0, Tq, chunk_size):
        stop = min(Tq, start + chunk_size)
        first = past + start  # sequence index of the chunk's first query
        n_keys = past + stop
        band = max(0, first - max(window, 1) + 1)  # keys before it are far from every query here

        # the band: both score sets, distance mask, causal mask (and padding / sink masks)
        distance = (
            torch.arange(first, past + stop, device=device)[:, None] - torch.arange(band, n_keys, device=device)[None]
        )
        near = torch.matmul(q_near[:, :, start:stop], k_near[:, :, band:n_keys].transpose(-1, -2)).float()
        if band < far_limit:
            far = torch.matmul(q_far[:, :, start:stop], k_far[:, :, band:n_keys].transpose(-1, -2)).float()
        else:  # no key of the band is visible beyond the window (sinks lie before it): far pairs are masked
            far = near
        hidden = distance < 0
        if sinks is not None:
            hidden = hidden | ((distance >= window) & ~sinks[:, None, None, band:n_keys])
        if key_mask is not None:
            hidden = hidden | ~key_mask[:, None, None, band:n_keys]
        scores = torch.where(distance < window, near, far).mul_(scale).masked_fill_(hidden, float("-inf"))
        band_max = scores.amax(dim=-1, keepdim=True)  # -inf for a query that sees no key of the band
        shift = torch.where(torch.isfinite(band_max), band_max, 0.0) if may_see_nothing else band_max
        # in place when nothing is recorded for backward (inference: one less score-sized buffer)
        weights = (scores - shift).exp() if torch.is_grad_enabled() else scores.sub_(shift).exp_()
        numerator = torch.matmul(weights.to(value.dtype), value[:, :, band:n_keys]).float()
        denominator = weights.sum(dim=-1, keepdim=True)

        far_end = min(band, far_limit)
        if far_end > 0:  # everything before the band: far tables only
            q, k, v = q_far[:, :, start:stop], k_far[:, :, :far_end], value[:, :, :far_end]
            visible = None if far_visible is None else far_visible[:, :far_end]
            far_out, far_lse = _far_block(q, k, v, scale, visible, far_runs)
            far_lse = far_lse[..., None]
            top = torch.maximum(far_lse, band_max)
            if may_see_nothing:  # a query that sees nothing at all: both are -inf
                top = torch.where(torch.isfinite(top), top, 0.0)
            far_weight, band_weight = (far_lse - top).exp(), (band_max - top).exp()
            numerator = far_out.float() * far_weight + numerator * band_weight
            denominator = far_weight + denominator * band_weight
        if may_see_nothing:  # a query that sees no key: numerator and denominator 0, output 0
            denominator = torch.where(denominator > 0, denominator, 1.0)
        out[:, :, start:stop] = (numerator / denominator).to(value.dtype)
    return out
