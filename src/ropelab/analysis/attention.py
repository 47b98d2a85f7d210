"""Pre-softmax attention logits of a ropelab model, layer by layer, and their per-frequency parts.

:func:`capture` runs the model once and, through a forward pre-hook on every attention module,
hands each wanted layer's :class:`LayerTerms` to a callback: the layer's queries (only the
selected ones) and keys, rotated with exactly the tables the model used in that forward (near and
far tables for windowed methods), plus the encoding's additive bias. Nothing in the model changes;
the forward stops after the last wanted layer.

From those terms:

* :meth:`LayerTerms.logits` -- what the softmax sees: ``q.k / sqrt(d)`` (near/far merged by the
  distance mask for windowed methods) plus the bias, ``-inf`` above the diagonal;
* :meth:`LayerTerms.components` -- the HoPE paper's Eq. 4: the logit split into the ``d/2``
  per-frequency terms ``C_j = (q_j . k_j) / sqrt(d)``, where ``q_j``/``k_j`` are the rotated
  channel pair of frequency ``j`` (channels ``j, j + d/2`` in the rotate-half layout, ``2j, 2j+1``
  interleaved). For rotated pairs ``C_j = [(q0 k0 + q1 k1) cos((m-n) theta_j) + (q0 k1 - q1 k0)
  sin((m-n) theta_j)] / sqrt(d)`` with the unrotated pair; position-independent ones (HoPE's
  dropped frequencies) are ``(q0 k0 + q1 k1) / sqrt(d)``. ``sum_j C_j + bias == logits``.

Everything is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ropelab.core.errors import RopelabError
from ropelab.pe.base import apply_rotary


@dataclass
class LayerTerms:
    """One layer's rotated queries/keys for the selected queries (float32, all query heads).

    ``q`` ``[B, H, Tq, d]``, ``k`` ``[B, H, Tk, d]`` (grouped key heads repeated to ``H``);
    ``q_index`` ``[Tq]``: each query's sequence index (keys are ``0 .. Tk-1``). Windowed methods
    also carry ``q_far``/``k_far`` and ``window``: a pair at distance ``m - n < window`` scores
    with ``q``/``k`` (near), every other pair with the far ones. ``bias``: the encoding's additive
    ``[B|1, H, Tq, Tk]`` bias or None.
    """

    layer: int
    q: Tensor
    k: Tensor
    q_index: Tensor
    layout: str
    bias: Tensor | None = None
    q_far: Tensor | None = None
    k_far: Tensor | None = None
    window: int | None = None

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.q.shape[-1])

    def distance(self) -> Tensor:
        """``m - n`` for every (query, key) pair, ``[Tq, Tk]``."""
        keys = torch.arange(self.k.shape[2], device=self.q.device)
        return self.q_index.to(self.q.device)[:, None] - keys[None]

    def logits(self) -> Tensor:
        """Pre-softmax logits ``[B, H, Tq, Tk]`` as the model's softmax sees them (masked: -inf)."""
        scores = torch.matmul(self.q, self.k.transpose(-1, -2))
        distance = self.distance()
        if self.q_far is not None:
            far = torch.matmul(self.q_far, self.k_far.transpose(-1, -2))
            scores = torch.where(distance < self.window, scores, far)
        scores = scores * self.scale
        if self.bias is not None:
            scores = scores + self.bias.to(torch.float32)
        return scores.masked_fill(distance < 0, float("-inf"))

    def components(self) -> Tensor:
        """Eq. 4: per-frequency logit terms ``[B, H, Tq, Tk, d/2]`` (the bias is not included).

        Entries above the diagonal (``m < n``) are not masked; only causal pairs are meaningful.
        """
        parts = pair_products(self.q, self.k, self.layout)
        if self.q_far is not None:
            far = pair_products(self.q_far, self.k_far, self.layout)
            parts = torch.where((self.distance() < self.window)[..., None], parts, far)
        return parts * self.scale


