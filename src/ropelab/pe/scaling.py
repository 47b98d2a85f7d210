"""Inference-time rescaling of RoPE frequencies for a pretrained model.

* ``pi`` -- Position Interpolation, Chen et al. 2023 (arXiv 2306.15595), Eq. (3): positions are
  divided by ``factor``, i.e. every angle is ``theta_j / factor``. Hugging Face rope type
  ``linear``. ``factor=auto`` is PI as users apply it at each length: for an input of ``n``
  tokens the factor is ``max(1, n / L)`` (RoPE unchanged at ``n <= L``), so the positions always
  fit in ``[0, L)``; like ``dynamic-ntk`` its angles depend on the input length (no Hugging Face
  rope type expresses it).
* ``ntk`` -- NTK-aware scaling (bloc97, 2023; Peng et al. 2023, YaRN paper Section 3.1):
  the base becomes ``base * factor^(d/(d-2))``, which leaves the highest frequency unchanged and
  interpolates the lowest one by ``factor``. Static: the same angles at every input length.
* ``dynamic-ntk`` -- dynamic NTK (emozilla 2023; YaRN paper Section 3.3), Hugging Face rope type
  ``dynamic``: for an input of ``n > L`` tokens the base becomes
  ``base * (factor*n/L - (factor-1))^(d/(d-2))``; at ``n <= L`` RoPE is unchanged.
  With a KV cache, ropelab re-rotates cached keys when ``n`` grows, so cached decoding equals a
  full recompute (Hugging Face keeps the stale rotation of cached keys).

* ``llama3`` -- Llama 3.1's frequency scaling (Meta 2024, "The Llama 3 Herd of Models", arXiv
  2407.21783; Hugging Face rope type ``llama3``): with ``L`` the original context, frequencies
  whose wavelength is below ``L / high_freq_factor`` are kept, those above ``L / low_freq_factor``
  are divided by ``factor``, and those between are interpolated smoothly:
  ``theta' = (1 - s) theta / factor + s theta`` with ``s = (L / wavelength - low) / (high - low)``.

* ``proportional`` -- partial rotation as Hugging Face's rope type ``proportional`` writes it
  (Gemma-style p-RoPE): the first ``int(fraction * d / 2)`` frequencies (the highest) rotate, the
  rest become position-independent (angle 0), and the rotated ones are divided by ``factor``.
  This is HoPE's shape (low frequencies removed) with the cut set by a fraction instead of ``L``.

* ``longrope`` -- LongRoPE (Ding et al. 2024, "LongRoPE: Extending LLM Context Window Beyond 2
  Million Tokens", arXiv 2402.13753) as Phi-3 uses it (Abdin et al. 2024, arXiv 2404.14219;
  Hugging Face rope type ``longrope``): frequency ``j`` is divided by its own searched factor,
  ``short_factor[j]`` for an input of ``n <= L`` tokens and ``long_factor[j]`` beyond, and cos/sin
  are multiplied by ``attention_factor`` (default ``sqrt(1 + ln(factor) / ln(L))`` when
  ``factor > 1``, else 1) in both regimes. The lists are written ``short_factor=1/1.02/1.5`` (one
  value per frequency, or one for all; default 1: no rescaling), so ``longrope`` alone is plain
  RoPE. The switch at ``L`` makes the angles depend on the input length, like ``dynamic-ntk``.

All six are transforms of a :class:`~ropelab.pe.base.FrequencyPlan`: they compose with any
RoPE-family base (``hope+pi:factor=4``); a position-independent frequency (theta 0) stays 0.
A head of 2 channels (one frequency, the highest) is left unchanged by ``ntk`` and ``dynamic-ntk``.
A base change is applied as the multiplier ``(base/base')^(2j/d)`` computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ropelab.core.errors import SpecError
from ropelab.pe.base import FrequencyPlan, MethodInfo, Param, PEContext
from ropelab.pe.rope import frequency_exponent

FACTOR = Param(
    "factor", float, 2.0, "context extension factor (new length / train length)", minimum=1.0, always_show=True
)


def rebase(plan: FrequencyPlan, head_dim: int, new_base: float) -> FrequencyPlan:
    """Change the rotary base of a plan: ``theta_j *= (base/new_base)^(2j/d)``."""
    multiplier = (plan.base / new_base) ** frequency_exponent(head_dim)
    theta = (plan.theta.to(torch.float64) * multiplier).to(torch.float32)
    return replace(plan, theta=theta, base=new_base)


def _ntk_rebase(plan: FrequencyPlan, head_dim: int, scale: float, method: str, what: str) -> FrequencyPlan:
    """``rebase`` to ``base * scale^(d/(d-2))``. A head of 2 channels has one frequency, the highest,
    which NTK leaves as it is: the plan is returned unchanged (the exponent is undefined there). A
    base that overflows a float is one :class:`~ropelab.core.errors.SpecError`."""
    if head_dim <= 2:
        return plan
    try:
        new_base = plan.base * scale ** (head_dim / (head_dim - 2))
    except OverflowError:
        new_base = math.inf
    if not math.isfinite(new_base):
        raise SpecError(
            f"{method}: {what} takes the rotary base {plan.base:g} beyond a float's range; use a smaller factor"
        )
    return rebase(plan, head_dim, new_base)


PI_FACTOR = replace(
    FACTOR, specials=("auto",), help="context extension factor (new length / train length); auto: max(1, n / L)"
)


def pi(factor: float | str):
    def transform(plan: FrequencyPlan, ctx: PEContext, seq_len: int | None) -> FrequencyPlan:
        scale = max(1.0, (seq_len or ctx.train_len) / ctx.train_len) if factor == "auto" else factor
        return plan if scale == 1.0 else replace(plan, theta=plan.theta / scale)

    return transform, factor == "auto"


def ntk(factor: float):
    def transform(plan: FrequencyPlan, ctx: PEContext, seq_len: int | None) -> FrequencyPlan:
        return _ntk_rebase(plan, ctx.head_dim, factor, "ntk", f"factor={factor:g}")

    return transform, False


def dynamic_ntk(factor: float):
    def transform(plan: FrequencyPlan, ctx: PEContext, seq_len: int | None) -> FrequencyPlan:
        n = max(seq_len or ctx.train_len, ctx.train_len)
        if n <= ctx.train_len:
            return plan
        scale = (factor * n / ctx.train_len) - (factor - 1)
        return _ntk_rebase(plan, ctx.head_dim, scale, "dynamic-ntk", f"factor={factor:g} at length {n}")

    return transform, True


def llama3(factor: float, low_freq_factor: float, high_freq_factor: float):
    if not high_freq_factor > low_freq_factor:
        raise SpecError(
            f"llama3: high_freq_factor ({high_freq_factor:g}) must exceed low_freq_factor ({low_freq_factor:g})"
        )

    def transform(plan: FrequencyPlan, ctx: PEContext, seq_len: int | None) -> FrequencyPlan:
        theta = plan.theta.to(torch.float64)
        wavelength = 2 * math.pi / theta  # inf for a position-independent frequency: divided, stays 0
        original = float(ctx.train_len)
        scaled = torch.where(wavelength > original / low_freq_factor, theta / factor, theta)
        smooth = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelength >= original / high_freq_factor) & (wavelength <= original / low_freq_factor)
        return replace(plan, theta=torch.where(medium, smoothed, scaled).to(torch.float32))

    return transform, False


def proportional(fraction: float, factor: float):
    def transform(plan: FrequencyPlan, ctx: PEContext, seq_len: int | None) -> FrequencyPlan:
        kept = int(fraction * ctx.head_dim // 2)  # transformers' count, float arithmetic included
        theta = plan.theta.clone()
        theta[kept:] = 0.0
        return replace(plan, theta=theta / factor)

    return transform, False


def longrope_attention_factor(factor: float, attention_factor: float | None, train_len: int) -> float:
    """LongRoPE's cos/sin multiplier: ``attention_factor`` when given, else ``sqrt(1 + ln(factor) /
    ln(L))`` for ``factor > 1`` and 1 otherwise (Phi-3; transformers' ``longrope``)."""
    if attention_factor is not None:
        return attention_factor
    if factor <= 1.0 or train_len <= 1:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(train_len))


