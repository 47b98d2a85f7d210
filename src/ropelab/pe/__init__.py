"""The position-encoding registry.

A method is named by a spec string ``NAME[:key=value,...]``; methods compose with ``+``:

    rope                       plain RoPE
    hope                       HoPE (drops frequencies with period > train length)
    yarn:factor=4              RoPE + YaRN (a transform alone applies to ``rope``)
    longrope:short_factor=1/1.5,long_factor=2/8   a list parameter: values separated by ``/``
    hope+pi:factor=4           HoPE, then Position Interpolation at inference
    alibi                      ALiBi (a bias method: no transforms allowed)

``build(spec, ctx)`` returns a :class:`~ropelab.pe.base.PositionEncoding` module; the model only
ever talks to that interface. ``methods()`` lists every registered method.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ropelab.core.errors import SpecError
from ropelab.pe import alibi, fire, hirope, hope, kerple, learned, nope, rerope, rope, scaling, self_extend, yarn
from ropelab.pe.base import (
    LIST_SEPARATOR,
    FrequencyPlan,
    MethodInfo,
    Param,
    PEContext,
    PositionEncoding,
    Rotation,
    apply_rotary,
)
from ropelab.pe.rope import RotaryEncoding

__all__ = [
    "FrequencyPlan",
    "MethodInfo",
    "PEContext",
    "Param",
    "PositionEncoding",
    "RotaryEncoding",
    "Rotation",
    "Spec",
    "apply_rotary",
    "build",
    "compose",
    "format_value",
    "get_method",
    "methods",
    "parse_spec",
    "spec_of",
    "split_specs",
]

_REGISTRY: dict[str, MethodInfo] = {}
for _module in (rope, hope, scaling, yarn, nope, learned, alibi, kerple, fire, rerope, self_extend, hirope):
    for _info in _module.METHODS:
        _REGISTRY[_info.name] = _info


#: transforms whose angles change with the input length (a windowed method takes static ones only)
LENGTH_DEPENDENT = ("dynamic-ntk", "longrope")
#: transforms that, written alone on a model with its own scaling, would replace it (:func:`compose`)
TRANSFORMS = ("pi", "ntk", "dynamic-ntk", "llama3", "longrope", "yarn")


def methods() -> list[MethodInfo]:
    """Every registered method, in registry order."""
    return list(_REGISTRY.values())


def get_method(name: str) -> MethodInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown position method {name!r}; known methods: {', '.join(_REGISTRY)}") from None


@dataclass(frozen=True)
class SpecPart:
    info: MethodInfo
    params: dict

    def canonical(self) -> str:
        defaults = {p.name: p for p in self.info.params}
        given = {k: v for k, v in self.params.items() if defaults[k].always_show or v != defaults[k].default}
        if not given:
            return self.info.name
        values = ",".join(f"{k}={format_value(v)}" for k, v in given.items())
        return f"{self.info.name}:{values}"


def format_value(value) -> str:
    """A parameter value as a spec writes it (read back by :func:`parse_spec` as the same value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):  # a list parameter (longrope's factors): "1/1.5/2"
        return LIST_SEPARATOR.join(format_value(float(item)) for item in value)
    if isinstance(value, float):
        # the shortest text that reads back as the same number, without the "+" of an exponent
        # ("1e+06"), which would split the spec into two methods
        text = f"{value:g}" if float(f"{value:g}") == value else repr(value).removesuffix(".0")
        mantissa, plus, exponent = text.partition("e+")
        return f"{mantissa}e{int(exponent)}" if plus else text
    return str(value)


