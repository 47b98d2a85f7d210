"""HoPE -- High-frequency rotary Position Encoding (Chen et al., "HoPE: A Novel Positional
Encoding Without Long-Term Decay for Enhanced Context Awareness and Extrapolation", Section 4.1,
Eq. 6-7) and its ablations AB1-AB3 (Section 5, Table 3).

With training length ``L`` and RoPE angles ``theta_j``:

* **activated** components: ``pi/L < theta_j < 2*pi/L`` -- they complete a half to one full
  period within the training length and form the U-shaped attention pattern (Section 3.3).
* **lower** components: ``theta_j <= pi/L``.
* ``hope``: both sets (Eq. 6: ``theta < 2*pi/L``) become position-independent -- q and k pass
  unrotated there, so the logit is ``q_h^T R(m-n) k_h + q_l^T k_l`` (Eq. 7).
* ``hope-ab1``: only the activated components become position-independent.
* ``hope-ab2``: only the lower components become position-independent.
* ``hope-ab3``: no position-independent part; the channels of both sets are given to high
  frequencies. The paper does not say how; ropelab respaces all d/2 angles geometrically between
  the highest (``theta_0``) and the lowest kept angle, so every channel rotates and none has a
  period longer than ``L`` (documented choice).

``L`` is the checkpoint's training length, never the current input length. Kept counts are listed
in docs/methods.md, "HoPE and its ablations" (e.g. d=64, L=512 -> 16 of 32).
"""

from __future__ import annotations

import math

import torch

from ropelab.pe.base import FrequencyPlan, MethodInfo, PEContext
from ropelab.pe.rope import BASE_PARAM, rope_plan

HOPE_PAPER = (
    "Chen et al. 2024, HoPE: A Novel Positional Encoding Without Long-Term Decay for Enhanced "
    "Context Awareness and Extrapolation (arXiv 2410.21216)"
)

VARIANTS = ("hope", "ab1", "ab2", "ab3")


def frequency_bands(theta: torch.Tensor, train_len: int) -> dict[str, torch.Tensor]:
    """Boolean masks over frequencies: ``high`` (kept), ``activated`` and ``lower`` (Eq. 6)."""
    high = theta >= 2 * math.pi / train_len
    lower = theta <= math.pi / train_len
    return {"high": high, "activated": ~high & ~lower, "lower": lower}


def hope_plan(ctx: PEContext, base: float | None, variant: str = "hope") -> FrequencyPlan:
    """The frequency plan of HoPE or one of its ablations (one function, four variants)."""
    plan = rope_plan(ctx, base)
    bands = frequency_bands(plan.theta, ctx.train_len)
    if variant == "ab3":
        kept = plan.theta[bands["high"]]
        n = plan.num_frequencies
        lowest = float(kept.min()) if kept.numel() else float(plan.theta[0])
        # geometric respacing over [lowest kept angle, theta_0 = 1]: d/2 angles, all high-frequency
        fraction = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
        theta = (lowest**fraction).to(torch.float32)
        return FrequencyPlan(theta=theta, base=plan.base)
    dropped = {
        "hope": ~bands["high"],
        "ab1": bands["activated"],
        "ab2": bands["lower"],
    }[variant]
    return FrequencyPlan(theta=plan.theta.masked_fill(dropped, 0.0), base=plan.base)


def kept_frequencies(head_dim: int, train_len: int, base: float = 10000.0) -> int:
    """How many of the d/2 frequencies HoPE keeps rotating."""
    ctx = PEContext(head_dim=head_dim, n_heads=1, train_len=train_len, rope_base=base)
    return int((hope_plan(ctx, None).theta > 0).sum())


def _factory(variant: str):
    def build(ctx: PEContext, base: float | None) -> FrequencyPlan:
        return hope_plan(ctx, base, variant)

    return build


METHODS = [
    MethodInfo(
        name="hope",
        family="rope",
        kind="rotary",
        description="HoPE: keep only frequencies with period <= train length; the rest are position-independent.",
        paper=HOPE_PAPER,
        params=(BASE_PARAM,),
        factory=_factory("hope"),
    ),
    MethodInfo(
        name="hope-ab1",
        family="rope",
        kind="rotary",
        description="HoPE ablation AB1: only the activated band pi/L < theta < 2pi/L becomes position-independent.",
        paper=HOPE_PAPER + ", Table 3",
        params=(BASE_PARAM,),
        factory=_factory("ab1"),
    ),
    MethodInfo(
        name="hope-ab2",
        family="rope",
        kind="rotary",
        description="HoPE ablation AB2: only the lower band theta <= pi/L becomes position-independent.",
        paper=HOPE_PAPER + ", Table 3",
        params=(BASE_PARAM,),
        factory=_factory("ab2"),
    ),
    MethodInfo(
        name="hope-ab3",
        family="rope",
        kind="rotary",
        description="HoPE ablation AB3: drop both low bands and respace all channels over the kept high frequencies.",
        paper=HOPE_PAPER + ", Table 3",
        params=(BASE_PARAM,),
        factory=_factory("ab3"),
    ),
]
