"""Read a llama.cpp GGUF file (``llama`` and ``qwen2`` architectures) into ropelab's model.

Tensors are dequantised to float32 by the ``gguf`` package (Q4_0, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0,
F16, F32 and the rest it supports). llama.cpp's converter permutes the rows of the ``llama``
architecture's Q and K projections into the interleaved rotary layout
(``convert_hf_to_gguf.py``: ``w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2)``); we undo that
permutation so the weights are in Hugging Face's rotate-half layout, the model default. ``qwen2``
uses NeoX-style (rotate-half) rope in llama.cpp and is stored unpermuted.

The metadata is checked before anything is dequantised: a missing or mistyped key is one
:class:`RopelabError` naming it, and the model config goes through :class:`ModelConfig`'s checks
(ranges, memory). The tokenizer is read from the GGUF file alone: whatever lies in its folder
(another model's ``tokenizer.json``, a ``tokenizer_config.json`` asking to run custom code) is
never looked at (:func:`gguf_tokenizer`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ropelab.core.checks import is_int, is_real
from ropelab.core.errors import RopelabError
from ropelab.model.config import ModelConfig, shown
from ropelab.pretrained.gguf_header import check_gguf_header
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


_REQUIRED = object()


def _field(reader, key: str, default=None):
    """The raw value of metadata ``key`` (``default`` when absent); undecodable text is an error."""
    field = reader.fields.get(key)
    if field is None:
        return default
    try:
        return field.contents()
    except (UnicodeDecodeError, ValueError, IndexError, TypeError) as error:
        raise RopelabError(f"GGUF metadata {key} is unreadable ({error})") from None


def _typed(reader, key: str, kind: type, default=_REQUIRED):
    """Metadata ``key`` as a ``kind`` (int: an integer; float: a finite number; str); one
    :class:`RopelabError` naming the key when it is missing (and required) or of another type."""
    value = _field(reader, key)
    if value is None:
        if default is _REQUIRED:
            raise RopelabError(f"GGUF metadata {key} is missing")
        return default
    if kind is int and is_int(value):
        return value
    if kind is float and is_real(value):
        if math.isfinite(value):  # GGUF numbers are at most 64 bits: no overflow
            return float(value)
    if kind is str and isinstance(value, str):
        return value
    expected = {int: "an integer", float: "a finite number", str: "a string"}[kind]
    raise RopelabError(f"GGUF metadata {key} must be {expected}, got {shown(value)}")


def undo_llama_permutation(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation: interleaved pairs -> rotate-half per head."""
    head_dim = weight.shape[0] // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _reader(path: Path):
    gguf = _gguf()
    if not path.is_file():
        raise RopelabError(f"{path}: GGUF file not found")
    check_gguf_header(path)  # a damaged header names its field
    try:
        return gguf.GGUFReader(str(path))
    except Exception as error:  # the reader raises ValueError/struct errors on damaged files
        raise RopelabError(f"{path}: not a readable GGUF file ({error})") from None


def read_gguf_config(path: str | os.PathLike) -> ModelConfig:
    """The model config of a GGUF file, its metadata checked; nothing is dequantised (cheap)."""
    path = Path(path)
    reader = _reader(path)  # its errors name the file already
    try:
        return _config(reader, path)[0]
    except RopelabError as error:
        raise RopelabError(f"{path}: {error}") from None


