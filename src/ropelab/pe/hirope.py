"""HiRoPE -- Zhang et al. 2024, "HiRoPE: Length Extrapolation for Code Models Using Hierarchical
Position" (ACL 2024, arXiv 2403.19115), Section 3, Eq. (3)-(5), training-free.

Each token has a position vector ``(tok, seg[, unit])`` from the code's syntax tree
(``ropelab.hierarchy``): ``tok`` is its ordinary token index in the sequence, ``seg`` the ordinal of its
function/class segment, ``unit`` (``levels=3``) the ordinal of the top-level unit. The token
index keeps counting across segment boundaries: the paper's method figure (Fig. 2) labels the
positions ``(function_idx, token_idx)`` as (0,0)..(0,4), (1,5), (1,6), and its token-level
distances are "same as original"; its split ablation (Fig. 4, breaking just above the reliable
split) only makes sense if the token dimensions see ordinary distances. ``token_index=segment``
(the offset inside the segment, a reading of the paper's Fig. 1) is kept as an alternative
reading; it is not the paper's method and not the default.

RoPE's frequencies are split between the levels: the ``J = round(split * d/2)`` highest
frequencies read ``tok`` and the rest the higher levels (for ``levels=3`` the remaining
frequencies are halved: the higher ones read ``seg``, the lowest ``unit`` -- documented choice,
Eq. 5 generalised).

Window (Section 3.2): a pair at sequence distance ``m - n < window`` uses plain RoPE on every
frequency; beyond it the hierarchical angles are used with ``window - 1`` added to the query's
higher-level indices (the token-level frequencies keep the ordinary distance), so hierarchical
distances continue where the window ends. ``window=0`` uses hierarchical angles for every pair
(no shift). The paper uses ``window=512`` at train lengths 2048 and 4096 and gives no rule for
others; ropelab's default ``window=auto`` is half the model's train length ``L``. The rule was
chosen by measurement on development files of two models (SmolLM2-135M, L = 8192; the ShortLLM
model, L = 128) at the paper's split 0.5: the loss beyond ``L`` falls as the window grows from
L/16 through L/4 to L/2 on both (docs/results.md, "HiRoPE's settings"; ``python -m bench
hirope-sweep``). A longer window leaves fewer pairs to the hierarchical angles, so this also says
how little the hierarchy itself adds on these models.

Without a hierarchy (plain text, or no positions given) tokens fall into fixed chunks:
``seg = i // chunk`` (the paper: every 128 tokens of prose is one segment). ``split=auto`` is the
paper's reliable split ``log_base(L / 2pi)`` for training length ``L`` (Sec. 6.1, Eq. 6).

Reductions (tested): ``split=1`` is exactly RoPE (every frequency reads the token index), and so
is a window at least as long as the input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ropelab.core.errors import RopelabError
from ropelab.pe.base import FrequencyPlan, MethodInfo, Param, PEContext, WindowedRotation
from ropelab.pe.rope import rotation_tables
from ropelab.pe.window import WindowedEncoding

HIROPE_PAPER = (
    "Zhang et al. 2024, HiRoPE: Length Extrapolation for Code Models Using Hierarchical Position (arXiv 2403.19115)"
)
LEVEL_NAMES = ("token-level", "segment-level", "unit-level")


#: ``window=auto`` is this fraction of the model's train length (chosen by measurement: see
#: ``docs/results.md``, "HiRoPE's settings", and ``python -m bench hirope-sweep``)
AUTO_WINDOW_FRACTION = (1, 2)


def auto_window(train_len: int) -> int:
    """The ``window=auto`` neighbour window for a model trained at ``train_len`` tokens."""
    numerator, denominator = AUTO_WINDOW_FRACTION
    return max(1, round(train_len * numerator / denominator))


def reliable_split(train_len: int, base: float) -> float:
    """The paper's ``r* = log_base(L / 2pi)``: the fraction of frequencies with period <= L."""
    return min(1.0, max(0.0, math.log(train_len / (2 * math.pi)) / math.log(base)))


