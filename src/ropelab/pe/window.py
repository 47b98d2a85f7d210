"""Shared machinery of the windowed methods (ReRoPE, Self-Extend, HiRoPE).

A windowed method scores a query/key pair at sequence distance ``m - n < window`` with plain
RoPE (*near*) and every other pair with its own *far* tables; see
:class:`~ropelab.pe.base.WindowedRotation` and ``ropelab.model.window_attention``. This module
holds what they share: plain-RoPE angles in float32 that survive dtype casts, and the "linear"
position of each token (the caller's positions, or the sequence index for hierarchical input).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ropelab.core.errors import SpecError
from ropelab.pe.base import FrequencyPlan, PEContext, PositionEncoding, Rotation
from ropelab.pe.rope import rope_plan, rotation_tables


class WindowedEncoding(PositionEncoding):
    """Base class: holds RoPE's angles as a plain float32 tensor (a dtype cast never rounds them)."""

    def __init__(self, ctx: PEContext, spec: str, window: int) -> None:
        super().__init__(ctx, spec)
        self.window = window
        self.base_plan: FrequencyPlan = rope_plan(ctx)
        self.theta = self.base_plan.theta  # float32 [d/2]; moved to the positions' device on use

    def plan(self, seq_len: int | None = None) -> FrequencyPlan:
        """The far-region frequency plan (for ``ropelab describe``)."""
        return self.base_plan

    def transform_frequencies(self, transforms: list) -> None:
        """Run over transformed RoPE frequencies (a model's own static scaling, e.g. ``llama3``):
        near and far angles both use them. A transform that rescales attention (YaRN) is refused:
        the windowed attention paths apply no attention factor."""
        plan = self.base_plan
        for transform in transforms:
            plan = transform(plan, self.ctx, self.ctx.train_len)
        if plan.attention_factor != 1.0:
            raise SpecError(f"{self.spec}: a windowed method cannot take a transform that scales attention (YaRN)")
        self.base_plan = replace(plan, theta=plan.theta.to(torch.float32))
        self.theta = self.base_plan.theta

    @staticmethod
    def linear_positions(positions: Tensor, index: Tensor) -> Tensor:
        """One index per token: the caller's ``[B, T]`` positions, else the sequence index."""
        return positions if positions.dim() == 2 else index

    def rope(self, positions: Tensor, factor: float | Tensor = 1.0) -> Rotation:
        return rotation_tables(self.theta, positions, attention_factor=factor, name=self.spec)

    @staticmethod
    def identity(like: Rotation) -> Rotation:
        return Rotation(torch.ones_like(like.cos), torch.zeros_like(like.sin))
