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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

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
    groups = H // k_near.shape[1]
    if groups > 1:  # grouped-query attention: give every query head its key/value head
        k_near, k_far, value = (t.repeat_interleave(groups, dim=1) for t in (k_near, k_far, value))
    chunk_size = chunk_size or CHUNK
    scale = 1.0 / math.sqrt(d)
    device = q_near.device
    out = torch.empty(B, H, Tq, d, dtype=value.dtype, device=device)
    for start in range(0, Tq, chunk_size):
        stop = min(Tq, start + chunk_size)
        first = past + start  # sequence index of the chunk's first query
        n_keys = past + stop
        band = max(0, first - max(window, 1) + 1)  # keys before it are far from every query here

        # the band: both score sets, distance mask, causal mask
        distance = (
            torch.arange(first, past + stop, device=device)[:, None] - torch.arange(band, n_keys, device=device)[None]
        )
        near = torch.matmul(q_near[:, :, start:stop], k_near[:, :, band:n_keys].transpose(-1, -2)).float()
        far = torch.matmul(q_far[:, :, start:stop], k_far[:, :, band:n_keys].transpose(-1, -2)).float()
        scores = torch.where(distance < window, near, far).mul_(scale).masked_fill_(distance < 0, float("-inf"))
        band_max = scores.amax(dim=-1, keepdim=True)
        # in place when nothing is recorded for backward (inference: one less score-sized buffer)
        weights = (scores - band_max).exp() if torch.is_grad_enabled() else scores.sub_(band_max).exp_()
        numerator = torch.matmul(weights.to(value.dtype), value[:, :, band:n_keys]).float()
        denominator = weights.sum(dim=-1, keepdim=True)

        if band > 0:  # everything before the band: far tables, no mask
            far_out, far_lse = _block(q_far[:, :, start:stop], k_far[:, :, :band], value[:, :, :band], scale)
            far_lse = far_lse[..., None]
            top = torch.maximum(far_lse, band_max)
            far_weight, band_weight = (far_lse - top).exp(), (band_max - top).exp()
            numerator = far_out.float() * far_weight + numerator * band_weight
            denominator = far_weight + denominator * band_weight
        out[:, :, start:stop] = (numerator / denominator).to(value.dtype)
    return out
