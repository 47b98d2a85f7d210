"""Read a Hugging Face model directory (``config.json`` + ``*.safetensors`` [+ ``tokenizer.json``])
of the Llama family: Llama, Mistral, Qwen2, SmolLM (a Llama). Weights are read with
``safetensors`` (never pickle) and converted to float32.

:data:`SUPPORTED_MODEL_TYPES` and :func:`hf_rope` (the rotary fields of an HF config) are shared
with :mod:`ropelab.integrations.hf`, which patches ``transformers`` models of the same family.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ropelab.core.errors import RopelabError
from ropelab.model.config import ModelConfig

#: Hugging Face ``model_type`` -> architecture: the Llama-family models ropelab reads
#: (:func:`read_hf_dir`) and patches (:func:`ropelab.integrations.hf.patch`).
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "Llama (LlamaForCausalLM)",
    "mistral": "Mistral (MistralForCausalLM)",
    "qwen2": "Qwen2 (Qwen2ForCausalLM)",
}
#: Hugging Face rope types that map onto ropelab methods.
ROPE_TYPES = {"default": None, "linear": "pi", "dynamic": "dynamic-ntk", "yarn": "yarn"}


@dataclass(frozen=True)
class HFRope:
    """The rotary settings of a Hugging Face Llama-family config (see :func:`hf_rope`)."""

    base: float  # rope_theta
    rope_type: str  # HF's rope type: "default", "linear", "dynamic", "yarn", ...
    parameters: dict  # rope_scaling (transformers 4.x) updated by rope_parameters (5.x)
    train_len: int  # original_max_position_embeddings when given, else max_position_embeddings
    head_dim: int
    n_heads: int


def hf_rope(hf: Mapping, source: str = "config.json") -> HFRope:
    """The rotary fields of an HF config -- a ``config.json`` or ``PretrainedConfig.to_dict()``.

    The base is ``rope_parameters["rope_theta"]`` (transformers 5.x) or ``rope_theta`` (4.x),
    default 10000; the rope type and its arguments come from ``rope_parameters`` / ``rope_scaling``;
    ``head_dim`` is the config's or ``hidden_size // num_attention_heads``. A
    ``partial_rotary_factor`` other than 1 is refused (ropelab rotates the whole head);
    errors start with ``source``.
    """
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    rope = {**(scaling if isinstance(scaling, Mapping) else {}), **(params if isinstance(params, Mapping) else {})}
    partial = float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0)
    if partial != 1.0:
        raise RopelabError(
            f"{source}: partial_rotary_factor={partial:g} is not supported (ropelab rotates the whole head)"
        )
    n_heads = int(hf["num_attention_heads"])
    return HFRope(
        base=float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0),
        rope_type=rope.get("rope_type", rope.get("type", "default")),
        parameters=rope,
        train_len=int(rope.get("original_max_position_embeddings") or hf.get("max_position_embeddings") or 2048),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // n_heads),
        n_heads=n_heads,
    )


def hf_config_to_ropelab(hf: Mapping, source: str = "config.json") -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RopelabError(
            f"{source}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    rope = hf_rope(hf, source)
    if rope.rope_type not in ROPE_TYPES:
        raise RopelabError(
            f"{source}: rope type {rope.rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    pe = method = ROPE_TYPES[rope.rope_type]
    if method is None:
        pe = "rope"
    else:
        keys = {"factor"} | (
            {"beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"} if method == "yarn" else set()
        )
        args = ",".join(f"{k}={rope.parameters[k]}" for k in sorted(keys) if rope.parameters.get(k) is not None)
        if args:
            pe = f"{method}:{args}"
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        dim=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=rope.n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or rope.n_heads),
        head_dim=rope.head_dim,
        hidden_dim=int(hf["intermediate_size"]),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_base=rope.base,
        train_len=rope.train_len,
        qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
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
    except json.JSONDecodeError as error:
        raise RopelabError(f"{config_path}: not valid JSON ({error})") from None
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
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    metadata = {"architecture": hf["model_type"], "bos_id": hf.get("bos_token_id"), "eos_id": hf.get("eos_token_id")}
    if isinstance(metadata["eos_id"], list):
        metadata["eos_id"] = metadata["eos_id"][0]
    return config, state, metadata


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
    if config.qkv_bias:
        return {"model_type": "qwen2", **common}
    return {"model_type": "llama", "attention_bias": False, "mlp_bias": False, **common}


def to_hf_model(model, attn_implementation: str = "sdpa"):
    """A ``transformers`` ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` holding ``model``'s weights
    (float32, eval mode): the same network in HF's implementation, for parity checks and
    benchmarks. The parameter names are the same in both (``model.`` prefix aside)."""
    import transformers

    hf = ropelab_to_hf_config(model.config)
    kind = hf.pop("model_type")
    config_class = transformers.Qwen2Config if kind == "qwen2" else transformers.LlamaConfig
    model_class = transformers.Qwen2ForCausalLM if kind == "qwen2" else transformers.LlamaForCausalLM
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
