"""Builders shared by the test modules: tiny random Hugging Face decoders, byte-level BPE and
word-level tokenizers, tiny ropelab checkpoints, llama.cpp-style GGUF tensors, and a 2-process
``torchrun`` launcher.

``tests`` is a package: import these as ``from tests.helpers import ...``. ``transformers`` is
imported inside the functions that need it, so a module can still ``pytest.importorskip`` it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from ropelab import ModelConfig, Transformer, save_checkpoint
from ropelab.pretrained.tokenizer import Tokenizer

# -- tiny random Hugging Face decoders ----------------------------------------------------------------

#: vocabulary, width, layers, heads, KV heads, MLP width, max_position_embeddings (the training
#: length), RMSNorm epsilon and RoPE theta of the tiny HF models
VOCAB, DIM, LAYERS, HEADS, KV_HEADS, HIDDEN, MAX_POS, EPS, THETA = 97, 64, 2, 4, 2, 128, 64, 1e-5, 10000.0
WEIGHT_STD = 0.1  # attention sharp enough that positions matter

#: the sizes of a tiny HF decoder, ``max_position_embeddings`` aside
HF_SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=DIM,
    intermediate_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
)


def tiny_hf_config(config_class, *, tie: bool, rope_parameters: dict, max_position_embeddings: int = MAX_POS, **extra):
    """A ``config_class`` (``LlamaConfig``, ``Qwen2Config``, ...) of the tiny sizes, no special tokens."""
    return config_class(
        **HF_SIZES,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=EPS,
        tie_word_embeddings=tie,
        rope_parameters=rope_parameters,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **extra,
    )


def randomise(model: torch.nn.Module, seed: int, std: float = WEIGHT_STD) -> None:
    """Random weights everywhere, biases and norm gains included (HF inits those to 0 / 1): norm
    gains ``1 + 0.2 N(0, 1)``, everything else ``std N(0, 1)``, from one generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.copy_(1.0 + 0.2 * noise if "norm" in name else std * noise)


def tiny_hf_model(arch: str, seed: int = 0, **rope):
    """A tiny random HF ``llama``, ``qwen2`` (tied embeddings), ``qwen3`` (per-head q/k norms),
    ``phi3`` (fused projections) or ``mistral`` in eval mode.

    ``rope``: the ``rope_parameters`` (default rope, theta ``THETA``), and optionally
    ``max_position_embeddings`` (default ``MAX_POS``)."""
    import transformers

    max_position_embeddings = rope.pop("max_position_embeddings", MAX_POS)
    rope_parameters = rope or {"rope_type": "default", "rope_theta": THETA}

    def config(config_class, **extra):
        return tiny_hf_config(
            config_class,
            tie=arch == "qwen2",  # one tied, two untied
            rope_parameters=rope_parameters,
            max_position_embeddings=max_position_embeddings,
            **extra,
        )

    if arch == "llama":
        model = transformers.LlamaForCausalLM(config(transformers.LlamaConfig))
    elif arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(config(transformers.Qwen2Config, use_sliding_window=False))
    elif arch == "phi3":  # fused qkv and gate/up projections
        model = transformers.Phi3ForCausalLM(
            config(
                transformers.Phi3Config, sliding_window=None, original_max_position_embeddings=max_position_embeddings
            )
        )
    elif arch == "qwen3":
        model = transformers.Qwen3ForCausalLM(
            config(transformers.Qwen3Config, use_sliding_window=False, head_dim=DIM // HEADS)  # its default is 128
        )
    else:
        model = transformers.MistralForCausalLM(config(transformers.MistralConfig, sliding_window=None))
    randomise(model, seed)
    return model.eval()


@torch.no_grad()
def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """An HF causal LM's logits for ``ids``, without a KV cache."""
    return model(input_ids=ids, use_cache=False).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# -- tokenizers -----------------------------------------------------------------------------------------


def byte_level_bpe(texts: Iterable[str], vocab_size: int, *, special_tokens=(), **tokenizer) -> Tokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenizer, offsets and decoder) trained on ``texts``;
    ``tokenizer``: :class:`~ropelab.pretrained.tokenizer.Tokenizer`'s ``bos_id``, ``eos_id``, ``name``."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return Tokenizer(backend, **tokenizer)


