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
others; ropelab's default ``window=auto`` is half the model's train length ``L``. Where that
default comes from, and the rule that re-chooses it on development projects
(:mod:`ropelab.experiments.hirope.selection`), is in docs/methods.md, "HiRoPE".

Two ablations of these settings (ropelab's, not the paper's):

* ``shift``: what far pairs add to the query's higher-level indices. ``window`` (default) is the
  paper's ``window - 1`` (Section 3.2); ``none`` adds 0, so far pairs see the raw segment distance;
  ``segments`` adds, for a query at token index ``q`` in segment ``seg[q]``,
  ``round((window - 1) * (seg[q] + 1) / (q + 1))``: the window's length in segments at the segment
  density the document has had so far (a shift in the unit it is added to). It is causal -- a
  query reads only its own ordinal and index, so no input length or later token changes it, and
  a cached continuation gets the same shift as one pass. ``window=0`` always adds 0; with
  ``levels=3`` every higher level gets the same shift. See :func:`segment_shift` and
  :func:`far_out_of_range_share` (how many far pairs get a segment distance beyond those seen in
  training).
* ``granularity``: how the evaluator builds segments: ``function`` (default: each function or
  method is a segment), ``class`` (each top-level class or function), or ``chunk`` (no code
  structure: fixed chunks of ``chunk`` tokens). Read by ``ropelab.eval.runner`` and
  ``ropelab.analysis.levels``; the encoding itself only sees the positions it is given.

Without a hierarchy (plain text, or no positions given) tokens fall into fixed chunks:
``seg = i // chunk`` (the paper: every 128 tokens of prose is one segment). ``split=auto`` is the
paper's reliable split ``log_base(L / 2pi)`` for training length ``L`` (Sec. 6.1, Eq. 6).

Reductions (tested): ``split=1`` is exactly RoPE (every frequency reads the token index), and so
is a window at least as long as the input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ropelab.core.errors import RopelabError
from ropelab.pe.base import FrequencyPlan, MethodInfo, Param, PEContext, WindowedRotation
from ropelab.pe.rope import levels_read, rotation_tables
from ropelab.pe.window import WindowedEncoding

HIROPE_PAPER = (
    "Zhang et al. 2024, HiRoPE: Length Extrapolation for Code Models Using Hierarchical Position (arXiv 2403.19115)"
)
LEVEL_NAMES = ("token-level", "segment-level", "unit-level")
SHIFTS = ("window", "none", "segments")
GRANULARITIES = ("function", "class", "chunk")


#: ``window=auto`` is this fraction of the model's train length (its provenance: docs/methods.md,
#: "HiRoPE", "Where the defaults come from")
AUTO_WINDOW_FRACTION = (1, 2)


def auto_window(train_len: int) -> int:
    """The ``window=auto`` neighbour window for a model trained at ``train_len`` tokens."""
    numerator, denominator = AUTO_WINDOW_FRACTION
    return max(1, round(train_len * numerator / denominator))


def reliable_split(train_len: int, base: float) -> float:
    """The paper's ``r* = log_base(L / 2pi)``: the fraction of frequencies with period <= L."""
    return min(1.0, max(0.0, math.log(train_len / (2 * math.pi)) / math.log(base)))


def segment_shift(kind: str, window: int, num_segments, num_tokens):
    """What far pairs add to the query's higher-level indices (the ``shift`` parameter).

    ``window``: ``window - 1``; ``none``: 0; ``segments``: ``round((window - 1) * num_segments /
    num_tokens)``, computed exactly in integers (ties to even, as Python's ``round``), so
    ``num_segments`` and ``num_tokens`` may be ints or integer tensors (the result broadcasts; no
    host sync). ``window < 1`` always gives 0.
    """
    if kind not in SHIFTS:
        raise RopelabError(f"shift must be one of {', '.join(SHIFTS)}, got {kind!r}")
    if window < 1 or kind == "none":
        return 0
    if kind == "window":
        return window - 1
    scaled = (window - 1) * num_segments
    whole, rest = scaled // num_tokens, scaled % num_tokens
    return whole + ((2 * rest > num_tokens) | ((2 * rest == num_tokens) & (whole % 2 == 1)))


