"""RoPE -- Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding".

Eq. (14)-(15) of RoFormer: frequency ``j`` rotates the channel pair of that frequency by
``position * theta_j`` with ``theta_j = base^(-2j/d)``; q.k after rotation depends only on the
relative position (tested as a property).

Every RoPE-family method in ropelab is a :class:`FrequencyPlan` (one angle per frequency, an
attention factor, and which position level each frequency reads) built by a *base* method
(``rope``, ``hope``, ...) and then rescaled by any number of *transforms* (``pi``, ``ntk``,
``yarn``, ...). :class:`RotaryEncoding` turns a plan into cos/sin tables. The same object serves
training from scratch, inference-time extension, ``ropelab describe`` and the Hugging Face patch,
so each formula lives in exactly one place.

Choices: angles are ``position(float32) * theta(float32)``, exactly as Hugging Face computes them,
so logits match ``transformers`` to float32 rounding. A frequency with ``theta == 0`` is
position-independent (cos 1, sin 0): that is how HoPE drops components.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from ropelab.core.errors import RopelabError
from ropelab.pe.base import FrequencyPlan, MethodInfo, Param, PEContext, PositionEncoding, Rotation

ROPE_PAPER = "Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding (arXiv 2104.09864)"

BASE_PARAM = Param(
    "base", float, None, "rotary base; default: the model's rope base", minimum=1.0, exclusive_minimum=True
)


def rope_theta(head_dim: int, base: float) -> Tensor:
    """``theta_j = base^(-2j/d)`` in float32, computed exactly as Hugging Face does."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (base**exponent)


def frequency_exponent(head_dim: int) -> Tensor:
    """``2j/d`` for every frequency, in float64 (used by transforms that change the base)."""
    return torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim


def rope_plan(ctx: PEContext, base: float | None = None) -> FrequencyPlan:
    base = float(base or ctx.rope_base)
    return FrequencyPlan(theta=rope_theta(ctx.head_dim, base), base=base)


def check_positions_dtype(positions: Tensor) -> None:
    if positions.is_floating_point() and positions.dtype in (torch.float16, torch.bfloat16):
        raise RopelabError("positions must be integers or float32/float64, never fp16/bf16")


def rotation_tables(
    theta: Tensor,
    positions: Tensor,
    frequency_level: Tensor | None = None,
    attention_factor: float | Tensor = 1.0,
    name: str = "rotary",
    levels_read: int | None = None,
) -> Rotation:
    """cos/sin ``[B|1, T, d/2]`` (float32) for ``positions`` ``[B|1, T]`` or ``[B|1, T, levels]``.

    ``theta`` is ``[d/2]``, or ``[B, d/2]`` for one set of angles per row (dynamic NTK).
    With a position vector per token, frequency j reads level ``frequency_level[j]``.
    ``attention_factor`` (a float, or a ``[B|1, T]`` tensor of per-token factors) scales both.
    ``levels_read``: ``frequency_level.max() + 1`` when the caller knows it (no host read).
    """
    check_positions_dtype(positions)
    pos = positions.to(torch.float32)
    if pos.dim() == 3:
        levels = pos.shape[-1]
        level = (
            frequency_level.to(pos.device)
            if frequency_level is not None
            else torch.zeros(theta.numel(), dtype=torch.long, device=pos.device)
        )
        needed = levels_read if levels_read is not None else int(level.max()) + 1
        if needed > levels:
            raise RopelabError(f"{name}: frequencies read {needed} position levels, but positions have {levels}")
        pos = pos[..., level]
    else:
        pos = pos[..., None]
    theta = theta.to(device=pos.device, dtype=torch.float32)
    angles = pos * (theta[:, None, :] if theta.dim() == 2 else theta)
    cos, sin = angles.cos(), angles.sin()
    if isinstance(attention_factor, Tensor):
        factor = attention_factor.to(torch.float32)[..., None]
        cos, sin = cos * factor, sin * factor
    elif attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return Rotation(cos=cos, sin=sin)