def long_code_bpe(chars: int) -> Tokenizer:
    """A 300-token byte-level BPE trained on ``long_code(chars)`` in 2000-character pieces."""
    from ropelab.eval.documents import long_code

    text, _ = long_code(chars)
    return byte_level_bpe([text[i : i + 2000] for i in range(0, len(text), 2000)], 300)


def word_tokenizer() -> Tokenizer:
    """Words ``w3``..``w96`` are token ids 3..96; ``<s>`` = 1 (BOS), ``</s>`` = 2 (EOS)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(backend, bos_id=1, eos_id=2)


# -- tiny ropelab checkpoints ---------------------------------------------------------------------------


def tiny_checkpoint(directory: Path, pe: str = "rope", seed: int = 0, **overrides) -> Path:
    """A ropelab ``tiny`` checkpoint (vocabulary ``VOCAB``, training length ``MAX_POS``, random
    weights: attention sharp enough that positions matter) with :func:`word_tokenizer`; returns
    the directory."""
    config = ModelConfig.from_name("tiny", vocab_size=VOCAB, train_len=MAX_POS, pe=pe, **overrides)
    torch.manual_seed(seed)
    model = Transformer(config)
    randomise(model, seed)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory, model, tokenizer="tokenizer.json")
    word_tokenizer().save(directory)
    return directory


def tiny_code_checkpoint(folder: Path) -> Path:
    """A ropelab ``tiny`` checkpoint (training length 512, torch seed 0) with the
    :func:`long_code_bpe` tokenizer of 60 000 characters, written to ``folder``; returns it."""
    tokenizer = long_code_bpe(60_000)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, train_len=512)).eval()
    save_checkpoint(folder, model, tokenizer="tokenizer.json")
    tokenizer.save(folder)
    return folder


# -- several processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run *args`` with 2 local processes, one thread each; asserts
    that it succeeds (with the end of its stderr)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# -- llama.cpp-style GGUF tensors (written out independently of ropelab's reader) ------------------

#: llama.cpp's names for the tensors outside the blocks, and for those of block ``blk.N``
GGUF_NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def llamacpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py permutation of Q/K rows."""
    return (
        weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_tensors(
    state_dict: Mapping[str, torch.Tensor], n_heads: int, n_kv_heads: int
) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of each tensor of a Llama state dict -- Hugging Face names (with
    ``model.``) or ropelab's -- as llama.cpp's converter writes them, Q/K permuted."""
    for name, tensor in state_dict.items():
        key = name.removeprefix("model.")
        if key in GGUF_NAMES:
            target = GGUF_NAMES[key]
        else:
            _, index, rest = key.split(".", 2)
            target = f"blk.{index}.{GGUF_LAYER_NAMES[rest]}"
        array = tensor.numpy().astype(np.float32)
        if target.endswith("attn_q.weight"):
            array = llamacpp_permute(array, n_heads)
        elif target.endswith("attn_k.weight"):
            array = llamacpp_permute(array, n_kv_heads)
        yield target, array


def corpus_or_skip() -> None:
    """Skip unless the project corpus is complete here: the JDK sources (Java projects) and the
    pinned wheels that ``./dev`` downloads (projects of code newer than the models)."""
    import pytest

    from ropelab.core.errors import RopelabError
    from ropelab.eval import projects
    from ropelab.eval.documents import jdk_sources

    if jdk_sources() is None:
        pytest.skip("no JDK sources (apt install openjdk-17-source): the Java projects cannot be read")
    try:
        projects.verify()
    except RopelabError as error:
        pytest.skip(f"the corpus wheels are not in place (./dev test downloads them): {error}")


def assert_tables_well_formed(markdown: str) -> int:
    """Every markdown table of ``markdown`` has as many cells in its separator and in every row as in
    its header; returns the number of tables."""
    import re

    lines, tables = markdown.splitlines(), 0
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]):
            tables += 1
            cells = line.count("|")
            assert lines[i + 1].count("|") == cells, f"separator of {line!r}"
            for row in itertools.takewhile(lambda r: r.startswith("|"), lines[i + 2 :]):
                assert row.count("|") == cells, f"row {row!r} of table {line!r}"
    return tables


@contextlib.contextmanager
def host_reads():
    """Record every read of a tensor's value on the host (``.item()``, ``.tolist()``, ``bool``,
    ``int``, ``float``, ``__index__``) that ropelab's own source makes inside the block: on a GPU each
    one waits for the device. Yields the list of ``"what at file:line (function)"`` strings. Reads
    inside torch itself (an optimizer's CPU step counter) are not ropelab's and are not recorded."""
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    originals = {name: getattr(torch.Tensor, name) for name in names}
    source = os.sep + os.path.join("src", "ropelab") + os.sep
    reads: list[str] = []

    def recording(name, original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if source in caller.f_code.co_filename:
                where = caller.f_code.co_filename.split(source)[1]
                reads.append(f"{name} at {where}:{caller.f_lineno} ({caller.f_code.co_name})")
            return original(self, *args, **kwargs)

        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, recording(name, original))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


# -- tiny random models of the families hf.patch runs in transformers only ------------------------

#: ``hf.patch``'s patch-only families: ``model_type`` -> (config class, model class) names in ``transformers``
PATCH_ONLY_CLASSES = {
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
}
#: the sliding window of the tiny Gemma / StarCoder2 models (below MAX_POS, so it matters)
SLIDING = 32


def tiny_family_model(model_type: str, seed: int = 0, **config):
    """A tiny random HF model of a patch-only family (:data:`PATCH_ONLY_CLASSES`) in eval mode.

    Defaults that make the family's features matter at the tiny sizes: Gemma's head size 16 with
    ``query_pre_attn_scalar=24`` (a softmax scale other than ``head_dim ** -0.5``) and a sliding
    window of :data:`SLIDING`; Gemma 3 with a sliding and a full-attention layer, bases 10000 and
    100000; StarCoder2 with a sliding window of :data:`SLIDING`; GPT-NeoX rotating half of each head
    (``rotary_pct=0.5``). ``config`` overrides any of them (Gemma 2 keeps its logit soft-capping)."""
    import transformers

    config_name, model_name = PATCH_ONLY_CLASSES[model_type]
    fields = dict(HF_SIZES, max_position_embeddings=MAX_POS, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if model_type in ("gemma2", "gemma3_text"):
        fields.update(head_dim=DIM // HEADS, query_pre_attn_scalar=24, sliding_window=SLIDING)
    if model_type == "gemma3_text":
        fields.update(
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": THETA},
                "full_attention": {"rope_type": "default", "rope_theta": 10 * THETA},
            },
        )
    elif model_type == "starcoder2":
        fields.update(sliding_window=SLIDING)
    elif model_type == "gpt_neox":
        fields.pop("num_key_value_heads")
        fields.update(rotary_pct=0.5)
    fields.update(config)
    model = getattr(transformers, model_name)(getattr(transformers, config_name)(**fields))
    randomise(model, seed)
    return model.eval()


# -- files for bad-input tests: a tiny GGUF, an HF config, a result record, a resumable checkpoint ---------


GOOD_HF = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


@functools.cache
def bpe_backend() -> Backend:
    """A byte-level BPE with ``<s>`` (0) and ``</s>`` (1), as a GGUF's ``gpt2`` tokenizer holds it
    (trained once; read-only)."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=["<s>", "</s>"],
    )
    backend.train_from_iterator(["def f(x):\n    return x\n" * 20, "hello world " * 30], trainer)
    return backend


