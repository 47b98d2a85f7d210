"""Read a Hugging Face model directory (``config.json`` + ``*.safetensors`` [+ ``tokenizer.json``])
of the Llama family: Llama, Mistral, Qwen2, Qwen3, Phi-3, SmolLM (a Llama). Weights are read with
``safetensors`` (never pickle) and converted to float32.

:data:`SUPPORTED_MODEL_TYPES` and :func:`hf_rope` (the rotary fields of an HF config) are shared
with :mod:`ropelab.integrations.hf`, which patches ``transformers`` models of the same family and
of :data:`PATCH_ONLY_MODEL_TYPES` (families ropelab's own model does not implement; refused here
with one line). A config's rope type becomes a spec (:func:`native_method`), never silently plain
RoPE: Phi-3's ``longrope`` is ``rope+longrope:short_factor=.../...,long_factor=...,factor=F``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ropelab.core.checks import is_finite, is_int
from ropelab.core.errors import RopelabError
from ropelab.model.config import LIMITS as MODEL_LIMITS
from ropelab.model.config import ModelConfig
from ropelab.pe import canonical_spec, format_value

#: Hugging Face ``model_type`` -> architecture: the Llama-family models ropelab reads
#: (:func:`read_hf_dir`) and patches (:func:`ropelab.integrations.hf.patch`).
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "Llama (LlamaForCausalLM)",
    "mistral": "Mistral (MistralForCausalLM)",
    "qwen2": "Qwen2 (Qwen2ForCausalLM)",
    "qwen3": "Qwen3 (Qwen3ForCausalLM: per-head query/key RMSNorm)",
    "phi3": "Phi-3 (Phi3ForCausalLM: fused qkv and gate/up projections, split on load)",
}
#: Hugging Face ``model_type`` -> architecture: families :func:`ropelab.integrations.hf.patch` runs in
#: transformers (their rotary tables or attention function replaced) that ropelab's own model does not
#: implement (logit soft-capping, per-layer-type rope, LayerNorm, partial rotary...): :func:`read_hf_dir`
#: refuses them with one line naming ``hf.patch``.
PATCH_ONLY_MODEL_TYPES: dict[str, str] = {
    "gemma2": "Gemma 2 (Gemma2ForCausalLM)",
    "gemma3_text": "Gemma 3 (Gemma3ForCausalLM: per-layer-type rope)",
    "starcoder2": "StarCoder2 (Starcoder2ForCausalLM)",
    "olmo2": "OLMo 2 (Olmo2ForCausalLM)",
    "gpt_neox": "GPT-NeoX / Pythia (GPTNeoXForCausalLM: partial rotary)",
}
#: Hugging Face rope types that map onto ropelab methods.
ROPE_TYPES = {
    "default": None,
    "linear": "pi",
    "dynamic": "dynamic-ntk",
    "yarn": "yarn",
    "llama3": "llama3",
    "proportional": "proportional",
    "longrope": "longrope",
}
#: the rope parameters each method reads (besides its factor)
ROPE_KEYS = {
    "yarn": {"beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"},
    "llama3": {"low_freq_factor", "high_freq_factor"},
    "proportional": {"partial_rotary_factor"},
    "longrope": {"short_factor", "long_factor", "attention_factor"},
}
#: HF rope parameter -> ropelab parameter, where the names differ
ROPE_NAMES = {"partial_rotary_factor": "fraction"}


@dataclass(frozen=True)
class HFRope:
    """The rotary settings of a Hugging Face Llama-family config (see :func:`hf_rope`)."""

    base: float  # rope_theta
    rope_type: str  # HF's rope type: "default", "linear", "dynamic", "yarn", ...
    parameters: dict  # rope_scaling (transformers 4.x) updated by rope_parameters (5.x)
    train_len: int  # original_max_position_embeddings when given, else max_position_embeddings
    head_dim: int
    n_heads: int
    max_len: int = 0  # max_position_embeddings (transformers' longrope derives its factor from it)
    rotary_dim: int = 0  # the channels that rotate: head_dim, or a partial_rotary_factor share of it


#: the HF name of each bounded field and the ropelab field whose bound it takes
#: (:data:`ropelab.model.config.LIMITS`: a larger value is a corrupt or hostile file, refused before
#: anything is allocated)
_HF_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "intermediate_size": "hidden_dim",
    "head_dim": "head_dim",
    "max_position_embeddings": "train_len",
    "original_max_position_embeddings": "train_len",
}
LIMITS = {hf: MODEL_LIMITS[ours] for hf, ours in _HF_FIELDS.items()}
_REQUIRED = object()


def _int(mapping: Mapping, key: str, source: str, default=_REQUIRED) -> int:
    """A positive integer field within :data:`LIMITS`; one clear error otherwise."""
    value = mapping.get(key)
    if value is None:
        if default is _REQUIRED:
            raise RopelabError(f"{source}: {key} is missing")
        return default
    if not is_int(value):
        raise RopelabError(f"{source}: {key} must be an integer, got {value!r}")
    high = LIMITS.get(key, 1 << 31)
    if not 1 <= value <= high:
        raise RopelabError(f"{source}: {key}={value} is out of range (1 to {high})")
    return value


def _float(mapping: Mapping, key: str, source: str, default: float) -> float:
    """A positive finite number field; one clear error otherwise."""
    value = mapping.get(key)
    if value is None:
        return default
    if not is_finite(value) or value <= 0:  # a 60-digit integer is not a finite float
        raise RopelabError(f"{source}: {key} must be a positive number, got {value!r}")
    return float(value)


def _mapping(hf: Mapping, key: str, source: str) -> Mapping:
    value = hf.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RopelabError(f"{source}: {key} must be a JSON object, got {value!r}")
    return value


def hf_rope(hf: Mapping, source: str = "config.json", partial_rotary: bool = False) -> HFRope:
    """The rotary fields of an HF config -- a ``config.json`` or ``PretrainedConfig.to_dict()``.

    The base is ``rope_parameters["rope_theta"]`` (transformers 5.x) or ``rope_theta`` (4.x),
    default 10000; the rope type and its arguments come from ``rope_parameters`` / ``rope_scaling``;
    ``head_dim`` is the config's or ``hidden_size // num_attention_heads``. A
    ``partial_rotary_factor`` (GPT-NeoX's ``rotary_pct``) other than 1 is refused (ropelab rotates
    the whole head) except for rope type ``proportional``, which zeroes the unrotated frequencies of
    a whole head, and where ``partial_rotary`` says the caller rotates only the first
    ``rotary_dim = int(head_dim * factor)`` channels, as transformers does (GPT-NeoX under
    ``hf.patch``); so is any field of the wrong type or out of range (:data:`LIMITS`). Errors
    start with ``source``.
    """
    rope = {**_mapping(hf, "rope_scaling", source), **_mapping(hf, "rope_parameters", source)}
    outer = _float(hf, "partial_rotary_factor", source, _float(hf, "rotary_pct", source, 1.0))
    partial = _float(rope, "partial_rotary_factor", source, outer)
    proportional = rope.get("rope_type", rope.get("type")) == "proportional"  # p-RoPE: zeros, whole head
    if proportional:
        rope = {**rope, "partial_rotary_factor": partial}
    if partial != 1.0 and not proportional and not partial_rotary:
        raise RopelabError(
            f"{source}: partial_rotary_factor={partial:g} is not supported (ropelab rotates the whole head)"
        )
    n_heads = _int(hf, "num_attention_heads", source)
    head_dim = _int(hf, "head_dim", source, default=None)
    if head_dim is None:
        hidden = _int(hf, "hidden_size", source)
        if hidden % n_heads:
            raise RopelabError(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}")
        head_dim = hidden // n_heads
    rotary_dim = head_dim if proportional or partial == 1.0 else int(head_dim * partial)
    if not (2 <= rotary_dim <= head_dim and rotary_dim % 2 == 0):
        raise RopelabError(
            f"{source}: partial_rotary_factor={partial:g} of head_dim {head_dim} rotates {rotary_dim} channels; "
            "ropelab needs an even number from 2 to head_dim"
        )
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if not isinstance(rope_type, str):
        raise RopelabError(f"{source}: rope_type must be a string, got {rope_type!r}")
    train_len = _int(rope, "original_max_position_embeddings", source, default=None)
    max_len = _int(hf, "max_position_embeddings", source, default=train_len or 2048)
    return HFRope(
        base=_float(rope, "rope_theta", source, _float(hf, "rope_theta", source, 10000.0)),
        rope_type=rope_type,
        parameters=rope,
        train_len=train_len or max_len,
        head_dim=head_dim,
        n_heads=n_heads,
        max_len=max_len,
        rotary_dim=rotary_dim,
    )


#: the entry :func:`ropelab.integrations.hf.patch` writes into an HF config: the ropelab method,
#: its train length and the config's own rope fields (``original``)
ROPELAB_ENTRY = "ropelab"


def unpatched(hf: Mapping) -> tuple[dict, dict | None]:
    """``hf`` with the rope fields it had before a ropelab patch (its ``ropelab`` entry's
    ``original``), and that entry (None when the config was never patched)."""
    hf = dict(hf)
    entry = hf.pop(ROPELAB_ENTRY, None)
    if not isinstance(entry, dict):
        return hf, None
    if isinstance(entry.get("original"), dict):
        hf.update(entry["original"])
    return hf, entry


def hf_config_to_ropelab(hf: Mapping, source: str = "config.json") -> ModelConfig:
    """ropelab's config of an HF Llama/Mistral/Qwen2 ``config.json``; a directory saved from a
    model patched by :func:`ropelab.integrations.hf.patch` runs its recorded method."""
    hf, entry = unpatched(hf)
    config = _base_config(hf, source)
    if entry is None or not isinstance(entry.get("method"), str):
        return config
    train_len = entry.get("train_len", config.train_len)
    if not (is_int(train_len) and train_len >= 1):
        raise RopelabError(f"{source}: ropelab.train_len must be a positive integer, got {train_len!r}")
    return dataclasses.replace(config, pe=canonical_spec(entry["method"]), train_len=train_len)


def native_method(rope: HFRope, source: str = "config.json") -> str:
    """The ropelab spec of an HF config's own rope (its rope type and parameters), e.g.
    ``llama3:factor=8.0,...`` for Llama 3.1; one error for an unsupported type or a bad parameter."""
    if rope.rope_type not in ROPE_TYPES:
        raise RopelabError(
            f"{source}: rope type {rope.rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    pe = method = ROPE_TYPES[rope.rope_type]
    parameters = rope.parameters
    if method == "longrope":
        parameters = _longrope_parameters(rope, source)
    if method is None:
        pe = "rope"
    else:
        keys = {"factor"} | ROPE_KEYS.get(method, set())
        given = sorted(k for k in keys if parameters.get(k) is not None)
        args = ",".join(f"{ROPE_NAMES.get(k, k)}={format_value(parameters[k])}" for k in given)
        if args:
            pe = f"{method}:{args}"
    try:  # a bad rope parameter is one error here, before any weight is read
        canonical_spec(pe)
    except RopelabError as error:
        raise RopelabError(f"{source}: rope parameters give no valid method ({error})") from None
    return pe


def _longrope_parameters(rope: HFRope, source: str) -> dict:
    """transformers' ``longrope`` parameters as ropelab's: both factor lists required (as lists of
    numbers: a string would be read as a spec), and ``factor``, when the config has none,
    transformers' ``max_position_embeddings / original_max_position_embeddings`` (1 at most: it
    only sets the attention factor, which is 1 for any factor <= 1)."""
    parameters = dict(rope.parameters)
    for key in ("short_factor", "long_factor"):
        value = parameters.get(key)
        if not isinstance(value, (list, tuple)):
            raise RopelabError(
                f"{source}: rope type 'longrope' is not supported without its short_factor and long_factor lists "
                f"({key} is {value!r})"
            )
        if not all(is_finite(item) for item in value):
            raise RopelabError(f"{source}: longrope's {key} must be a list of numbers, got {value!r}"[:300])
    factor = parameters.get("factor")
    if factor is None:
        factor = rope.max_len / rope.train_len
    if is_finite(factor) and factor < 1:
        factor = 1.0
    parameters["factor"] = factor
    return parameters


def _base_config(hf: Mapping, source: str) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type in PATCH_ONLY_MODEL_TYPES:
        raise RopelabError(
            f"{source}: {model_type} runs in transformers via ropelab.integrations.hf.patch; "
            "ropelab's own model does not implement it"
        )
    if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
        raise RopelabError(
            f"{source}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    rope = hf_rope(hf, source)
    pe = native_method(rope, source)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise RopelabError(f"{source}: hidden_act {act!r} is not supported (ropelab's MLP is SwiGLU with silu)")
    window = hf.get("sliding_window")
    longest = _int(hf, "max_position_embeddings", source, default=rope.train_len)
    if window is not None and hf.get("use_sliding_window", True) and _int(hf, "sliding_window", source) < longest:
        raise RopelabError(
            f"{source}: sliding_window={window} (attention limited to the last {window} tokens) is not supported: "
            "ropelab's model attends to every earlier token, so results would differ beyond it"
        )
    n_kv_heads = _int(hf, "num_key_value_heads", source, default=rope.n_heads)
    if rope.n_heads % n_kv_heads:
        raise RopelabError(f"{source}: num_attention_heads {rope.n_heads} is not a multiple of num_key_value_heads")
    return ModelConfig(
        vocab_size=_int(hf, "vocab_size", source),
        dim=_int(hf, "hidden_size", source),
        n_layers=_int(hf, "num_hidden_layers", source),
        n_heads=rope.n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=rope.head_dim,
        hidden_dim=_int(hf, "intermediate_size", source),
        norm_eps=_float(hf, "rms_norm_eps", source, 1e-6),
        rope_base=rope.base,
        train_len=rope.train_len,
        qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        pe=pe,
        name=str(hf.get("_name_or_path") or model_type),
    )


def read_hf_dir(directory: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        hf = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise RopelabError(f"{directory}: no config.json; not a Hugging Face model directory") from None
    except (ValueError, RecursionError) as error:  # bad JSON, bad UTF-8, nesting too deep
        raise RopelabError(f"{config_path}: not valid JSON ({type(error).__name__})") from None
    if not isinstance(hf, dict):
        raise RopelabError(f"{config_path}: expected a JSON object")
    config = hf_config_to_ropelab(hf, str(config_path))
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise RopelabError(f"{directory}: no *.safetensors weights (pickled .bin weights are not loaded)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as error:
            raise RopelabError(f"{file}: cannot be read ({error}); truncated or corrupt") from None
        for name, tensor in tensors.items():
            key = name.removeprefix("model.")
            if key.endswith("rotary_emb.inv_freq"):
                continue
            state[key] = tensor.to(torch.float32)
    state = unfused(state, config)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    metadata = {"architecture": hf["model_type"], "bos_id": hf.get("bos_token_id"), "eos_id": hf.get("eos_token_id")}
    if isinstance(metadata["eos_id"], list):
        metadata["eos_id"] = metadata["eos_id"][0]
    return config, state, metadata


def unfused(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """``state`` (HF names minus ``model.``) with fused projections split into ropelab's: Phi-3's
    ``self_attn.qkv_proj`` (rows: queries, keys, values) and ``mlp.gate_up_proj`` (gate, then up).
    Other states pass through unchanged."""
    out = {}
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    for name, tensor in state.items():
        prefix, _, last = name.rpartition(".qkv_proj.")
        if prefix:
            for part, rows in zip(("q_proj", "k_proj", "v_proj"), tensor.split((q, kv, kv))):
                out[f"{prefix}.{part}.{last}"] = rows
            continue
        prefix, _, last = name.rpartition(".gate_up_proj.")
        if prefix:
            gate, up = tensor.chunk(2, dim=0)
            out[f"{prefix}.gate_proj.{last}"], out[f"{prefix}.up_proj.{last}"] = gate, up
            continue
        out[name] = tensor
    return out


def ropelab_to_hf_config(config: ModelConfig) -> dict:
    """The ``config.json`` of a Hugging Face ``transformers`` model with ``config``'s architecture:
    Qwen2 when q/k/v carry biases, Llama otherwise. Plain RoPE only: the model's own position
    method must be ``rope`` with the rotate-half layout (HF's); anything else is refused, since
    the HF model would silently compute something different."""
    if config.pe != "rope" or config.rope_layout != "half":
        raise RopelabError(
            f"only rope with the half layout has a Hugging Face twin; this model has pe={config.pe!r}, "
            f"rope_layout={config.rope_layout!r}"
        )
    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_base,
        max_position_embeddings=config.train_len,
        tie_word_embeddings=config.tie_embeddings,
        hidden_act="silu",
    )
    if config.qk_norm:
        return {"model_type": "qwen3", "attention_bias": config.qkv_bias, **common}
    if config.qkv_bias:
        return {"model_type": "qwen2", **common}
    return {"model_type": "llama", "attention_bias": False, "mlp_bias": False, **common}


def to_hf_model(model, attn_implementation: str = "sdpa"):
    """A ``transformers`` ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM`` holding ``model``'s weights
    (float32, eval mode): the same network in HF's implementation, for parity checks and
    benchmarks. The parameter names are the same in both (``model.`` prefix aside)."""
    import transformers

    hf = ropelab_to_hf_config(model.config)
    kind = hf.pop("model_type")
    config_class, model_class = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }.get(kind, (transformers.LlamaConfig, transformers.LlamaForCausalLM))
    hf_config = config_class(**hf)
    hf_config._attn_implementation = attn_implementation
    hf_model = model_class(hf_config)
    state = {
        (name if name.startswith("lm_head.") else f"model.{name}"): tensor
        for name, tensor in model.state_dict().items()
    }
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not (model.config.tie_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise RopelabError(
            f"weights do not map onto {model_class.__name__}: missing {missing}, unexpected {unexpected}"
        )
    return hf_model.float().eval()
