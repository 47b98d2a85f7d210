"""Which ropelab methods a ``transformers`` config can express on its own, and how.

transformers' models compute RoPE from the config: ``rope_parameters`` (5.x,
``rope_theta`` inside) or ``rope_theta`` + ``rope_scaling`` (4.x). Some ropelab methods have an
exact twin there, so a directory saved with them runs correctly in plain ``transformers``:

    ropelab spec              transformers rope parameters
    rope[:base=B]             {"rope_type": "default", "rope_theta": B}
    ntk:factor=F              {"rope_type": "default", "rope_theta": base * F^(d/(d-2))}   (a base change)
    pi:factor=F               {"rope_type": "linear", "factor": F}
    dynamic-ntk:factor=F      {"rope_type": "dynamic", "factor": F}
    proportional:fraction=P   {"rope_type": "proportional", "partial_rotary_factor": P, "factor": F}
    llama3:factor=F,...       {"rope_type": "llama3", "factor": F, "low_freq_factor", "high_freq_factor",
                               "original_max_position_embeddings": L}
    longrope:short_factor=..  {"rope_type": "longrope", "short_factor": [...], "long_factor": [...],
                               "factor": F, "original_max_position_embeddings": L[, "attention_factor"]}
    yarn:factor=F,...         {"rope_type": "yarn", "factor": F, "original_max_position_embeddings": L,
                               "beta_fast", "beta_slow", "truncate"[, "attention_factor", "mscale",
                               "mscale_all_dim"]}
    ntk:...+<pi|dynamic-ntk|yarn>   the base change, then that type

On a model with per-layer-type rope (Gemma 3, transformers 5.x) ``rope_parameters`` holds one such
entry per layer type (:func:`native_rope_per_layer_type`). ``partial_rotary_factor`` (GPT-NeoX,
Phi-3) is structural and kept from the config's own fields.

``rope``, ``pi`` and ``yarn`` give bit-identical logits in transformers and in ropelab (measured
on tiny models and SmolLM2-135M). ``ntk`` and ``dynamic-ntk`` agree to float32 rounding: ropelab
rescales the angles by ``(base/base')^(2j/d)`` in float64, transformers recomputes
``base'^(-2j/d)`` in float32, and the two differ by at most ~1.3 ulp per angle (logits: <= 5e-6
on the tiny test models, 2e-4 on SmolLM2's, std 8, at 256 tokens).

A candidate is never claimed on its spelling alone. :func:`native_rope` builds transformers' own
rotary module from a copy of the config holding the candidate and requires its inverse
frequencies and attention scaling to equal ropelab's frequency plan (relative difference
<= 1e-6, i.e. float32 rounding) at the training length ``L`` -- and, for ``dynamic``, at ``2L + 1``
and ``4L`` as well, for ``longrope`` at ``L + 1`` and ``4L`` (its long factors). Where they differ the method is reported as not expressible. Known cases:

* ``dynamic-ntk`` when ``max_position_embeddings`` differs from ropelab's ``L`` (e.g. a config that
  declares ``original_max_position_embeddings``): transformers' ``dynamic`` rescales by
  ``max_position_embeddings``, ropelab by ``L``.
* ``dynamic``'s numbers agree for one forward pass over an unpadded batch. transformers keeps the
  grown angles in the module between calls (a later, shorter input above ``L`` reuses them) and
  takes ``n`` from the batch maximum, where ropelab recomputes per call and per row; the config
  cannot say more, so this difference stays (documented in :mod:`ropelab.integrations.hf`).

Everything else has no twin, and transformers alone would silently run plain RoPE on the weights:
``hope`` and its ablations (position-independent frequencies), ``nope`` (no rotation at all),
the windowed methods ``rerope`` / ``self-extend`` / ``hirope`` (two score sets merged by distance:
an attention function, not a rope type), and transform chains other than the ones above
(``pi+yarn``, a transform after ``yarn``, ...).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ropelab.pe import PositionEncoding, RotaryEncoding, parse_spec

#: relative tolerance on the inverse frequencies and the attention factor (float32 rounding)
RTOL = 1e-6


@dataclass(frozen=True)
class NativeRope:
    """The outcome of :func:`native_rope`: the config fields and rope type transformers needs to
    compute what ropelab computes, or ``fields=None`` and the reason it cannot."""

    fields: dict | None
    rope_type: str | None
    reason: str | None = None


# -- the config's rope fields (transformers 5.x and 4.x layouts) -------------------------------


def uses_rope_parameters(config) -> bool:
    """transformers 5.x keeps the rope settings in ``config.rope_parameters``; 4.x in
    ``config.rope_theta`` + ``config.rope_scaling``."""
    return "rope_parameters" in config.to_dict()


def rope_fields(config) -> dict:
    """A copy of the config fields that define its RoPE."""
    if uses_rope_parameters(config):
        return {"rope_parameters": copy.deepcopy(config.rope_parameters)}
    hf = config.to_dict()
    return {"rope_theta": hf.get("rope_theta"), "rope_scaling": copy.deepcopy(hf.get("rope_scaling"))}


def set_rope_fields(config, fields: dict) -> None:
    """Write fields from :func:`rope_fields` (or :func:`native_rope`) into ``config``."""
    for name, value in fields.items():
        setattr(config, name, copy.deepcopy(value))


def _fields_for(config, parameters: dict) -> dict:
    """``parameters`` (a flat 5.x ``rope_parameters`` dict, ``rope_theta`` included) in the
    layout of ``config``'s transformers version."""
    if uses_rope_parameters(config):
        return {"rope_parameters": dict(parameters)}
    rest = {k: v for k, v in parameters.items() if k != "rope_theta"}
    scaling = None if rest.get("rope_type") == "default" else {**rest, "type": rest["rope_type"]}
    return {"rope_theta": parameters["rope_theta"], "rope_scaling": scaling}