def read_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Return (config, float32 state dict with ropelab names, metadata) for a GGUF file."""
    gguf = _gguf()
    path = Path(path)
    reader = _reader(path)
    try:
        config, tensors, metadata = _config(reader, path)
    except RopelabError as error:
        raise RopelabError(f"{path}: {error}") from None
    arch = metadata["architecture"]
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name in _GLOBAL_NAMES:
            target = _GLOBAL_NAMES[name]
        else:
            parts = name.split(".", 2)
            if len(parts) != 3 or parts[0] != "blk" or parts[2] not in _LAYER_NAMES or not parts[1].isdigit():
                continue  # e.g. rope_freqs: ropelab computes angles itself
            target = f"layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}"
        try:
            data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            shape = tuple(int(s) for s in reversed(tensor.shape))  # GGUF lists the fastest dimension first
            data = np.asarray(data, dtype=np.float32).reshape(shape)
            if arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
                data = undo_llama_permutation(data, config.n_heads)
            elif arch == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
                data = undo_llama_permutation(data, config.n_kv_heads)
        except (ValueError, TypeError, IndexError, KeyError, NotImplementedError) as error:
            raise RopelabError(f"{path}: tensor {shown(name)} cannot be read ({error}); truncated or corrupt") from None
        state[target] = torch.from_numpy(np.array(data, dtype=np.float32, order="C", copy=True))
    return config, state, metadata


def _token_id(reader, key: str, vocab_size: int) -> int | None:
    value = _typed(reader, key, int, None)
    if value is not None and not 0 <= value < vocab_size:
        raise RopelabError(f"GGUF metadata {key}={value} is not a token id (0 to {vocab_size - 1})")
    return value


def _config(reader, path: Path) -> tuple[ModelConfig, dict, dict]:
    """(model config, tensors by name, metadata for the cache) of a GGUF, every key checked."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise RopelabError(
            f"architecture {shown(arch)} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    tensors = {t.name: t for t in reader.tensors}
    embedding = tensors.get("token_embd.weight")
    if embedding is None or len(embedding.shape) != 2:
        raise RopelabError("tensor token_embd.weight is missing or not a matrix")

    def meta(key: str, kind: type, default=_REQUIRED):
        return _typed(reader, f"{arch}.{key}", kind, default)

    name = _field(reader, "general.name")
    config = ModelConfig(  # checks every value: types, ranges, memory
        vocab_size=int(embedding.shape[-1]),
        dim=meta("embedding_length", int),
        n_layers=meta("block_count", int),
        n_heads=meta("attention.head_count", int),
        n_kv_heads=meta("attention.head_count_kv", int, None),
        head_dim=meta("attention.key_length", int, None),
        hidden_dim=meta("feed_forward_length", int),
        norm_eps=meta("attention.layer_norm_rms_epsilon", float, 1e-5),
        rope_base=meta("rope.freq_base", float, 10000.0),
        train_len=meta("context_length", int),
        qkv_bias="blk.0.attn_q.bias" in tensors,
        tie_embeddings="output.weight" not in tensors,
        pe="rope",
        name=name[:200] if isinstance(name, str) else path.stem,  # cosmetic: the file name if not a string
    )
    metadata = {
        "architecture": arch,
        "bos_id": _token_id(reader, "tokenizer.ggml.bos_token_id", config.vocab_size),
        "eos_id": _token_id(reader, "tokenizer.ggml.eos_token_id", config.vocab_size),
        "name": config.name,
        "file_type": _typed(reader, "general.file_type", int, None),
    }
    return config, tensors, metadata


def gguf_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer embedded in a GGUF file, converted by ``transformers``' GGUF support.

    ``transformers`` loads a GGUF from a model folder and reads that folder's other files too (a
    ``tokenizer.json``, a ``tokenizer_config.json`` whose ``auto_map`` asks to run custom code --
    which would prompt "run custom code? [y/N]"). So the file is linked (or copied) alone into a
    private temporary folder and loaded from there, with ``trust_remote_code=False``."""
    path = Path(path)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise RopelabError("converting a GGUF tokenizer needs transformers: pip install 'transformers>=4.45'") from None
    with tempfile.TemporaryDirectory(prefix="ropelab-gguf-") as private:
        alone = Path(private) / "model.gguf"
        try:
            alone.symlink_to(path.resolve())
        except OSError:  # no symbolic links here (Windows without the privilege): a copy
            shutil.copyfile(path, alone)
        try:
            hf = AutoTokenizer.from_pretrained(private, gguf_file=alone.name, trust_remote_code=False)
        except Exception as error:  # transformers raises many kinds for a GGUF without a usable tokenizer
            raise RopelabError(f"{path}: its tokenizer cannot be converted ({str(error)[:300]})") from None
    return Tokenizer(hf.backend_tokenizer, bos_id=hf.bos_token_id, eos_id=hf.eos_token_id, name=path.name)