def frequency_levels(num_frequencies: int, split: float, levels: int) -> Tensor:
    """Level read by each frequency: 0 (token) for the first round(split*d/2), then higher ones."""
    token = round(split * num_frequencies)
    level = torch.zeros(num_frequencies, dtype=torch.long, device="cpu")  # also under a meta-device context
    rest = num_frequencies - token
    if levels == 2:
        level[token:] = 1
    else:
        level[token : token + (rest + 1) // 2] = 1
        level[token + (rest + 1) // 2 :] = 2
    return level


class HiRoPE(WindowedEncoding):
    uses_hierarchy = True

    def __init__(
        self,
        ctx: PEContext,
        spec: str,
        split: float | str,
        window: int | str,
        token_index: str,
        levels: int,
        chunk: int,
    ) -> None:
        super().__init__(ctx, spec, auto_window(ctx.train_len) if window == "auto" else int(window))
        self.split = reliable_split(ctx.train_len, ctx.rope_base) if split == "auto" else float(split)
        self.levels = levels
        self.chunk = chunk
        self.frequency_level = frequency_levels(self.theta.numel(), self.split, levels)
        # with no higher-level frequency, the token level must be the global index (see module doc)
        self.token_index = "global" if int(self.frequency_level.max()) == 0 else token_index

    def plan(self, seq_len: int | None = None) -> FrequencyPlan:
        return FrequencyPlan(
            theta=self.theta, base=self.base_plan.base, frequency_level=self.frequency_level, level_names=LEVEL_NAMES
        )

    def hierarchy(self, positions: Tensor, index: Tensor) -> Tensor:
        """``[B|1, T, levels]`` position vectors (lowest level first)."""
        if positions.dim() == 2:  # no code structure given: fixed chunks of the linear position
            linear = positions.to(torch.long)
            columns = [linear % self.chunk, linear // self.chunk]
            if self.levels == 3:
                columns.append(torch.zeros_like(linear))
            vectors = torch.stack(columns, dim=-1)
        else:
            if positions.shape[-1] != self.levels:
                raise RopelabError(
                    f"{self.spec}: positions have {positions.shape[-1]} levels but the method uses {self.levels}"
                )
            vectors = positions.to(torch.long)
        if self.token_index == "global":
            linear = self.linear_positions(positions, index).to(torch.long)
            vectors = torch.cat((linear.expand(vectors.shape[:2])[..., None], vectors[..., 1:]), dim=-1)
        return vectors

    def windowed_rotation(self, positions: Tensor, index: Tensor) -> WindowedRotation:
        near = self.rope(self.linear_positions(positions, index))
        vectors = self.hierarchy(positions, index)
        shift = torch.zeros(self.levels, dtype=torch.long, device=vectors.device)
        shift[1:] = max(self.window - 1, 0)
        far_k = rotation_tables(self.theta, vectors, self.frequency_level, name=self.spec)
        far_q = rotation_tables(self.theta, vectors + shift, self.frequency_level, name=self.spec)
        return WindowedRotation(near_q=near, near_k=near, far_q=far_q, far_k=far_k)


def _build(ctx: PEContext, spec: str, split, window, token_index: str, levels: int, chunk: int) -> HiRoPE:
    return HiRoPE(ctx, spec, split, window, token_index, levels, chunk)


METHODS = [
    MethodInfo(
        name="hirope",
        family="hirope",
        kind="window",
        description="HiRoPE: split RoPE frequencies between token and function/class levels, RoPE window nearby.",
        paper=HIROPE_PAPER,
        params=(
            Param(
                "split",
                float,
                0.5,
                "fraction of frequencies carrying the token level",
                minimum=0.0,
                maximum=1.0,
                specials=("auto",),
            ),
            Param(
                "window",
                int,
                "auto",
                "distance below which plain RoPE is used; 0 disables the window; auto: half the train length",
                minimum=0,
                specials=("auto",),
            ),
            Param(
                "token_index",
                str,
                "global",
                "token level: the ordinary token index (global, the paper's) or the offset inside the segment",
                choices=("global", "segment"),
            ),
            Param("levels", int, 2, "hierarchy levels (3 adds the top-level unit)", choices=(2, 3)),
            Param("chunk", int, 128, "fallback segment size for text without code structure", minimum=1),
        ),
        factory=_build,
    )
]
