"""The ``transformers`` model families :func:`ropelab.integrations.hf.patch` runs, and where each
keeps its rotary module(s), attention layers and rope settings.

Two sets (:mod:`ropelab.pretrained.hf_dir`): :data:`~ropelab.pretrained.hf_dir.SUPPORTED_MODEL_TYPES`
(Llama, Mistral, Qwen2, Qwen3, Phi-3: ropelab's own model loads them too) and
:data:`~ropelab.pretrained.hf_dir.PATCH_ONLY_MODEL_TYPES` (Gemma 2, Gemma 3, StarCoder2, OLMo 2,
GPT-NeoX: they run only in transformers, with ropelab's rotary tables or attention function).
What differs between them, for the patch:

* the decoder body: ``model.model`` (``model.gpt_neox`` for GPT-NeoX), or the bare ``*Model``;
* the attention module of a layer: ``layer.self_attn`` (``layer.attention`` for GPT-NeoX);
* per-layer-type rope (Gemma 3 with transformers 5.x): ``rope_parameters`` holds one entry per
  layer type (``sliding_attention`` with the local base, ``full_attention`` with the global base
  and its scaling) and the one ``model.rotary_emb`` is called as ``rotary_emb(x, position_ids,
  layer_type)``; :func:`layer_ropes` gives each type's settings;
* partial rotary (GPT-NeoX's ``rotary_pct`` / ``partial_rotary_factor``): only the first
  ``rotary_dim = int(head_dim * factor)`` channels of each head rotate, and transformers' tables
  are ``rotary_dim`` wide (:data:`PARTIAL_ROTARY`).

Logit soft-capping, sliding windows, norms and biases stay transformers' own code.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ropelab.core.errors import RopelabError
from ropelab.pretrained.hf_dir import PATCH_ONLY_MODEL_TYPES, SUPPORTED_MODEL_TYPES

#: every family ``hf.patch`` accepts: ropelab's own (Llama-like) ones, then the patch-only ones
PATCH_MODEL_TYPES: dict[str, str] = {**SUPPORTED_MODEL_TYPES, **PATCH_ONLY_MODEL_TYPES}
#: families that rotate only a share of each head (``partial_rotary_factor``)
PARTIAL_ROTARY = frozenset({"gpt_neox"})
#: the attribute names of the decoder body (on a ``*ForCausalLM``) and of a layer's attention module
BODY_NAMES = ("model", "gpt_neox")
ATTENTION_NAMES = ("self_attn", "attention")
#: the key of the one rope of a model without per-layer-type rope
ALL_LAYERS = "*"


def model_type(model: nn.Module) -> str:
    """The ``model_type`` of a model ``hf.patch`` supports, or one :class:`RopelabError`."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in PATCH_MODEL_TYPES:
        what = f"model_type {kind!r}" if kind else "an object without a transformers config"
        supported = ", ".join(PATCH_MODEL_TYPES.values())
        raise RopelabError(
            f"hf.patch supports Hugging Face {supported} models only; got {what} ({type(model).__name__})"
        )
    return kind


def body(model: nn.Module) -> nn.Module:
    """The decoder body (``LlamaModel``, ``GPTNeoXModel``...) of a supported model."""
    kind = model_type(model)
    for candidate in (*(getattr(model, name, None) for name in BODY_NAMES), model):
        if isinstance(candidate, nn.Module) and isinstance(getattr(candidate, "layers", None), nn.ModuleList):
            return candidate
    raise RopelabError(
        f"hf.patch: {type(model).__name__} has no decoder layers where a {kind} model keeps them "
        f"({' or '.join(f'model.{name}.layers' for name in BODY_NAMES)} or model.layers)"
    )


def attention(layer: nn.Module) -> nn.Module | None:
    """A decoder layer's attention module."""
    for name in ATTENTION_NAMES:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(layer type, attention module)`` for every decoder layer: the layer type is
    ``config.layer_types[i]`` on a model with per-layer-type rope, else :data:`ALL_LAYERS`."""
    decoder = body(model)
    types = rope_layer_types(model.config.to_dict())
    out = []
    for i, layer in enumerate(decoder.layers):
        module = attention(layer)
        if module is None:
            raise RopelabError(f"hf.patch: layer {i} of {type(model).__name__} has no attention module")
        out.append((types[i] if types else ALL_LAYERS, module))
    return out


def rotary_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every ``(owner, "rotary_emb")`` holding a rotary module: the model-level one (>= 4.45) and
    the per-layer ones (< 4.48)."""
    decoder = body(model)
    owners = [decoder] + [attention(layer) for layer in decoder.layers]
    slots = [(owner, "rotary_emb") for owner in owners if isinstance(getattr(owner, "rotary_emb", None), nn.Module)]
    if not slots:
        raise RopelabError(
            f"hf.patch: found no rotary embedding module in {type(model).__name__} "
            "(looked for model.rotary_emb and each layer's attention.rotary_emb); "
            "is this transformers version older than 4.38?"
        )
    return slots


def rope_layer_types(hf: Mapping) -> list[str] | None:
    """``config.layer_types`` when the config's ``rope_parameters`` holds one entry per layer type
    (Gemma 3, transformers 5.x), else ``None`` (one rope for every layer)."""
    types = hf.get("layer_types")
    parameters = hf.get("rope_parameters")
    if not (isinstance(types, list) and types and isinstance(parameters, Mapping)):
        return None
    if not all(isinstance(parameters.get(kind), Mapping) for kind in set(types)):
        return None
    return list(types)


def layer_ropes(hf: Mapping) -> dict[str, dict]:
    """The config (a ``to_dict()``) as seen by each layer type's rope: ``{layer type: config with
    that type's rope_parameters}``, or ``{ALL_LAYERS: config}`` for a model with one rope. A Gemma 3
    config without per-layer-type ``rope_parameters`` (transformers 4.x: ``rope_local_base_freq``)
    is refused, since its local layers would silently take the global base."""
    types = rope_layer_types(hf)
    if types is None:
        if hf.get("model_type") == "gemma3_text":
            raise RopelabError(
                "hf.patch: this Gemma 3 config has no per-layer-type rope_parameters (transformers < 5 keeps the "
                "local layers' base in rope_local_base_freq); hf.patch supports Gemma 3 with transformers >= 5"
            )
        return {ALL_LAYERS: dict(hf)}
    return {kind: {**hf, "rope_parameters": dict(hf["rope_parameters"][kind])} for kind in sorted(set(types))}
