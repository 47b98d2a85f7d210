"""The one interface between a model and its position encoding.

A position encoding may provide any of three things, and the model asks for all three without
ever branching on a method's name:

* ``rotation(positions)`` -> :class:`Rotation`: cos/sin tables (float32, built from per-token
  positions and per-frequency angles) that rotate queries and keys -- RoPE and its relatives.
  Positions may be ``[B, T]`` (one index per token) or ``[B, T, levels]`` (a position vector per
  token); in the second case ``frequency_level[j]`` says which level frequency ``j`` reads
  (HiRoPE).
* ``attention_bias(layer, q_pos, k_pos)`` -> an additive ``[B|1, H, Tq, Tk]`` bias on the
  pre-softmax logits (ALiBi, KERPLE, FIRE).
* ``input_embedding(positions)`` -> ``[B|1, T, dim]`` added to token embeddings (learned APE).

Methods whose scores cannot be written as one rotated-q . rotated-k (ReRoPE, Self-Extend, HiRoPE's
window) set ``window`` and provide a fourth hook:

* ``windowed_rotation(positions, index)`` -> :class:`WindowedRotation`: two sets of tables. A
  query/key pair whose sequence distance ``m - n`` is below ``window`` scores with the *near*
  tables, every other pair with the *far* tables; the attention layer computes both score sets
  chunk by chunk and merges them by that distance mask (``ropelab.model.window_attention``).
  Key tables depend only on the key, so a KV cache keeps both rotated keys.

A RoPE-family encoding also describes itself as a :class:`FrequencyPlan` (``plan()``): the angle
of every frequency index, which transforms (PI, NTK, YaRN) rewrite and the analyses read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from ropelab.core.checks import is_real
from ropelab.core.errors import RopelabError, SpecError

#: what a method is, for listings and the docs: RoPE itself and its frequency edits (``rope``), the
#: frequency scalings (``scaling``), windowed attention (``window``), HiRoPE (``hirope``), a learned
#: table (``absolute``), an attention bias (``bias``) or nothing (``none``)
Family = Literal["rope", "scaling", "window", "hirope", "absolute", "bias", "none"]
#: how a method composes in a spec: a RoPE-family base (``rotary``), a transform that rescales a
#: base's frequencies (``transform``, after ``+``), a windowed method (``window``) or a
#: stand-alone encoding (``encoding``)
Kind = Literal["rotary", "transform", "window", "encoding"]
FAMILIES: tuple[str, ...] = get_args(Family)
KINDS: tuple[str, ...] = get_args(Kind)

LAYOUTS = ("half", "interleaved")

#: separates the values of a list parameter in a spec (``longrope:short_factor=1/1.5/2``): a ``,``
#: separates parameters and a ``+`` methods, and ``/`` needs no quoting in a shell
LIST_SEPARATOR = "/"
#: the most values a list parameter takes (one per frequency of the largest head ropelab accepts)
MAX_LIST = 1 << 12


@dataclass(frozen=True)
class PEContext:
    """What an encoding may know about the model it serves (fixed at construction).

    ``train_len`` is the checkpoint's training length: it is never derived from the current input.
    """

    head_dim: int
    n_heads: int
    train_len: int
    rope_base: float = 10000.0
    dim: int | None = None  # model width; needed only by encodings that add input embeddings
    n_layers: int = 1

    def __post_init__(self) -> None:
        if self.head_dim <= 0 or self.head_dim % 2:
            raise RopelabError(f"head_dim must be a positive even number, got {self.head_dim}")
        if self.train_len <= 0:
            raise RopelabError(f"train_len must be positive, got {self.train_len}")
        if self.n_heads <= 0:
            raise RopelabError(f"n_heads must be positive, got {self.n_heads}")
        if not self.rope_base > 1.0:
            raise RopelabError(f"rope base must be > 1, got {self.rope_base}")


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its type, default and allowed range."""

    name: str
    type: type  # int, float, bool, str, or tuple: a list of numbers (:meth:`_parse_list`)
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None  # inclusive
    maximum: float | None = None  # inclusive
    exclusive_minimum: bool = False
    always_show: bool = False  # keep in the canonical spec even at its default (e.g. factor)
    specials: tuple[str, ...] = ()  # words accepted verbatim besides values of ``type`` (e.g. "auto")

    def allowed(self) -> str:
        text = self._allowed()
        return text + "".join(f" or {word!r}" for word in self.specials)

    def _allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        lo = hi = None
        if self.minimum is not None:
            lo = f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            hi = f"<= {self.maximum:g}"
        kind = {
            int: "an integer",
            float: "a number",
            bool: "true or false",
            str: "a string",
            tuple: f"numbers separated by {LIST_SEPARATOR!r}, each",
        }[self.type]
        return " ".join(x for x in (kind, lo, "and" if lo and hi else None, hi) if x)

    def parse(self, method: str, raw: str | Any) -> Any:
        """Convert and validate one value; the error names the method, key and allowed values."""
        value = raw
        if isinstance(raw, str) and raw.strip().lower() in self.specials:
            return raw.strip().lower()
        if self.type is tuple:
            return self._parse_list(method, raw)
        try:
            if isinstance(raw, str):
                if self.type is bool:
                    low = raw.strip().lower()
                    if low not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = low in ("true", "1", "yes")
                elif self.type is int:
                    as_float = float(raw)
                    if not as_float.is_integer():
                        raise ValueError
                    value = int(as_float)
                else:
                    value = self.type(raw)
            elif self.type is float and is_real(raw):
                value = float(raw)
            elif not isinstance(raw, self.type) or (self.type is int and isinstance(raw, bool)):
                raise ValueError
        except ValueError:
            raise SpecError(
                f"{method}: {self.name}={raw!r} is not valid; {self.name} must be {self.allowed()}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{method}: {self.name} must be finite, got {raw!r}")
        bad = (
            (self.choices is not None and value not in self.choices)
            or (
                self.minimum is not None
                and (value < self.minimum or (self.exclusive_minimum and value == self.minimum))
            )
            or (self.maximum is not None and value > self.maximum)
        )
        if bad:
            raise SpecError(f"{method}: {self.name}={raw!r} is out of range; {self.name} must be {self.allowed()}")
        return value

    def _parse_list(self, method: str, raw: str | Any) -> tuple[float, ...]:
        """A list of numbers: ``"1/1.5/2"`` in a spec (:data:`LIST_SEPARATOR`; a ``,`` separates
        parameters), or a list / tuple of numbers from Python; each value checked as a number."""
        items = raw.split(LIST_SEPARATOR) if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)) or not items or len(items) > MAX_LIST:
            raise SpecError(
                f"{method}: {self.name}={raw!r} is not valid; {self.name} must be 1 to {MAX_LIST} {self.allowed()}"
            )
        number = Param(self.name, float, None, self.help, minimum=self.minimum, maximum=self.maximum,
                       exclusive_minimum=self.exclusive_minimum)  # fmt: skip
        return tuple(number.parse(method, item) for item in items)