def longrope(short_factor: tuple[float, ...], long_factor: tuple[float, ...], factor: float, attention_factor):
    def transform(plan: FrequencyPlan, ctx: PEContext, seq_len: int | None) -> FrequencyPlan:
        count = plan.num_frequencies
        for name, values in (("short_factor", short_factor), ("long_factor", long_factor)):
            if len(values) not in (1, count):
                raise SpecError(
                    f"longrope: {name} has {len(values)} values; give one per frequency (head_dim / 2 = {count}) "
                    "or one for all"
                )
        n = seq_len or ctx.train_len
        divisor = torch.tensor(long_factor if n > ctx.train_len else short_factor, dtype=torch.float64)
        theta = (plan.theta.to(torch.float64) / divisor).to(torch.float32)
        scale = longrope_attention_factor(factor, attention_factor, ctx.train_len)
        return replace(plan, theta=theta, attention_factor=plan.attention_factor * scale)

    return transform, True


LONGROPE_FACTORS = "per-frequency divisors of the angles at inputs of {} (one per frequency, or one for all)"

METHODS = [
    MethodInfo(
        name="pi",
        family="scaling",
        kind="transform",
        description="Position Interpolation: divide every RoPE angle by factor (HF rope type 'linear'); "
        "factor=auto: max(1, n / L) for an input of n tokens.",
        paper="Chen et al. 2023, Extending Context Window of Large Language Models via Positional Interpolation (arXiv 2306.15595)",
        params=(PI_FACTOR,),
        factory=pi,
    ),
    MethodInfo(
        name="ntk",
        family="scaling",
        kind="transform",
        description="Static NTK-aware scaling: rotary base * factor^(d/(d-2)).",
        paper="bloc97 2023, NTK-Aware Scaled RoPE; Peng et al. 2023, YaRN (arXiv 2309.00071) Sec. 3.1",
        params=(FACTOR,),
        factory=ntk,
    ),
    MethodInfo(
        name="dynamic-ntk",
        family="scaling",
        kind="transform",
        description="Dynamic NTK: rebase by the current length n > L (HF rope type 'dynamic'); RoPE at n <= L.",
        paper="emozilla 2023, Dynamically Scaled RoPE; Peng et al. 2023, YaRN (arXiv 2309.00071) Sec. 3.3",
        params=(FACTOR,),
        factory=dynamic_ntk,
    ),
    MethodInfo(
        name="llama3",
        family="scaling",
        kind="transform",
        description="Llama 3.1 scaling: keep short wavelengths, divide long ones by factor, interpolate between "
        "(HF rope type 'llama3'; L = the original context).",
        paper="Meta 2024, The Llama 3 Herd of Models (arXiv 2407.21783); HF transformers rope type 'llama3'",
        params=(
            replace(FACTOR, default=8.0),
            Param(
                "low_freq_factor",
                float,
                1.0,
                "wavelengths above L / this are divided by factor",
                minimum=0.0,
                exclusive_minimum=True,
            ),
            Param(
                "high_freq_factor",
                float,
                4.0,
                "wavelengths below L / this are kept",
                minimum=0.0,
                exclusive_minimum=True,
            ),
        ),
        factory=llama3,
    ),
    MethodInfo(
        name="proportional",
        family="scaling",
        kind="transform",
        description="Partial rotation (HF rope type 'proportional', Gemma-style p-RoPE): the highest "
        "int(fraction * d/2) frequencies rotate, divided by factor; the rest are position-independent.",
        paper="HF transformers rope type 'proportional'; Barbero et al. 2024, Round and Round We Go! "
        "What makes Rotary Positional Encodings useful? (arXiv 2410.06205)",
        params=(
            Param(
                "fraction",
                float,
                1.0,
                "share of the head's channels that rotate (partial_rotary_factor)",
                minimum=0.0,
                maximum=1.0,
                always_show=True,
            ),
            replace(FACTOR, default=1.0, always_show=False),
        ),
        factory=proportional,
    ),
    MethodInfo(
        name="longrope",
        family="scaling",
        kind="transform",
        description="LongRoPE: divide frequency j by short_factor[j] up to L tokens, by long_factor[j] beyond, "
        "times an attention factor (HF rope type 'longrope', Phi-3).",
        paper="Ding et al. 2024, LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens (arXiv 2402.13753); "
        "Abdin et al. 2024, Phi-3 Technical Report (arXiv 2404.14219)",
        params=(
            Param(
                "short_factor", tuple, (1.0,), LONGROPE_FACTORS.format("n <= L"), minimum=0.0, exclusive_minimum=True
            ),
            Param("long_factor", tuple, (1.0,), LONGROPE_FACTORS.format("n > L"), minimum=0.0, exclusive_minimum=True),
            replace(
                FACTOR,
                default=1.0,
                always_show=False,
                help="context extension factor (new length / L); sets the default attention factor",
            ),
            Param(
                "attention_factor",
                float,
                None,
                "multiplies cos and sin (default: sqrt(1 + ln(factor) / ln(L)), 1 when factor <= 1)",
                minimum=0.0,
                exclusive_minimum=True,
            ),
        ),
        factory=longrope,
    ),
]
