"""Read a llama.cpp GGUF file (``llama`` and ``qwen2`` architectures) into ropelab's model.

Tensors are dequantised to float32 by the ``gguf`` package (Q4_0, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0,
F16, F32 and the rest it supports). llama.cpp's converter permutes the rows of the ``llama``
architecture's Q and K projections into the interleaved rotary layout
(``convert_hf_to_gguf.py``: ``w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2)``); we undo that
permutation so the weights are in Hugging Face's rotate-half layout, the model default. ``qwen2``
uses NeoX-style (rotate-half) rope in llama.cpp and is stored unpermuted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ropelab.core.errors import RopelabError
from ropelab.model.config import ModelConfig
from ropelab.pretrained.tokenizer import Tokenizer

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise RopelabError("reading GGUF files needs the 'gguf' package: pip install gguf") from None
    return gguf


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def undo_llama_permutation(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation: interleaved pairs -> rotate-half per head."""
    head_dim = weight.shape[0] // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def read_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Return (config, float32 state dict with ropelab names, metadata) for a GGUF file."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        raise RopelabError(f"{path}: GGUF file not found")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # the reader raises ValueError/struct errors on damaged files
        raise RopelabError(f"{path}: not a readable GGUF file ({error})") from None
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise RopelabError(
            f"{path}: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def meta(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    n_heads = int(meta("attention.head_count"))
    n_kv_heads = int(meta("attention.head_count_kv", n_heads))
    dim = int(meta("embedding_length"))
    tensors = {t.name: t for t in reader.tensors}
    vocab = int(tensors["token_embd.weight"].shape[-1])
    config = ModelConfig(
        vocab_size=vocab,
        dim=dim,
        n_layers=int(meta("block_count")),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=int(meta("attention.key_length", dim // n_heads)),
        hidden_dim=int(meta("feed_forward_length")),
        norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(meta("rope.freq_base", 10000.0)),
        train_len=int(meta("context_length")),
        qkv_bias="blk.0.attn_q.bias" in tensors,
        tie_embeddings="output.weight" not in tensors,
        pe="rope",
        name=str(_field(reader, "general.name", path.stem)),
    )
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name in _GLOBAL_NAMES:
            target = _GLOBAL_NAMES[name]
        else:
            parts = name.split(".", 2)
            if parts[0] != "blk" or parts[2] not in _LAYER_NAMES:
                continue  # e.g. rope_freqs: ropelab computes angles itself
            target = f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(s) for s in reversed(tensor.shape))  # GGUF lists the fastest dimension first
        data = np.asarray(data, dtype=np.float32).reshape(shape)
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
            data = undo_llama_permutation(data, n_heads)
        elif arch == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
            data = undo_llama_permutation(data, n_kv_heads)
        state[target] = torch.from_numpy(np.array(data, dtype=np.float32, order="C", copy=True))
    metadata = {
        "architecture": arch,
        "bos_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "name": config.name,
        "file_type": _field(reader, "general.file_type"),
    }
    return config, state, metadata


def gguf_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer embedded in a GGUF file, converted by ``transformers``' GGUF support."""
    path = Path(path)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise RopelabError("converting a GGUF tokenizer needs transformers: pip install 'transformers>=4.45'") from None
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return Tokenizer(hf.backend_tokenizer, bos_id=hf.bos_token_id, eos_id=hf.eos_token_id, name=path.name)