@dataclass(frozen=True)
class MethodInfo:
    """A registry entry: what a method is called, what it does and which parameters it takes."""

    name: str
    family: Family
    kind: Kind
    description: str
    paper: str
    params: tuple[Param, ...] = ()
    factory: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES or self.kind not in KINDS:
            raise ValueError(f"{self.name}: family {self.family!r} / kind {self.kind!r} not in {FAMILIES} / {KINDS}")

    def resolve(self, given: dict[str, str | Any]) -> dict[str, Any]:
        """Validate user-given values and fill defaults; unknown keys list the allowed ones."""
        known = {p.name: p for p in self.params}
        for key in given:
            if key not in known:
                allowed = ", ".join(known) if known else "none"
                raise SpecError(f"{self.name}: unknown parameter {key!r}; allowed parameters: {allowed}")
        return {name: (p.parse(self.name, given[name]) if name in given else p.default) for name, p in known.items()}


@dataclass
class Rotation:
    """cos/sin tables ``[B|1, T, head_dim/2]`` in float32, already scaled by the attention factor."""

    cos: Tensor
    sin: Tensor

    def rows(self, index: Tensor | slice) -> Rotation:
        """The tables of some positions only (``slice(past, None)``: the last queries)."""
        return Rotation(self.cos[:, index], self.sin[:, index])


