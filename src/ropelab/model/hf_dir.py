"""Read a Hugging Face model directory (``config.json`` + ``*.safetensors`` [+ ``tokenizer.json``])
of the Llama family: Llama, Mistral, Qwen2, SmolLM (a Llama). Weights are read with
``safetensors`` (never pickle) and converted to float32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ropelab.errors import RopelabError
from ropelab.model.config import ModelConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
#: Hugging Face rope types that map onto ropelab methods.
ROPE_TYPES = {"default": None, "linear": "pi", "dynamic": "dynamic-ntk", "yarn": "yarn"}


def _rope_settings(hf: dict) -> tuple[float, dict]:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    base = params.get("rope_theta") or hf.get("rope_theta") or 10000.0
    return float(base), {**scaling, **params}


def hf_config_to_ropelab(hf: dict, source: str = "config.json") -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RopelabError(
            f"{source}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    base, rope = _rope_settings(hf)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise RopelabError(f"{source}: rope type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    pe = "rope"
    train_len = int(hf.get("max_position_embeddings", 2048))
    if ROPE_TYPES[rope_type]:
        train_len = int(rope.get("original_max_position_embeddings") or train_len)
        keys = {"factor"} | (
            {"beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"} if rope_type == "yarn" else set()
        )
        args = ",".join(f"{k}={rope[k]}" for k in sorted(keys) if rope.get(k) is not None)
        pe = f"{ROPE_TYPES[rope_type]}:{args}" if args else ROPE_TYPES[rope_type]
    n_heads = int(hf["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        dim=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // n_heads),
        hidden_dim=int(hf["intermediate_size"]),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_base=base,
        train_len=train_len,
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
