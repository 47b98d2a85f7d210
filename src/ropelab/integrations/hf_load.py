"""ropelab checkpoints and Hugging Face model directories as ``transformers`` models with a
tokenizer: the conversions behind :func:`ropelab.integrations.hf.load`.

A ropelab checkpoint becomes a ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` holding the same tensors
(a checkpoint stored in the interleaved rotary layout is converted to HF's rotate-half layout; the
scores are unchanged), and its ``tokenizer.json`` a ``PreTrainedTokenizerFast`` with its special
tokens; :func:`ready_for_batches` readies the pair for batched generation.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ropelab.core.errors import RopelabError
from ropelab.integrations.hf_rotary import build_encoding, pe_context
from ropelab.pretrained.hf_dir import ropelab_to_hf_config
from ropelab.pretrained.registry import load_model


def ready_for_batches(model, tokenizer) -> None:
    """Batched generation works as loaded: left padding (a decoder continues from the right end),
    and a pad token -- the tokenizer's own, else its end-of-sequence token (padded positions are
    masked out, so which token pads does not change the outputs) -- also set as the model's
    ``generation_config.pad_token_id``."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is not None and getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def checkpoint_to_transformers(directory: Path, method: str | None, train_len: int | None):
    """A ropelab checkpoint as a transformers model, its tokenizer, and the spec to patch in
    (``None``: transformers' own RoPE is the checkpoint's method)."""
    import dataclasses

    import transformers

    ours, our_tokenizer = load_model(directory)
    config = ours.config
    spec = method if method is not None else ours.pe.spec
    if method is None and spec == "rope":
        spec = None  # transformers' own RoPE computes it (interleaved weights are converted below)
    bos = our_tokenizer.bos_id if our_tokenizer is not None else None
    eos = our_tokenizer.eos_id if our_tokenizer is not None else None
    hf = ropelab_to_hf_config(dataclasses.replace(config, pe="rope", rope_layout="half"))
    kind = hf.pop("model_type")
    hf.update(bos_token_id=bos, eos_token_id=eos, pad_token_id=None)
    if spec is not None:  # refuse a method transformers cannot run before building anything
        build_encoding(spec, pe_context({**hf, "model_type": kind}, train_len))
    config_class = transformers.Qwen2Config if kind == "qwen2" else transformers.LlamaConfig
    model_class = transformers.Qwen2ForCausalLM if kind == "qwen2" else transformers.LlamaForCausalLM
    model = model_class(config_class(**hf))
    state = {}
    for name, tensor in ours.state_dict().items():
        if config.rope_layout == "interleaved":
            tensor = interleaved_to_half(name, tensor, config)
        state[name if name.startswith("lm_head.") else f"model.{name}"] = tensor
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not (config.tie_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise RopelabError(
            f"{directory}: weights do not map onto {model_class.__name__}: missing {missing}, unexpected {unexpected}"
        )
    del ours
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        tokenizer = fast_tokenizer(directory / "tokenizer.json", bos, eos)
    return model.float().eval(), tokenizer, spec


def interleaved_to_half(name: str, tensor: Tensor, config) -> Tensor:
    """q/k projection rows from the interleaved rotary layout (pair j in channels 2j, 2j+1) to
    HF's rotate-half layout (channels j, j + d/2); the scores are unchanged."""
    heads = {"q_proj": config.n_heads, "k_proj": config.n_kv_heads}
    kind = name.split(".")[-2] if "." in name else ""
    if kind not in heads:
        return tensor
    d = config.head_dim
    rest = tensor.shape[1:]
    return tensor.reshape(heads[kind], d // 2, 2, *rest).transpose(1, 2).reshape(tensor.shape)


def fast_tokenizer(path: Path, bos_id: int | None, eos_id: int | None):
    """A ``PreTrainedTokenizerFast`` over ``tokenizer.json`` with the given special tokens."""
    import transformers

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    backend = tokenizer.backend_tokenizer
    for attribute, token_id in (("bos_token", bos_id), ("eos_token", eos_id)):
        token = backend.id_to_token(int(token_id)) if token_id is not None else None
        if token is not None:
            setattr(tokenizer, attribute, token)
    return tokenizer


def hf_dir_tokenizer(directory: Path, config):
    """The tokenizer of a Hugging Face model directory: its tokenizer files as
    ``PreTrainedTokenizerFast``, or ``None`` without a ``tokenizer.json``."""
    import transformers

    if not (directory / "tokenizer.json").is_file():
        return None
    if (directory / "tokenizer_config.json").is_file():
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    return fast_tokenizer(directory / "tokenizer.json", config.bos_token_id, eos)
