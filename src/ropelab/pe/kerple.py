"""KERPLE -- Chi et al. 2022, "KERPLE: Kernelized Relative Positional Embedding for Length
Extrapolation" (NeurIPS 2022, arXiv 2205.09921), Section 4, Eq. (5)-(6).

Conditionally positive definite kernels turned into additive logit biases, per head:

* ``kerple-log``:   ``-r1 * log(1 + r2 * |i - j|)``  (the paper's best variant)
* ``kerple-power``: ``-r1 * |i - j|^r2`` with ``0 < r2 <= 2``

``r1, r2 > 0`` are learned. Parameterisation follows the authors' GPT-NeoX code: each layer has
its own parameters, initialised ``r1 ~ U(0, 2)`` and ``r2 ~ U(0, 1)`` for log (power:
``r1 ~ U(0, 1)``, ``r2 ~ U(0, 2)``), and clamped to ``>= 0.01`` (power exponent also ``<= 2``) in
the forward pass. ``shared=true`` uses one set for all layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ropelab.pe.base import MethodInfo, Param, PEContext, PositionEncoding, relative_distance

EPS = 1e-2
KERPLE_PAPER = (
    "Chi et al. 2022, KERPLE: Kernelized Relative Positional Embedding for Length Extrapolation (arXiv 2205.09921)"
)


class Kerple(PositionEncoding):
    def __init__(self, ctx: PEContext, spec: str, kernel: str, shared: bool) -> None:
        super().__init__(ctx, spec)
        self.kernel = kernel
        self.shared = shared
        sets = 1 if shared else ctx.n_layers
        # r1 is the outer scale, r2 the inner scale (log) or exponent (power)
        r1_scale, r2_scale = (2.0, 1.0) if kernel == "log" else (1.0, 2.0)
        self.r1 = nn.Parameter(torch.rand(sets, ctx.n_heads) * r1_scale)
        self.r2 = nn.Parameter(torch.rand(sets, ctx.n_heads) * r2_scale)

    def attention_bias(self, layer: int, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        r1, r2 = self._scales(layer)
        return self._kernel(relative_distance(q_pos, k_pos).abs_(), r1[None, :, None, None], r2[None, :, None, None])

    def distance_bias(self, layer: int, distance: Tensor) -> Tensor:
        r1, r2 = self._scales(layer)
        return self._kernel(distance.abs()[None], r1[:, None], r2[:, None])  # [H, n]

    def _scales(self, layer: int) -> tuple[Tensor, Tensor]:
        """``r1`` and ``r2`` of ``layer`` ``[H]``, clamped as in the authors' code."""
        index = 0 if self.shared else layer
        r2_max = None if self.kernel == "log" else 2.0
        return self.r1[index].clamp(min=EPS), self.r2[index].clamp(min=EPS, max=r2_max)

    def _kernel(self, distance: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
        """The bias of ``|q - k|`` (``distance``, float32) with ``r1``, ``r2`` broadcast against it."""
        if self.kernel == "log":
            if _needs_grad(r1, r2):
                return -r1 * torch.log1p(r2 * distance)
            return (r2 * distance).log1p_().mul_(-r1)  # the same values, one tensor of the bias's size
        if _needs_grad(r1, r2):
            return -r1 * distance.pow(r2)
        return distance.pow(r2).mul_(-r1)


def _needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records operations on ``tensors`` (else the bias is computed in place)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _factory(kernel: str):
    def build(ctx: PEContext, spec: str, shared: bool) -> Kerple:
        return Kerple(ctx, spec, kernel, shared)

    return build


SHARED = Param("shared", bool, False, "one parameter set for all layers instead of one per layer")

METHODS = [
    MethodInfo(
        name="kerple-log",
        family="bias",
        kind="encoding",
        description="KERPLE log kernel: learned bias -r1*log(1 + r2*|i-j|) per head.",
        paper=KERPLE_PAPER,
        params=(SHARED,),
        factory=_factory("log"),
    ),
    MethodInfo(
        name="kerple-power",
        family="bias",
        kind="encoding",
        description="KERPLE power kernel: learned bias -r1*|i-j|^r2 per head, 0 < r2 <= 2.",
        paper=KERPLE_PAPER,
        params=(SHARED,),
        factory=_factory("power"),
    ),
]