def pair_products(q: Tensor, k: Tensor, layout: str = "half") -> Tensor:
    """``P[..., m, n, j] = q[m] . k[n]`` restricted to the channel pair of frequency ``j``.

    ``q`` ``[B, H, Tq, d]``, ``k`` ``[B, H, Tk, d]`` -> ``[B, H, Tq, Tk, d/2]``; summing the last
    axis gives ``q @ k^T``.
    """
    if layout == "half":
        half = q.shape[-1] // 2
        return torch.einsum("bhqj,bhkj->bhqkj", q[..., :half], k[..., :half]) + torch.einsum(
            "bhqj,bhkj->bhqkj", q[..., half:], k[..., half:]
        )
    if layout == "interleaved":
        return torch.einsum("bhqjc,bhkjc->bhqkj", q.unflatten(-1, (-1, 2)), k.unflatten(-1, (-1, 2)))
    raise RopelabError(f"unknown rotary layout {layout!r}; allowed: half, interleaved")


class _StopForward(Exception):
    """Raised by the hook after the last wanted layer: the rest of the forward is not needed."""


def _expand(t: Tensor, groups: int) -> Tensor:
    return t.repeat_interleave(groups, dim=1) if groups > 1 else t


def layer_terms(attention, x: Tensor, layer: int, pe, inputs, query_index: Tensor) -> LayerTerms:
    """Rebuild one attention layer's rotated q/k (selected queries) from its input ``x``."""
    B, T, _ = x.shape
    H, Hkv, d = attention.n_heads, attention.n_kv_heads, attention.head_dim
    q = attention.q_proj(x[:, query_index]).view(B, -1, H, d).transpose(1, 2).float()
    k = attention.k_proj(x).view(B, T, Hkv, d).transpose(1, 2).float()
    layout, groups = attention.layout, H // Hkv
    q_far = k_far = window = None
    if inputs.windowed is not None:
        q, q_far, k, k_far = inputs.windowed.apply(q, k, layout, query_rows=query_index)
        k_far = _expand(k_far, groups)
        window = pe.window
    elif inputs.q_rotation is not None:
        q = apply_rotary(q, inputs.q_rotation.rows(query_index), layout)
        k = apply_rotary(k, inputs.k_rotation, layout)
    bias = pe.attention_bias(layer, inputs.q_positions[:, query_index], inputs.k_positions)
    return LayerTerms(
        layer=layer,
        q=q,
        k=_expand(k, groups),
        q_index=query_index,
        layout=layout,
        bias=None if bias is None else bias.float(),
        q_far=q_far,
        k_far=k_far,
        window=window,
    )


@torch.no_grad()
def capture(
    model,
    input_ids: Tensor,
    on_layer: Callable[[LayerTerms], None],
    positions: Tensor | None = None,
    layers: list[int] | None = None,
    queries: str | Tensor = "all",
) -> None:
    """Run ``model`` on ``input_ids`` and call ``on_layer(terms)`` for every layer in ``layers``.

    ``queries``: ``"all"``, ``"last"`` (the last position only: the HoPE paper's probe) or a
    tensor of sequence indices. ``positions`` are passed to the model as they are (HiRoPE's
    hierarchical positions, for example). The forward stops after the last wanted layer.
    """
    n_layers = len(model.layers)
    wanted = sorted(set(range(n_layers) if layers is None else layers))
    if not wanted or wanted[0] < 0 or wanted[-1] >= n_layers:
        raise RopelabError(f"layers must be in 0..{n_layers - 1}, got {layers}")
    T = input_ids.shape[1]
    if isinstance(queries, Tensor):
        query_index = queries.to(torch.long)
    elif queries == "all":
        query_index = torch.arange(T)
    elif queries == "last":
        query_index = torch.tensor([T - 1])
    else:
        raise RopelabError(f"queries must be 'all', 'last' or a tensor of indices, got {queries!r}")
    query_index = query_index.to(input_ids.device)

    def hook(module, args):
        x, layer, pe, inputs, cache = args
        if cache is not None and cache.length:
            raise RopelabError("attention capture needs a full forward (no KV cache)")
        if layer in wanted:
            on_layer(layer_terms(module, x, layer, pe, inputs, query_index))
            if layer == wanted[-1]:
                raise _StopForward

    handles = [block.self_attn.register_forward_pre_hook(hook) for block in model.layers]
    try:
        model.hidden_states(input_ids, positions)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