def levels_read(owner) -> int:
    """``owner.frequency_level.max() + 1`` (the position levels its frequencies read), read on the
    host once and again only when the table changes (moved, or written in place): a forward pass
    never waits for it."""
    level = owner.frequency_level
    key = (level.data_ptr(), level._version, level.numel())
    cached = owner.__dict__.get("_levels_read")
    if cached is None or cached[0] != key:
        cached = (key, int(level.max()) + 1 if level.numel() else 1)
        owner.__dict__["_levels_read"] = cached
    return cached[1]


#: A transform rescales a plan; ``seq_len`` is the current input length (only dynamic ones use it).
Transform = Callable[[FrequencyPlan, PEContext, int | None], FrequencyPlan]


class RotaryEncoding(PositionEncoding):
    """A RoPE-family encoding: a base plan followed by transforms, turned into rotation tables."""

    def __init__(
        self,
        ctx: PEContext,
        spec: str,
        base_plan: FrequencyPlan,
        transforms: list[tuple[Transform, bool]] | None = None,
    ) -> None:
        super().__init__(ctx, spec)
        self.base_plan = base_plan
        self.transforms = list(transforms or [])
        self.rotation_depends_on_length = any(dynamic for _, dynamic in self.transforms)
        static = self.plan(ctx.train_len)
        # Non-persistent: the angles are a function of the spec and config, never stored weights.
        self.register_buffer("inv_freq", static.theta.clone(), persistent=False)
        self.attention_factor = static.attention_factor
        level = base_plan.frequency_level
        self.register_buffer(
            "frequency_level",
            level.clone() if level is not None else torch.zeros(base_plan.num_frequencies, dtype=torch.long),
            persistent=False,
        )

    def _apply(self, fn, recurse=True):
        # ``model.to(torch.bfloat16)`` would round the angle table: rebuild it in float32
        result = super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:
            self.inv_freq = self.plan(self.ctx.train_len).theta.to(self.inv_freq.device)
        return result

    def plan(self, seq_len: int | None = None) -> FrequencyPlan:
        """The frequency plan in force for an input of ``seq_len`` tokens (float32 angles)."""
        plan = self.base_plan
        for transform, _ in self.transforms:
            plan = transform(plan, self.ctx, seq_len)
        return replace(plan, theta=plan.theta.to(torch.float32))

    def rotation(self, positions: Tensor, length: int | None = None) -> Rotation:
        """cos/sin tables for ``positions`` ``[B|1, T]`` or ``[B|1, T, levels]``.

        A length-dependent plan (dynamic NTK) is chosen per row, for that row's length
        ``max(position) + 1``: a row of a padded batch (padding at position 0) gets the angles it
        gets alone. ``length``: that length when the caller knows it for every row (the default
        positions ``0 .. length - 1``), so the positions are not read on the host.
        """
        check_positions_dtype(positions)
        theta, factor = self.inv_freq, self.attention_factor
        if self.rotation_depends_on_length:
            if length is not None:
                lengths = [length] * positions.shape[0]
            else:  # dynamic NTK's angles are a function of each row's length: read it
                lengths = [int(top) + 1 for top in positions.reshape(positions.shape[0], -1).amax(dim=1).tolist()]
            plans = {n: self.plan(n) for n in set(lengths)}
            if len(plans) == 1:
                plan = plans[lengths[0]]
                theta, factor = plan.theta.to(positions.device), plan.attention_factor
            else:
                theta = torch.stack([plans[n].theta for n in lengths]).to(positions.device)
                factors = [plans[n].attention_factor for n in lengths]
                factor = torch.tensor(factors, dtype=torch.float32, device=positions.device)[:, None]
        return rotation_tables(theta, positions, self.frequency_level, factor, self.spec, levels_read(self))


def _rope(ctx: PEContext, base: float | None) -> FrequencyPlan:
    return rope_plan(ctx, base)


METHODS = [
    MethodInfo(
        name="rope",
        family="rope",
        kind="rotary",
        description="Rotary position embedding: every frequency base^(-2j/d) rotates its channel pair.",
        paper=ROPE_PAPER,
        params=(BASE_PARAM,),
        factory=_rope,
    ),
]