# -- candidates ---------------------------------------------------------------------------------

_WHY_NOT = {
    "hope": "this HoPE variant (or HoPE after a transform) makes frequencies position-independent in a way no "
    "transformers rope type expresses (plain hope exports as 'proportional')",
    "nope": "NoPE does not rotate queries and keys at all, and transformers' Llama always does",
    "window": "{name} scores near and far pairs with different rotations and merges the two score sets by "
    "distance; that is an attention function (ropelab's), not a rope type",
}


def _per_frequency(values: tuple[float, ...], head_dim: int) -> list[float]:
    """A longrope factor list with one value per frequency (a one-value list applies to all)."""
    return [float(v) for v in values] * (head_dim // 2) if len(values) == 1 else [float(v) for v in values]


def _candidate(encoding: PositionEncoding) -> tuple[dict | None, str | None]:
    """transformers rope parameters that may express ``encoding``, or ``(None, reason)``."""
    parts = parse_spec(encoding.spec)
    base, transforms = parts[0], parts[1:]
    name = base.info.name
    if encoding.is_windowed:
        return None, _WHY_NOT["window"].format(name=name)
    ctx = encoding.ctx
    d = ctx.head_dim
    scaled: dict | None = None
    if name == "hope" and isinstance(encoding, RotaryEncoding) and not transforms:
        # HoPE zeroes every frequency below 2 pi / L: a prefix of the (decreasing) frequencies rotates,
        # which is transformers' "proportional" when its count int(P d / 2) is the same; the angle
        # check in native_rope confirms it
        kept = int((encoding.base_plan.theta > 0).sum())
        scaled = {"rope_type": "proportional", "partial_rotary_factor": 2 * kept / d}
        if int(scaled["partial_rotary_factor"] * d // 2) != kept:
            return None, _WHY_NOT["hope"]
    elif name.startswith("hope"):
        return None, _WHY_NOT["hope"]
    elif name == "nope":
        return None, _WHY_NOT["nope"]
    elif name != "rope" or not isinstance(encoding, RotaryEncoding):
        return None, f"{name!r} is not a RoPE method transformers knows"
    theta = float(base.params.get("base") or ctx.rope_base)
    for part in transforms:
        transform, params = part.info.name, part.params
        if scaled is not None:
            return None, (
                f"{encoding.spec!r} applies {transform!r} after {scaled['rope_type']!r}; a transformers config holds "
                "one rope type (optionally after ntk's base change)"
            )
        if params.get("factor") == "auto":
            return (
                None,
                f"{encoding.spec!r}: pi with factor=auto changes with the input length; no transformers rope type does",
            )
        factor = float(params.get("factor", 1.0))
        if transform == "ntk":
            theta *= factor ** (d / (d - 2))
        elif transform == "pi":
            scaled = {"rope_type": "linear", "factor": factor}
        elif transform == "dynamic-ntk":
            scaled = {"rope_type": "dynamic", "factor": factor}
        elif transform == "proportional":
            scaled = {"rope_type": "proportional", "partial_rotary_factor": float(params["fraction"]), "factor": factor}
        elif transform == "llama3":
            scaled = {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": float(params["low_freq_factor"]),
                "high_freq_factor": float(params["high_freq_factor"]),
                "original_max_position_embeddings": ctx.train_len,
            }
        elif transform == "longrope":
            scaled = {
                "rope_type": "longrope",
                "short_factor": _per_frequency(params["short_factor"], d),
                "long_factor": _per_frequency(params["long_factor"], d),
                "factor": factor,
                "original_max_position_embeddings": ctx.train_len,
            }
            if params.get("attention_factor") is not None:
                scaled["attention_factor"] = float(params["attention_factor"])
        elif transform == "yarn":
            scaled = {
                "rope_type": "yarn",
                "factor": factor,
                "original_max_position_embeddings": ctx.train_len,
                "beta_fast": float(params["beta_fast"]),
                "beta_slow": float(params["beta_slow"]),
                "truncate": bool(params["truncate"]),
            }
            for key in ("attention_factor", "mscale", "mscale_all_dim"):
                if params.get(key) is not None:
                    scaled[key] = float(params[key])
        else:
            return None, f"transform {transform!r} has no transformers rope type"
    return {"rope_type": "default", **(scaled or {}), "rope_theta": theta}, None


def _hf_plan(
    rotary_class: type[nn.Module], config, length: int, layer_type: str | None = None
) -> tuple[torch.Tensor, float]:
    """transformers' inverse frequencies and attention scaling for an input of ``length`` tokens,
    from a fresh rotary module (dynamic types update themselves in the forward pass); those of
    ``layer_type`` for a module with per-layer-type rope (Gemma 3)."""
    module = rotary_class(config=config)  # a keyword: transformers 4.45-4.x take dim first
    extra = () if layer_type is None else (layer_type,)
    prefix = "" if layer_type is None else f"{layer_type}_"
    with torch.no_grad():
        module(torch.zeros(1), torch.tensor([[length - 1]]), *extra)
    inv_freq = getattr(module, f"{prefix}inv_freq")
    return inv_freq.detach().to(torch.float32).cpu(), float(getattr(module, f"{prefix}attention_scaling"))


def _lengths(rope_type: str, train_len: int) -> tuple[int, ...]:
    """The input lengths at which transformers' angles must equal ropelab's: the training length,
    and beyond it for the types that change with the length (``dynamic``; ``longrope`` switches to
    its long factors)."""
    if rope_type == "dynamic":
        return train_len, 2 * train_len + 1, 4 * train_len
    if rope_type == "longrope":
        return train_len, train_len + 1, 4 * train_len
    return (train_len,)


def _mismatch(rotary_class, trial, config, encoding: PositionEncoding, rope_type: str, layer_type=None) -> str | None:
    """Why transformers' ``rotary_class`` built from ``trial`` computes other angles or attention
    scaling than ``encoding`` at :func:`_lengths`, or ``None`` when they agree (:data:`RTOL`)."""
    train_len = encoding.ctx.train_len
    for length in _lengths(rope_type, train_len):
        try:
            theirs, scaling = _hf_plan(rotary_class, trial, length, layer_type)
        except Exception as error:  # an older transformers layout, a rejected config, ...
            return f"transformers' {rope_type!r} rope could not be built to check it ({error})"
        plan = encoding.plan(length)
        ours = plan.theta.to(torch.float32).cpu()
        same = theirs.shape == ours.shape and bool(((theirs - ours).abs() <= RTOL * ours.abs()).all())
        if not same or abs(scaling - plan.attention_factor) > RTOL * abs(plan.attention_factor):
            why = (
                "transformers' 'dynamic' rescales by max_position_embeddings="
                f"{getattr(config, 'max_position_embeddings', None)}, ropelab by the training length {train_len}"
                if rope_type == "dynamic"
                else f"transformers' {rope_type!r} rope computes different angles for this config"
            )
            return f"{why} (checked at {length} tokens)"
    return None


def _validated(config, fields: dict, rope_type) -> tuple[object, str | None]:
    """A copy of ``config`` holding ``fields``, and why its config class refuses them (or None)."""
    trial = copy.deepcopy(config)
    set_rope_fields(trial, fields)
    validate = getattr(trial, "validate_rope", None)
    if validate is not None:  # a config class that refuses the rope type (Phi-3: default / longrope only)
        try:
            validate()
        except Exception as error:
            model_type = getattr(config, "model_type", "this")
            return trial, f"{model_type} configs refuse rope type {rope_type!r} ({error})"
    return trial, None


def _keep_partial(parameters: dict, own: dict) -> dict:
    """``partial_rotary_factor`` is structural, not scaling (GPT-NeoX rotates a share of each head;
    Phi-3 configs require the key): kept from the config's own rope parameters."""
    if "partial_rotary_factor" in own and "partial_rotary_factor" not in parameters:
        return {**parameters, "partial_rotary_factor": own["partial_rotary_factor"]}
    return parameters


def native_rope(config, base_fields: dict, encoding: PositionEncoding, rotary_class: type[nn.Module]) -> NativeRope:
    """The rope fields with which ``transformers`` computes exactly ``encoding`` on ``config``'s
    model (see the module docstring), checked against transformers' own ``rotary_class``.

    ``base_fields``: the config's rope fields before any ropelab patch (the context the encoding
    was built from); the result replaces them."""
    parameters, reason = _candidate(encoding)
    if parameters is None:
        return NativeRope(None, None, reason)
    rope_type = parameters["rope_type"]
    parameters = _keep_partial(parameters, base_fields.get("rope_parameters") or {})
    fields = _fields_for(config, parameters)
    trial, refused = _validated(config, {**base_fields, **fields}, rope_type)
    reason = refused or _mismatch(rotary_class, trial, config, encoding, rope_type)
    return NativeRope(None, None, reason) if reason else NativeRope(fields, rope_type)


def native_rope_per_layer_type(
    config, base_fields: dict, encodings: dict[str, PositionEncoding], rotary_class: type[nn.Module]
) -> NativeRope:
    """:func:`native_rope` for a model with per-layer-type rope (Gemma 3, transformers 5.x):
    ``rope_parameters`` ``{layer type: parameters}``, each type checked against transformers' rotary
    module called for that type; ``rope_type`` is ``{layer type: rope type}``."""
    own = base_fields.get("rope_parameters") or {}
    parameters = {}
    for kind, encoding in encodings.items():
        candidate, reason = _candidate(encoding)
        if candidate is None:
            return NativeRope(None, None, f"{kind} layers: {reason}")
        parameters[kind] = _keep_partial(candidate, own.get(kind) or {})
    types = {kind: value["rope_type"] for kind, value in parameters.items()}
    fields = {"rope_parameters": parameters}
    trial, refused = _validated(config, fields, types)
    if refused:
        return NativeRope(None, None, refused)
    for kind, encoding in encodings.items():
        reason = _mismatch(rotary_class, trial, config, encoding, types[kind], kind)
        if reason:
            return NativeRope(None, None, f"{kind} layers: {reason}")
    return NativeRope(fields, types)
