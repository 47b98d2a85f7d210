"""FIRE -- Li et al. 2024, "Functional Interpolation for Relative Positions Improves Long Context
Transformers" (ICLR 2024, arXiv 2310.04418), Section 3, Eq. (4)-(6).

The bias of query ``i`` and key ``j`` is ``f(psi(i - j) / psi(max(i, L_thr)))`` where
``psi(x) = log(c*x + 1)`` with learned ``c`` (init 0.1), ``L_thr = |multiplier * init_L|`` a learned
threshold (init ``init_L`` = 512 as in the paper's code; ``init_L=0`` uses the training length) and
``f`` a small MLP
``1 -> width -> n_heads`` with ReLU (width 32). Dividing by ``psi(max(i, L_thr))`` maps every
distance into [0, 1], which is what lets FIRE generalise to longer inputs ("progressive
interpolation"). Parameterisation follows the paper's appendix code. Each layer has its own FIRE
by default; ``shared=true`` uses one for all layers.

``f`` has one input, so it is piecewise linear with a kink per hidden unit: :func:`scalar_mlp`
evaluates only the units whose kink falls inside the range of the inputs (the others are one slope
and one offset per head), with one small matmul -- the same values and gradients as the MLP,
without a ``[Tq, Tk, width]`` intermediate.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from ropelab.pe.base import MethodInfo, Param, PEContext, PositionEncoding, relative_distance

#: Hidden values per block of query rows in :func:`_scalar_mlp_blocks` (2 MB: they stay in cache).
_BLOCK_ELEMENTS = 2**19

FIRE_PAPER = "Li et al. 2024, Functional Interpolation for Relative Positions Improves Long Context Transformers (arXiv 2310.04418)"


class FireBias(nn.Module):
    """One FIRE function (``f``, ``c`` and the threshold) producing a bias for every head."""

    def __init__(self, n_heads: int, width: int, init_c: float, init_L: float, eps: float = 1e-6) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, n_heads))
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.register_buffer("init_L", torch.tensor(float(init_L)))
        self.L_multiplier = nn.Parameter(torch.tensor(1.0))
        self.eps = eps
        self._terms: dict = {}  # scalar_mlp's sorted units, reused while the weights are unchanged

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        distance = relative_distance(q_pos, k_pos).clamp_(min=0)[:, 0]  # [B|1, Tq, Tk]; future keys are masked anyway
        threshold = (self.L_multiplier.to(torch.float32) * self.init_L.to(torch.float32)).abs()
        normaliser = torch.maximum(q_pos.to(torch.float32), threshold)[:, :, None]
        c = self.c.to(torch.float32)
        denominator = torch.log(torch.abs(c * normaliser) + 1) + self.eps
        if torch.is_grad_enabled() and (c.requires_grad or denominator.requires_grad):
            normalised = torch.log(torch.abs(c * distance) + 1) / denominator
        else:  # the same values, in place (|c * d| = |c| * d exactly, as d >= 0)
            normalised = distance.mul_(c.abs()).add_(1).log_().div_(denominator)
        # the MLP runs in float32 whatever the model's dtype: its input is a function of the positions
        # x = log(|c| d + 1) / (log(|c| max(i, L) + 1) + eps) lies in [0, 1) for d = i - j in [0, i] (positions
        # are non-negative, checked where they enter; future pairs are clamped to 0): the range is known, not read
        return scalar_mlp(normalised, self.mlp[0], self.mlp[2], self._terms, bounds=(0.0, 1.0))  # [B|1, H, Tq, Tk]


def scalar_mlp(
    x: Tensor, first: nn.Linear, last: nn.Linear, cache: dict | None = None, bounds: tuple[float, float] | None = None
) -> Tensor:
    """``last(relu(first(x[..., None])))`` in float32 for ``x [B, Tq, Tk]``, heads first:
    ``[B, H, Tq, Tk]``.

    The input is one number, so a hidden unit ``relu(w x + b)`` is linear in ``x`` (or 0) on either
    side of its kink ``x = -b / w``. The units whose kink lies outside the range of ``x`` in this call
    (FIRE's ``x`` is in [0, 1]) are linear over all of it: together they are one slope and one offset
    per head. Only the others are evaluated, unit by unit, and one batched matmul sums them, the slope
    column and the offset. Same function and same gradients as the plain MLP (a unit exactly at its
    kink counts as inactive, as ReLU's derivative at 0 does), with ``m + 2`` instead of ``width``
    hidden values per pair and no ``[B, Tq, Tk, width]`` intermediate.

    ``cache`` (a dict the caller keeps): without autograd, when ``x`` lies in [0, 1], the units are
    sorted once for that whole range and reused while the weights stay the same (their version).
    ``bounds``: a range known to hold ``x`` (then its values are never read on the host); without
    it the range is measured.
    """
    if bounds is not None:
        lo, hi = bounds
    else:
        lo, hi = (float(v) for v in torch.aminmax(x.detach())) if x.numel() else (0.0, 0.0)
    weights = (first.weight, first.bias, last.weight, last.bias)
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        scale, shift, weight, units = _terms(first, last, lo, hi)
        B, Tq, Tk = x.shape
        hidden = (scale[:, None] * x.reshape(B, 1, Tq * Tk)).add_(shift[:, None])  # [B, m + 2, Tq * Tk]
        hidden[:, :units].relu_()
        return torch.matmul(weight, hidden).view(B, -1, Tq, Tk)
    if cache is not None and 0.0 <= lo and hi <= 1.0:
        state = [(w.data_ptr(), w._version) for w in weights]
        if cache.get("state") != state or any(ref() is not w for ref, w in zip(cache["refs"], weights, strict=True)):
            cache.update(refs=[weakref.ref(w) for w in weights], state=state, terms=_terms(first, last, 0.0, 1.0))
        terms = cache["terms"]
    else:
        terms = _terms(first, last, lo, hi)
    return _scalar_mlp_blocks(x, *terms)


def _terms(first: nn.Linear, last: nn.Linear, lo: float, hi: float) -> tuple[Tensor, Tensor, Tensor, int]:
    """For ``x`` in ``[lo, hi]``: the scales and shifts ``[m + 2]`` of the hidden rows (the ``m`` units
    with a kink in range, then ``x``, then 1), the weights ``[H, m + 2]`` that sum them into the output
    (the units' own, the slope and the offset of the units linear over the range), and ``m``."""
    w1, b1 = first.weight.to(torch.float32)[:, 0], first.bias.to(torch.float32)
    w2, b2 = last.weight.to(torch.float32), last.bias.to(torch.float32)
    with torch.no_grad():
        margin = 1e-4 * (1 + max(abs(lo), abs(hi)))
        kink = -b1 / w1  # +-inf or nan where w1 == 0: never in range
        inside = (w1 != 0) & (kink >= lo - margin) & (kink <= hi + margin)
        active = ~inside & (w1 * (lo + hi) / 2 + b1 > 0)  # the same sign over the whole range
        inside, active = inside.nonzero()[:, 0], active.nonzero()[:, 0]
    slope = w2[:, active] @ w1[active]  # [H]
    offset = b2 + w2[:, active] @ b1[active]
    scale = torch.cat((w1[inside], w1.new_tensor([1.0, 0.0])))
    shift = torch.cat((b1[inside], b1.new_tensor([0.0, 1.0])))
    weight = torch.cat((w2[:, inside], slope[:, None], offset[:, None]), dim=1)
    return scale, shift, weight, inside.numel()


def _scalar_mlp_blocks(x: Tensor, scale: Tensor, shift: Tensor, weight: Tensor, units: int) -> Tensor:
    """:func:`scalar_mlp`'s last steps without autograd, a few query rows at a time: each block's
    hidden values stay in cache and its product is written straight into the result, laid out
    ``[B, Tq, H, Tk]`` (returned as the ``[B, H, Tq, Tk]`` view): a third faster than one pass."""
    B, Tq, Tk = x.shape
    heads, width = weight.shape
    rows = x.reshape(B * Tq, 1, Tk)
    out = x.new_empty(B * Tq, heads, Tk)
    block = max(1, _BLOCK_ELEMENTS // (width * Tk))
    for start in range(0, B * Tq, block):
        hidden = (scale[:, None] * rows[start : start + block]).add_(shift[:, None])  # [block, m + 2, Tk]
        hidden[:, :units].relu_()
        torch.bmm(weight.expand(hidden.shape[0], -1, -1), hidden, out=out[start : start + block])
    return out.view(B, Tq, heads, Tk).transpose(1, 2)


class Fire(PositionEncoding):
    def __init__(self, ctx: PEContext, spec: str, width: int, init_c: float, init_L: float, shared: bool) -> None:
        super().__init__(ctx, spec)
        sets = 1 if shared else ctx.n_layers
        self.shared = shared
        self.functions = nn.ModuleList(FireBias(ctx.n_heads, width, init_c, init_L) for _ in range(sets))

    def attention_bias(self, layer: int, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return self.functions[0 if self.shared else layer](q_pos, k_pos)


def _build(ctx: PEContext, spec: str, width: int, init_c: float, init_L: float, shared: bool) -> Fire:
    return Fire(ctx, spec, width, init_c, init_L or float(ctx.train_len), shared)


METHODS = [
    MethodInfo(
        name="fire",
        family="bias",
        kind="encoding",
        description="FIRE: learned MLP of log-normalised relative distance, per head.",
        paper=FIRE_PAPER,
        params=(
            Param(
                "width", int, 32, "hidden width of the MLP (it runs on every query-key pair)", minimum=1, maximum=1024
            ),
            Param(
                "init_c", float, 0.1, "initial value of the log-transform scale c", minimum=0.0, exclusive_minimum=True
            ),
            Param("init_L", float, 512.0, "initial threshold L; 0 = the training length", minimum=0.0),
            Param("shared", bool, False, "one FIRE for all layers instead of one per layer"),
        ),
        factory=_build,
    )
]
