"""YaRN -- Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language Models"
(arXiv 2309.00071), Section 3.4, Eq. (17)-(22) ("NTK-by-parts" interpolation + attention scaling).

For frequency ``j`` with wavelength ``lambda_j = 2*pi/theta_j``, the ratio ``r = L/lambda_j``
decides: ``r > beta_fast`` -> keep the angle (extrapolate), ``r < beta_slow`` -> divide by
``factor`` (interpolate), linear ramp in between. The ramp boundaries are the frequency indices
``d*ln(L/(2*pi*beta))/(2*ln(base))`` (floored/ceiled when ``truncate``), as in the YaRN reference
code and Hugging Face's ``_compute_yarn_parameters``; every number here equals transformers'
``yarn`` rope type, including the attention factor:

    attention_factor = 0.1*ln(factor) + 1                       (Eq. 22, sqrt(1/t))
    attention_factor = mscale(factor, mscale)/mscale(factor, mscale_all_dim)   (DeepSeek variant)

It multiplies cos and sin, so the logits scale by its square. ``L`` is the checkpoint's training
length (``original_max_position_embeddings``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ropelab.core.errors import SpecError
from ropelab.pe.base import FrequencyPlan, MethodInfo, Param, PEContext
from ropelab.pe.scaling import FACTOR

YARN_PAPER = "Peng et al. 2023, YaRN: Efficient Context Window Extension of Large Language Models (arXiv 2309.00071)"


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(
    factor: float,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
) -> float:
    if attention_factor is not None:
        return attention_factor
    if mscale and mscale_all_dim:
        return float(yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim))
    return yarn_mscale(factor)


def correction_range(
    beta_fast: float, beta_slow: float, head_dim: int, base: float, train_len: int, truncate: bool
) -> tuple[float, float]:
    """Frequency indices where the ramp starts and ends (YaRN Eq. 18-19)."""

    def index(rotations: float) -> float:
        return (head_dim * math.log(train_len / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = index(beta_fast), index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, head_dim - 1)


def extrapolation_weight(low: float, high: float, n: int) -> torch.Tensor:
    """1 where a frequency keeps its angle, 0 where it is fully interpolated (float32 ``[n]``)."""
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(n, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    return 1 - ramp


def yarn(
    factor: float,
    beta_fast: float,
    beta_slow: float,
    attention_factor: float | None,
    mscale: float | None,
    mscale_all_dim: float | None,
    truncate: bool,
):
    if beta_slow > beta_fast:  # the ramp would run backwards: low frequencies kept, high ones divided
        raise SpecError(
            f"yarn: beta_slow={beta_slow:g} is above beta_fast={beta_fast:g}; beta_fast is the larger ratio "
            "(angles kept), beta_slow the smaller (angles divided by factor)"
        )

    def transform(plan: FrequencyPlan, ctx: PEContext, seq_len: int | None) -> FrequencyPlan:
        low, high = correction_range(beta_fast, beta_slow, ctx.head_dim, plan.base, ctx.train_len, truncate)
        keep = extrapolation_weight(low, high, plan.num_frequencies)
        interpolated = plan.theta / factor
        theta = interpolated * (1 - keep) + plan.theta * keep
        scale = yarn_attention_factor(factor, attention_factor, mscale, mscale_all_dim)
        return replace(plan, theta=theta, attention_factor=plan.attention_factor * scale)

    return transform, False


METHODS = [
    MethodInfo(
        name="yarn",
        family="scaling",
        kind="transform",
        description="YaRN: NTK-by-parts ramp between interpolation and extrapolation, plus attention factor.",
        paper=YARN_PAPER,
        params=(
            FACTOR,
            Param(
                "beta_fast",
                float,
                32.0,
                "ratio L/wavelength above which angles are kept",
                minimum=0.0,
                exclusive_minimum=True,
            ),
            Param(
                "beta_slow",
                float,
                1.0,
                "ratio L/wavelength below which angles are divided by factor",
                minimum=0.0,
                exclusive_minimum=True,
            ),
            Param(
                "attention_factor",
                float,
                None,
                "override the attention factor (default: 0.1 ln(factor) + 1)",
                minimum=0.0,
                exclusive_minimum=True,
            ),
            Param("mscale", float, None, "DeepSeek-style mscale numerator", minimum=0.0),
            Param("mscale_all_dim", float, None, "DeepSeek-style mscale denominator", minimum=0.0),
            Param("truncate", bool, True, "floor/ceil the ramp boundaries to whole frequency indices"),
        ),
        factory=yarn,
    ),
]