def parse_spec(spec: str) -> list[SpecPart]:
    """Parse and validate ``NAME[:k=v,...]+NAME...``; a lone transform is prefixed with ``rope``.

    Rules: at most one base encoding, and it comes first; transforms (pi, ntk, dynamic-ntk, llama3,
    proportional, longrope, yarn) only follow a RoPE-family base.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("empty position method; give a spec such as 'rope' or 'hope+yarn:factor=2'")
    parts: list[SpecPart] = []
    for chunk in spec.strip().split("+"):
        chunk = chunk.strip()
        if not chunk:
            raise SpecError(f"malformed spec {spec!r}: empty method between '+' signs")
        name, _, arg_text = chunk.partition(":")
        info = get_method(name.strip().lower())
        given: dict[str, str] = {}
        if arg_text.strip():
            for item in arg_text.split(","):
                key, eq, value = item.partition("=")
                if not eq or not key.strip() or not value.strip():
                    raise SpecError(f"{info.name}: malformed parameter {item.strip()!r}; write key=value")
                if key.strip() in given:
                    raise SpecError(f"{info.name}: parameter {key.strip()!r} given twice")
                given[key.strip()] = value.strip()
        parts.append(SpecPart(info, info.resolve(given)))

    if parts[0].info.kind == "transform":
        parts.insert(0, SpecPart(_REGISTRY["rope"], _REGISTRY["rope"].resolve({})))
    base, rest = parts[0], parts[1:]
    for part in rest:
        if part.info.kind != "transform":
            raise SpecError(
                f"{part.info.name!r} cannot be composed after {base.info.name!r}: only one base encoding per spec, "
                "followed by RoPE transforms (pi, ntk, dynamic-ntk, llama3, proportional, longrope, yarn)"
            )
        if base.info.kind == "window" and (part.info.name in LENGTH_DEPENDENT or part.params.get("factor") == "auto"):
            raise SpecError(
                f"{part.info.name!r} changes the angles with the input length; a windowed method "
                f"({base.info.name!r}) takes static frequency transforms only (pi, ntk, llama3)"
            )
        if base.info.kind not in ("rotary", "window"):
            raise SpecError(
                f"{part.info.name!r} rescales RoPE frequencies, but {base.info.name!r} has none; "
                "compose it with a RoPE-family method (rope, hope, hope-ab1, hope-ab2, hope-ab3) or a windowed "
                "one (rerope, self-extend, hirope)"
            )
    return parts


@dataclass(frozen=True, eq=False)
class Spec:
    """A method spec parsed and validated once (:func:`spec_of`): its parts, its canonical text and
    whether a lone transform was written (``yarn:factor=2``, read as ``rope+yarn``). Everything that
    takes a spec -- :func:`build`, :func:`compose`, ``Transformer.with_method``, the runner -- takes
    this value or its text, so a spec given at the command line is parsed once on its way to the
    attention."""

    parts: tuple[SpecPart, ...]
    text: str
    lone_transform: bool = False

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other) -> bool:  # equal to another Spec, or to its canonical text
        return (other.text if isinstance(other, Spec) else other) == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def spec_of(spec: str | Spec) -> Spec:
    """``spec`` as a :class:`Spec`: parsed and validated here when it is text (one
    :class:`~ropelab.core.errors.SpecError` for a bad one), returned as it is when it is one."""
    if isinstance(spec, Spec):
        return spec
    if not isinstance(spec, str):
        parse_spec(spec)  # the one error for a value that is not text
    return _parsed(spec)


@lru_cache(maxsize=1024)
def _parsed(spec: str) -> Spec:
    """Each spec text is parsed once per process (a run switches methods per unit: no re-parsing)."""
    parts = parse_spec(spec)
    lone = parts[0].info.name == "rope" and spec.strip().split("+")[0].split(":")[0].strip().lower() in TRANSFORMS
    return Spec(tuple(parts), "+".join(part.canonical() for part in parts), lone)


def canonical_spec(spec: str | Spec) -> str:
    """The spec with defaults dropped and names normalised (``rope+yarn:factor=2`` -> same)."""
    return spec_of(spec).text


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of specs, as every ``--methods``/``--method``/``--pes`` takes it.

    A comma also separates a spec's own ``key=value`` parameters, so an item of the form
    ``key=value`` (no ``:`` or ``+`` before its ``=``) continues the parameters of the spec before
    it; ``+`` composes within one spec (module doc):

        rope,hirope:split=0.5,window=256,yarn:factor=2 -> rope | hirope:split=0.5,window=256 | yarn:factor=2
        hope+yarn:factor=2,beta_fast=32,rerope         -> hope+yarn:factor=2,beta_fast=32 | rerope

    Only the list syntax is checked here (empty items, a parameter with no method before it);
    :func:`parse_spec` validates each spec.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError("empty list of position methods; give specs such as 'rope,hope+yarn:factor=2'")
    specs: list[str] = []
    for position, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        if not item:
            raise SpecError(f"malformed method list {text.strip()!r}: item {position} is empty (stray ',')")
        key, eq, value = item.partition("=")
        if not eq or ":" in key or "+" in key:
            specs.append(item)
            continue
        if not specs:
            raise SpecError(
                f"malformed method list {text.strip()!r}: parameter {item!r} comes before any method; "
                "write METHOD:key=value"
            )
        if ":" not in specs[-1].rpartition("+")[2]:
            raise SpecError(
                f"malformed method list {text.strip()!r}: parameter {item!r} follows {specs[-1]!r}, which has no "
                f"':' parameters; write {specs[-1]}:{item}"
            )
        specs[-1] += f",{key.strip()}={value.strip()}"
    return specs


def build(spec: str | Spec, ctx: PEContext) -> PositionEncoding:
    """Build the encoding named by ``spec`` (text or a parsed :class:`Spec`) for a model described by ``ctx``."""
    spec = spec_of(spec)
    parts, canonical = spec.parts, spec.text
    base = parts[0]
    if base.info.kind == "rotary":
        plan = base.info.factory(ctx, **base.params)
        transforms = [part.info.factory(**part.params) for part in parts[1:]]
        encoding = RotaryEncoding(ctx, canonical, plan, transforms)
    else:
        encoding = base.info.factory(ctx, canonical, **base.params)
        if len(parts) > 1:  # a windowed method over the model's scaled frequencies (e.g. llama3)
            encoding.transform_frequencies([part.info.factory(**part.params)[0] for part in parts[1:]])
    encoding.info = base.info
    return encoding


def compose(native: str | Spec, requested: str | Spec) -> tuple[Spec, str | None]:
    """The spec to run when ``requested`` is applied to a model whose own method is ``native``,
    and a note saying what happened (None: nothing to say). A model's own frequency scaling (its
    rope type, e.g. ``rope+llama3:factor=8``) is never dropped silently:

    * a windowed method written without transforms (``self-extend``) runs over the model's scaled
      frequencies: ``self-extend+llama3:factor=8``;
    * transforms written as a continuation of the model's own (``rope+llama3:factor=8+pi:factor=2``)
      compose as written; a spec that names its base (``rope``, ``rope+yarn:factor=2``, ``hope``,
      ``alibi``) replaces the model's method, and the note says so;
    * a lone transform (``yarn:factor=2``, which means ``rope+yarn``) on a model with its own
      scaling is refused: it would replace that scaling without saying so.
    """
    native, requested = spec_of(native), spec_of(requested)
    own, wanted = native.parts, requested.parts
    own_text, wanted_text = native.text, requested.text
    scaling = own[1:]
    if not scaling or wanted_text == own_text or own[0].info.kind != "rotary":
        return requested, None
    scaling_text = "+".join(part.canonical() for part in scaling)
    extra = wanted[1:]
    if not extra and wanted[0].info.kind == "window":
        composed = spec_of(f"{wanted[0].canonical()}+{scaling_text}")  # validated: a windowed base, static scaling
        return composed, f"{wanted_text} runs over the model's own {scaling_text}"
    if [p.canonical() for p in extra[: len(scaling)]] == [p.canonical() for p in scaling]:
        return requested, None
    if requested.lone_transform:
        written = "+".join(part.canonical() for part in wanted[1:])
        raise SpecError(
            f"{written} would replace the model's own {scaling_text} ({own_text}); write "
            f"{own_text}+{written} to compose, or {wanted_text} to replace it"
        )
    return requested, f"{wanted_text} replaces the model's own {own_text}"