def far_out_of_range_share(segments, window: int, shift, max_distance: int) -> float:
    """Share of far pairs whose segment-level distance exceeds ``max_distance``.

    ``segments``: the non-decreasing per-token segment ordinals of one document. Far pairs are the
    query/key pairs with ``q - k >= window`` (``window=0``: every causal pair); a pair's
    segment-level distance is ``segments[q] - segments[k] + shift`` (``shift``: one int, or one
    per token as :meth:`HiRoPE.far_shift` gives for ``shift=segments``). Pass ``max_distance =
    train_len - 1``, the largest distance the model saw in training. Exact, O(T log T); 0.0 when
    there is no far pair.
    """
    seg = np.asarray(segments, dtype=np.int64)
    if seg.ndim != 1 or bool(np.any(np.diff(seg) < 0)):
        raise RopelabError("far_out_of_range_share: segments must be a 1-D non-decreasing sequence")
    if window < 0:
        raise RopelabError(f"far_out_of_range_share: window must be >= 0, got {window}")
    queries = np.arange(window, len(seg))
    if not len(queries):
        return 0.0
    far_keys = queries - window + 1  # keys 0 .. q - window
    shift = np.asarray(shift, dtype=np.int64)
    if shift.ndim and shift.shape != seg.shape:
        raise RopelabError("far_out_of_range_share: a per-token shift needs one value per token")
    shift = shift[queries] if shift.ndim else shift
    # keys k with seg[k] + max_distance < seg[q] + shift form a prefix (seg is sorted)
    beyond = np.searchsorted(seg, seg[queries] + shift - max_distance, side="left")
    return float(np.minimum(beyond, far_keys).sum() / far_keys.sum())


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
        shift: str = "window",
        granularity: str = "function",
    ) -> None:
        super().__init__(ctx, spec, auto_window(ctx.train_len) if window == "auto" else int(window))
        self.split = reliable_split(ctx.train_len, ctx.rope_base) if split == "auto" else float(split)
        self.levels = levels
        self.chunk = chunk
        self.shift = shift
        self.granularity = granularity  # read by the evaluator when it builds the positions
        self.frequency_level = frequency_levels(self.theta.numel(), self.split, levels)
        # with no higher-level frequency, the token level must be the global index (see module doc)
        self.token_index = "global" if levels_read(self) == 1 else token_index

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

    def far_shift(self, segments=None):
        """What each far query adds to its higher-level indices on a document with these per-token
        segment ordinals (``None``: no structure, fixed chunks of ``chunk`` tokens): an int for
        ``shift=window`` / ``none``, else a per-token array (query ``q`` uses its own ordinal and
        index, :func:`segment_shift` with ``S = seg[q] + 1`` and ``T = q + 1``)."""
        if self.shift != "segments" or self.window < 1:
            return segment_shift(self.shift, self.window, 1, 1)
        if segments is None:
            raise RopelabError("far_shift: shift=segments needs the per-token segment ordinals")
        seg = np.asarray(segments, dtype=np.int64)
        return segment_shift(self.shift, self.window, seg + 1, np.arange(1, len(seg) + 1))

    def _query_shift(self, vectors: Tensor, index: Tensor) -> Tensor | int:
        """:meth:`far_shift` as a tensor op: ``[B|1, T, 1]`` (or an int), causal (a query sees only
        its own segment ordinal and index, cached tokens included), no host sync."""
        if self.shift != "segments" or self.window < 1:
            return segment_shift(self.shift, self.window, 1, 1)
        num_segments = vectors[..., 1] + 1  # segments so far, the query's own included
        num_tokens = index.to(torch.long).expand(vectors.shape[:2]) + 1  # tokens so far (cache-aware)
        return segment_shift(self.shift, self.window, num_segments, num_tokens)[..., None]

    def windowed_rotation(self, positions: Tensor, index: Tensor) -> WindowedRotation:
        near = self.rope(self.linear_positions(positions, index))
        vectors = self.hierarchy(positions, index)
        higher = torch.ones(self.levels, dtype=torch.long, device=vectors.device)
        higher[0] = 0
        shift = self._query_shift(vectors, index) * higher
        far_k = rotation_tables(
            self.theta, vectors, self.frequency_level, name=self.spec, levels_read=levels_read(self)
        )
        far_q = rotation_tables(
            self.theta, vectors + shift, self.frequency_level, name=self.spec, levels_read=levels_read(self)
        )
        return WindowedRotation(near_q=near, near_k=near, far_q=far_q, far_k=far_k)


def _build(ctx: PEContext, spec: str, **params) -> HiRoPE:
    return HiRoPE(ctx, spec, **params)


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
                "distance below which plain RoPE is used; 0 disables the window; auto: half the train length "
                "(provisional: docs/methods.md, 'Where the defaults come from')",
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
            Param(
                "shift",
                str,
                "window",
                "added to far queries' higher levels: window - 1 (the paper's), none, or the segments a window spans",
                choices=SHIFTS,
            ),
            Param(
                "granularity",
                str,
                "function",
                "segments the evaluator builds: functions, top-level classes, or fixed chunks of `chunk` tokens",
                choices=GRANULARITIES,
            ),
        ),
        factory=_build,
    )
]