@dataclass
class WindowedRotation:
    """Tables of a windowed method: ``near_*`` for pairs with ``m - n < window``, ``far_*`` beyond."""

    near_q: Rotation
    near_k: Rotation
    far_q: Rotation
    far_k: Rotation

    def apply(
        self, q: Tensor, k: Tensor, layout: str = "half", query_rows: Tensor | slice | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(q_near, q_far, k_near, k_far)``: queries and keys ``[B, H, T, head_dim]`` rotated by the
        near and far tables -- what ``ropelab.model.window_attention.windowed_attention`` takes.
        ``query_rows`` picks the queries' rows of the tables when ``q`` holds only some positions
        (the last ones of a cached sequence, or selected ones); by default all rows."""
        near_q, far_q = self.near_q, self.far_q
        if query_rows is not None:
            near_q, far_q = near_q.rows(query_rows), far_q.rows(query_rows)
        return (
            apply_rotary(q, near_q, layout),
            apply_rotary(q, far_q, layout),
            apply_rotary(k, self.near_k, layout),
            apply_rotary(k, self.far_k, layout),
        )


def apply_rotary(x: Tensor, rotation: Rotation, layout: str = "half") -> Tensor:
    """Rotate ``x`` of shape ``[B, H, T, head_dim]`` by the tables in ``rotation``.

    ``half`` (HF Llama): frequency j lives in channels j and j + d/2.
    ``interleaved`` (Meta/llama2.c/GGUF): frequency j lives in channels 2j and 2j + 1.
    The tables are float32; they are cast to ``x``'s dtype only for the final multiply.
    """
    cos = rotation.cos.unsqueeze(1).to(x.dtype)
    sin = rotation.sin.unsqueeze(1).to(x.dtype)
    if layout == "half":
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    if layout == "interleaved":
        pairs = x.unflatten(-1, (-1, 2))
        x1, x2 = pairs[..., 0], pairs[..., 1]
        return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    raise RopelabError(f"unknown rotary layout {layout!r}; allowed: {', '.join(LAYOUTS)}")


def relative_distance(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """``q - k`` as float32 ``[B|1, 1, Tq, Tk]`` from positions ``[B|1, Tq]`` and ``[B|1, Tk]``."""
    return q_pos.to(torch.float32)[:, None, :, None] - k_pos.to(torch.float32)[:, None, None, :]


@dataclass(frozen=True)
class FrequencyPlan:
    """What a RoPE-family method does to each frequency index ``j = 0 .. d/2-1``.

    ``theta``: angle per unit position, float32 ``[d/2]``; 0 means position-independent.
    ``attention_factor``: multiplies cos and sin (so the logit by its square), YaRN's ``mscale``.
    ``frequency_level``: which component of a position vector frequency j reads (all 0 for
    one-level positions).
    ``base``: the rotary base the plan was built from (transforms such as YaRN need it).
    """

    theta: Tensor
    base: float
    attention_factor: float = 1.0
    frequency_level: Tensor | None = None
    level_names: tuple[str, ...] = ()

    @property
    def num_frequencies(self) -> int:
        return int(self.theta.numel())

    def roles(self) -> list[str]:
        """``rotated`` / ``position-independent``; for hierarchical plans the level each reads."""
        levels = self.frequency_level.tolist() if self.frequency_level is not None else [0] * self.num_frequencies
        return [
            "position-independent" if t <= 0 else (self.level_names[level] if self.level_names else "rotated")
            for t, level in zip(self.theta.tolist(), levels)
        ]


class PositionEncoding(nn.Module):
    """Base class: every hook returns ``None`` (that is NoPE)."""

    info: ClassVar[MethodInfo]
    #: True when the rotation of a position changes with the input length (dynamic NTK): the KV
    #: cache then keeps keys unrotated and rotates all of them with the current table each step.
    rotation_depends_on_length: bool = False
    #: Set by windowed methods (ReRoPE, Self-Extend, HiRoPE): pairs closer than this use the
    #: near tables of :meth:`windowed_rotation`, the others its far tables.
    window: int | None = None
    #: Windowed methods only: when set, a pair at distance ``>= window`` is visible only for the
    #: first ``far_keys`` keys of the sequence (each row's first ``far_keys`` real tokens when the
    #: batch is padded) -- "attention sinks" (Xiao et al. 2024, arXiv 2309.17453); 0 gives plain
    #: sliding-window attention. ``None`` (every built-in method): every far key is visible. The
    #: model passes it to ``ropelab.model.window_attention.windowed_attention``.
    far_keys: int | None = None
    #: True when the method reads hierarchical (code-structure) positions ``[B, T, levels]``.
    uses_hierarchy: bool = False
    #: The position levels a hierarchical method reads (token + segment = 2; HiRoPE's ``levels=3``
    #: adds the top-level unit); the number of columns of its position vectors.
    levels: int = 2
    #: The largest position the method can place (a learned table's last row), or None: no bound.
    #: Checked where inputs enter (:func:`ropelab.model.inputs.check_inputs`), never in the forward.
    max_position: int | None = None

    def __init__(self, ctx: PEContext, spec: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.spec = spec

    @property
    def is_windowed(self) -> bool:
        """Plain RoPE within :attr:`window`, other tables beyond it (ReRoPE, Self-Extend, HiRoPE)."""
        return self.window is not None

    def _apply(self, fn, recurse=True):
        """``model.to(torch.bfloat16)`` (or ``.half()``) casts weights, never the encoding's float32
        buffers -- angles, ALiBi slopes, FIRE's threshold: they are a function of the positions and
        keep their float32 values (moved to the new device). Learned parameters are weights and
        follow the model's dtype; the encodings compute with them in float32."""
        kept = [
            (module, name, buffer)
            for module in (self.modules() if recurse else [self])
            for name, buffer in module._buffers.items()
            if buffer is not None and buffer.dtype == torch.float32
        ]
        result = super()._apply(fn, recurse)
        for module, name, buffer in kept:
            now = module._buffers.get(name)
            if now is not None and now.is_floating_point() and torch.finfo(now.dtype).bits < 32:
                module._buffers[name] = buffer.to(now.device)
        return result

    def rotation(self, positions: Tensor, length: int | None = None) -> Rotation | None:
        return None

    def plan(self, seq_len: int | None = None) -> FrequencyPlan | None:
        """RoPE-family methods: the angle of every frequency and the attention factor at input length
        ``seq_len`` (default: the train length); ``None`` for methods without rotary frequencies."""
        return None

    def attention_bias(self, layer: int, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """The additive bias ``[B|1, H, Tq, Tk]`` (float32) of queries at ``q_pos [B|1, Tq]`` and keys at
        ``k_pos [B|1, Tk]``; called with slices of the positions (one query chunk and the keys it
        sees: ``ropelab.model.bias_attention``), never needing all ``T x T`` pairs at once."""
        return None

    def distance_bias(self, layer: int, distance: Tensor) -> Tensor | None:
        """Optional, for a bias that depends only on ``q - k``: the bias ``[H, n]`` of float32
        distances ``[n]`` (any sign; ``q_pos - k_pos`` as :func:`relative_distance` computes it), equal
        to :meth:`attention_bias` at those distances. With consecutive positions the model then reads
        the bias of every pair from this one table per layer (a strided view, no ``T x T`` tensor)."""
        return None

    def input_embedding(self, positions: Tensor) -> Tensor | None:
        return None

    def windowed_rotation(self, positions: Tensor, index: Tensor) -> WindowedRotation | None:
        """``positions``: what the caller gave (``[B|1, T]`` or ``[B|1, T, levels]``);
        ``index``: each token's index in the sequence ``[1, T]`` (cache-aware)."""
        return None

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"