GGUF_META = {
    "block_count": 1,
    "context_length": 64,
    "embedding_length": 32,
    "feed_forward_length": 64,
    "attention.head_count": 4,
    "attention.head_count_kv": 2,
    "rope.freq_base": 10000.0,
    "attention.layer_norm_rms_epsilon": 1e-5,
}


def add_gguf_value(writer, key: str, value) -> None:
    """Write one metadata value with the GGUF type its Python type suggests (fuzzing writes the
    wrong types on purpose)."""
    import gguf

    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        if value < 0:
            writer.add_int64(key, max(value, -(2**63)))
        else:
            writer.add_uint64(key, min(value, 2**64 - 1))
    elif isinstance(value, float):
        writer.add_float64(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list):
        writer.add_array(key, value)
    else:
        raise TypeError(type(value))
    del gguf


def write_tiny_gguf(path: Path, *, meta: dict | None = None, drop=(), arch: str = "llama", tokenizer: bool = True):
    """A llama.cpp-style GGUF of a random one-layer ropelab model: F32 tensors, Q/K permuted,
    with a ``gpt2`` (byte-level BPE) tokenizer unless ``tokenizer=False``. ``meta`` replaces
    metadata values (keys without the ``llama.`` prefix; ``general.*`` / ``tokenizer.*`` keys as
    they are), ``drop`` leaves keys out. Returns the BPE backend the tokenizer was made from."""
    import gguf

    from ropelab import ModelConfig, Transformer

    backend = bpe_backend()
    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    torch.manual_seed(0)
    m = GGUF_META
    config = ModelConfig(
        vocab_size=len(tokens),
        dim=m["embedding_length"],
        n_layers=m["block_count"],
        n_heads=m["attention.head_count"],
        n_kv_heads=m["attention.head_count_kv"],
        hidden_dim=m["feed_forward_length"],
        train_len=m["context_length"],
    )
    model = Transformer(config)
    writer = gguf.GGUFWriter(str(path), arch)
    values = {**{f"{arch}.{k}": v for k, v in GGUF_META.items()}}
    if tokenizer:
        values.update(
            {
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.pre": "default",
                "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.token_type": [1] * len(tokens),
                "tokenizer.ggml.merges": merges,
                "tokenizer.ggml.bos_token_id": vocab["<s>"],
                "tokenizer.ggml.eos_token_id": vocab["</s>"],
            }
        )
    for key, value in (meta or {}).items():
        values[key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}"] = value
    for key in drop:
        values.pop(key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}", None)
    for key, value in values.items():
        if value is None:  # GGUF has no null: the key is left out
            continue
        if key == "tokenizer.ggml.token_type":
            writer.add_token_types(value)
        else:
            add_gguf_value(writer, key, value)
    weights = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for target, array in gguf_tensors(weights, config.n_heads, config.n_kv_heads):
        writer.add_tensor(target, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return backend


GOOD_RECORD = {"task": "ppl", "method": "rope", "length": 256, "index": 0, "metrics": {"loss": 2.0}, "seconds": 0.1}


def write_resumable_checkpoint(root: Path) -> Path:
    """A training checkpoint with resume files (``ropelab.train.state.write_checkpoint``)."""
    from ropelab import ModelConfig, Transformer
    from ropelab.train import state

    model = Transformer(ModelConfig.from_name("tiny", vocab_size=50))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    return state.write_checkpoint(root, 1, model, optimizer, [], {"step": 1, "tokens": 4, "elapsed_s": 1.0}, {})


#: every method name that is its own canonical spec
CANONICAL = [
    "rope",
    "hope",
    "hope-ab1",
    "hope-ab2",
    "hope-ab3",
    "nope",
    "learned",
    "alibi",
    "kerple-log",
    "kerple-power",
    "fire",
    "pi",
    "ntk",
    "dynamic-ntk",
    "yarn",
]


# -- the bad-input tests' command runner and checks -------------------------------------------


def run_cli(capsys, *argv) -> tuple[int, str]:
    from ropelab.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def tiny_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def f(x):\n    return x + 1\n" * 400)
    return corpus


#: one JavaScript function opening: nested thousands of times, a deep syntax tree from a small input
NESTED_JS = "function a(){ "


#: the config.json of a minimal eval run (tests that damage or read run directories)
RUN_CONFIG = {
    "model": "tiny",
    "train_len": 256,
    "methods": ["rope"],
    "tasks": ["ppl"],
    "lengths": [256],
    "samples": 1,
    "seed": 0,
}
