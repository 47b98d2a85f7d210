"""The model: KV-cache decoding equals full recompute for every method, generation, layouts,
grouped-query attention and input validation."""

from __future__ import annotations

import pytest
import torch

from ropelab import ModelConfig, Transformer, pe
from ropelab.core.errors import RopelabError

ALL_SPECS = [m.name for m in pe.methods()] + ["hope+yarn:factor=2", "hope+pi:factor=4", "learned:max_len=64"]
# windowed methods with windows shorter than the test inputs, so both score sets are exercised
ALL_SPECS += ["rerope:window=8", "rerope:window=8,logn=true", "self-extend:window=8,group=3", "hirope:window=8,chunk=5"]
ALL_SPECS += ["hirope:window=8,levels=3,chunk=5", "hirope:window=0,split=auto,chunk=6"]
ALL_SPECS.remove("learned")


def tiny(spec: str, **overrides) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", pe=spec, vocab_size=61, train_len=16, **overrides)
    return Transformer(config).eval()


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_kv_cache_decoding_equals_full_recompute(spec):
    """Prefill, a multi-token chunk, then single tokens -- past the train length (16).

    Dynamic NTK is the one method where the two cannot agree exactly past the train length: its
    angles depend on the current length, so a full recompute at length n changes every layer's
    hidden states, while cached keys/values of layers >= 1 were computed at an earlier length.
    ropelab re-rotates cached keys (exact for layer 0, unlike Hugging Face which keeps stale
    rotations); the remaining gap is bounded below and exact within the train length.
    """
    model = tiny(spec)
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.new_cache()
        pieces = [model(ids[:, :10], cache=cache), model(ids[:, 10:14], cache=cache)]
        pieces += [model(ids[:, t : t + 1], cache=cache) for t in range(14, 40)]
        cached = torch.cat(pieces, dim=1)
        # the full-recompute reference for step t is the last logit of a forward over ids[:, :t+1]
        reference = torch.stack([model(ids[:, : t + 1])[:, -1] for t in range(40)], dim=1)
    assert cache.length == 40
    if model.pe.rotation_depends_on_length:
        torch.testing.assert_close(cached[:, :16], reference[:, :16], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(cached, reference, atol=1e-3, rtol=1e-3)
    else:
        torch.testing.assert_close(cached, reference, atol=2e-5, rtol=1e-5)


def test_kv_cache_writes_in_place_and_grows_keeping_every_token():
    from ropelab.model.transformer import KVCache

    cache = KVCache(n_layers=1)
    keys, values, far = (torch.randn(2, 3, 700, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    cache.update(0, keys[:, :, :130], values[:, :, :130])
    cache.update_far(0, far[:, :, :130])
    buffer, capacity = cache.keys[0].data_ptr(), cache.keys[0].shape[2]
    assert capacity == 130 + 128  # room to spare: an eighth more, at least 128 tokens
    grew = 0
    for t in range(130, 700):
        k, v = cache.update(0, keys[:, :, t : t + 1], values[:, :, t : t + 1])
        f = cache.update_far(0, far[:, :, t : t + 1])
        assert torch.equal(k, keys[:, :, : t + 1]) and torch.equal(v, values[:, :, : t + 1])
        assert torch.equal(f, far[:, :, : t + 1])
        if cache.keys[0].data_ptr() != buffer:  # reallocated: only when full
            assert t == capacity
            buffer, capacity, grew = cache.keys[0].data_ptr(), cache.keys[0].shape[2], grew + 1
    assert grew == 4 and cache.filled == [700]  # at 258, 387, 516 and 645 tokens


def test_a_cache_of_known_capacity_is_allocated_once_and_still_grows_past_it():
    """``generate`` knows prompt + new tokens: the buffer holds exactly that, with no room to spare,
    and is never reallocated while decoding; written past its capacity it grows as usual."""
    from ropelab.model.transformer import KVCache

    cache = KVCache(n_layers=1, capacity=140)
    keys = torch.randn(1, 2, 150, 4, generator=torch.Generator().manual_seed(0))
    cache.update(0, keys[:, :, :100], keys[:, :, :100])
    buffer = cache.keys[0].data_ptr()
    assert cache.keys[0].shape[2] == 140
    for t in range(100, 150):
        k, _ = cache.update(0, keys[:, :, t : t + 1], keys[:, :, t : t + 1])
        assert torch.equal(k, keys[:, :, : t + 1])
        assert (cache.keys[0].data_ptr() == buffer) == (t < 140)  # in place up to the capacity, then grown
    model = tiny("rope")
    ids = torch.randint(0, 61, (1, 20), generator=torch.Generator().manual_seed(1))
    assert model.generate(ids, 7).tolist() == model.generate(ids, 7, use_cache=False).tolist()


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_generate_with_cache_equals_full_recompute(spec):
    model = tiny(spec)
    prompt = torch.randint(0, 61, (1, 8), generator=torch.Generator().manual_seed(2))
    for kwargs in ({}, {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 3}):
        cached = model.generate(prompt, 24, use_cache=True, **kwargs)
        recomputed = model.generate(prompt, 24, use_cache=False, **kwargs)
        assert cached.shape == (1, 24)
        assert torch.equal(cached, recomputed), (spec, kwargs)


def test_sampling_is_seeded_and_greedy_is_argmax():
    model = tiny("rope")
    prompt = torch.tensor([[1, 2, 3]])
    a = model.generate(prompt, 10, temperature=1.0, seed=5)
    b = model.generate(prompt, 10, temperature=1.0, seed=5)
    assert torch.equal(a, b)
    greedy = model.generate(prompt, 1)
    assert greedy.item() == model(prompt)[0, -1].argmax().item()


def test_eos_stops_generation():
    model = tiny("rope")
    prompt = torch.tensor([[1, 2, 3]])
    first = model.generate(prompt, 1).item()
    out = model.generate(prompt, 10, eos_id=first)
    assert out.tolist() == [[first]]


def test_generate_rejects_bad_arguments():
    model = tiny("rope")
    for kwargs in ({"temperature": -1.0}, {"top_k": 0, "temperature": 1.0}, {"top_p": 1.5, "temperature": 1.0}):
        with pytest.raises(RopelabError):
            model.generate(torch.tensor([[1]]), 3, **kwargs)


def _interleave_rows(weight: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder each head's output rows from rotate-half to interleaved channel pairs."""
    half = head_dim // 2
    perm = torch.stack((torch.arange(half), torch.arange(half) + half), dim=-1).flatten()
    return weight.view(n_heads, head_dim, -1)[:, perm].reshape(weight.shape)


@pytest.mark.parametrize("spec", ["rope", "hope", "yarn:factor=2", "dynamic-ntk:factor=2"])
def test_interleaved_layout_with_permuted_weights_gives_identical_logits(spec):
    half = tiny(spec)
    inter = tiny(spec, rope_layout="interleaved")
    state = half.state_dict()
    c = half.config
    for i in range(c.n_layers):
        q, k = f"layers.{i}.self_attn.q_proj.weight", f"layers.{i}.self_attn.k_proj.weight"
        state[q] = _interleave_rows(state[q], c.n_heads, c.head_dim)
        state[k] = _interleave_rows(state[k], c.n_kv_heads, c.head_dim)
    inter.load_state_dict(state)
    ids = torch.randint(0, 61, (1, 50))
    with torch.no_grad():
        torch.testing.assert_close(inter(ids), half(ids), atol=1e-5, rtol=1e-5)
        # and a layout mismatch is not silently equivalent
        wrong = tiny(spec, rope_layout="interleaved")
        wrong.load_state_dict(half.state_dict())
        assert (wrong(ids) - half(ids)).abs().max() > 1e-3


def test_grouped_query_attention_equals_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, train_len=32)).eval()
    mha = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, n_kv_heads=4, train_len=32)).eval()
    state = gqa.state_dict()
    for name in ("k_proj", "v_proj"):
        w = state[f"layers.0.self_attn.{name}.weight"].view(2, 8, 32)
        state[f"layers.0.self_attn.{name}.weight"] = w.repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(state)
    ids = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids), atol=1e-5, rtol=1e-5)


def test_with_method_switches_encoding_and_keeps_weights():
    model = tiny("rope")
    ids = torch.randint(0, 61, (1, 30))
    with torch.no_grad():
        before = model(ids)
        weights = model.layers[0].self_attn.q_proj.weight.clone()
        model.with_method("yarn:factor=2")
        assert model.pe.spec == "rope+yarn:factor=2" and model.config.pe == "rope+yarn:factor=2"
        assert torch.equal(model.layers[0].self_attn.q_proj.weight, weights)
        assert (model(ids) - before).abs().max() > 1e-4
        model.with_method("rope")
        torch.testing.assert_close(model(ids), before)


def test_explicit_positions_equal_default_and_shifting_all_positions_is_invisible_to_rope():
    model = tiny("rope")
    ids = torch.randint(0, 61, (2, 12))
    with torch.no_grad():
        default = model(ids)
        torch.testing.assert_close(model(ids, positions=torch.arange(12)), default)
        # RoPE is relative: shifting every position by 100 changes nothing
        torch.testing.assert_close(model(ids, positions=torch.arange(100, 112)), default, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("ids", "positions", "message"),
    [
        (torch.zeros(3, dtype=torch.long), None, "input_ids must be"),
        (torch.zeros(1, 0, dtype=torch.long), None, "empty"),
        (torch.full((1, 3), 61), None, "token ids must be in 0..60"),
        (torch.zeros(1, 3, dtype=torch.long), torch.arange(4), "positions must have shape"),
        (torch.zeros(1, 3, dtype=torch.long), torch.tensor([-1, 0, 1]), "non-negative"),
        (torch.zeros(1, 3, dtype=torch.long), torch.arange(3).to(torch.bfloat16), "never fp16/bf16"),
    ],
)
def test_bad_inputs_raise_clear_errors(ids, positions, message):
    """Checked once where inputs enter (check_inputs: generate, token_losses, the evaluator), never
    inside the forward pass."""
    from ropelab.model.inputs import check_inputs

    model = tiny("rope")
    with pytest.raises(RopelabError, match=message):
        check_inputs(model, ids, positions)
    with pytest.raises(RopelabError, match=message):
        model.token_losses(ids, positions)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_heads": 3}, "divisible by n_heads"),
        ({"n_kv_heads": 3}, "multiple of n_kv_heads"),
        ({"rope_layout": "split"}, "rope_layout must be one of half, interleaved"),
        ({"train_len": 0}, "train_len must be a positive integer"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, message):
    with pytest.raises(RopelabError, match=message):
        ModelConfig.from_name("tiny", **overrides)
    with pytest.raises(RopelabError, match="unknown model config 'huge'; known configs: tiny"):
        ModelConfig.from_name("huge")


def test_named_configs_sizes():
    small = Transformer(ModelConfig.from_name("small"))
    assert 4e6 < small.num_parameters < 6e6  # the CPU demo size (~5M parameters, README "Python API")
    assert ModelConfig.from_name("hope-125m").dim == 768


def test_casting_the_model_to_bf16_keeps_float32_angles():
    model = tiny("yarn:factor=2")
    angles = model.pe.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.pe.inv_freq.dtype == torch.float32 and torch.equal(model.pe.inv_freq, angles)
    assert model(torch.randint(0, 61, (1, 20))).dtype == torch.bfloat16
    model.float()
    assert torch.equal(model.pe.inv_freq, angles)


@pytest.mark.parametrize("spec", ["kerple-log", "fire", "learned"])
def test_switching_to_the_own_method_keeps_trained_parameters(spec):
    """Evaluation switches methods per unit; switching to the method the model already runs must
    not re-initialise a trained KERPLE / FIRE / learned table (it once did: trained checkpoints were
    scored with random position parameters)."""
    model = Transformer(ModelConfig.from_name("tiny", pe=spec))
    with torch.no_grad():
        for parameter in model.pe.parameters():
            parameter.add_(0.5)
    trained = [p.detach().clone() for p in model.pe.parameters()]
    model.with_method(spec)
    assert all(torch.equal(a, b) for a, b in zip(trained, model.pe.parameters(), strict=True))
    model.with_method("rope").with_method(spec)  # another method and back: fresh parameters
    assert not all(torch.equal(a, b) for a, b in zip(trained, model.pe.parameters(), strict=True))


def test_pi_factor_auto_is_pi_at_each_input_length():
    """``pi:factor=auto``: RoPE up to the train length, ``pi:factor=n/L`` beyond it, per input length;
    with a KV cache the cached keys follow the growing factor (cached decoding equals a recompute)."""
    auto, rope = tiny("rope+pi:factor=auto"), tiny("rope")
    train_len = auto.config.train_len
    ids = torch.randint(0, 61, (1, 3 * train_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(auto(ids[:, :train_len]), rope(ids[:, :train_len]), atol=0, rtol=0)
        for n, factor in ((2 * train_len, "2"), (3 * train_len, "3")):
            fixed = tiny(f"rope+pi:factor={factor}")
            torch.testing.assert_close(auto(ids[:, :n]), fixed(ids[:, :n]), atol=1e-6, rtol=1e-6)
        prefix = ids[:, : train_len + 3]
        cached = auto.generate(prefix, 4)  # greedy (temperature 0), through the KV cache
        steps = prefix
        for _ in range(4):
            steps = torch.cat((steps, auto(steps)[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(cached, steps[:, prefix.shape[1] :])


def test_a_model_keeps_its_own_frequency_scaling_under_other_methods(capsys):
    """A llama3-scaled model (its checkpoint's rope type): a windowed method runs over the llama3
    frequencies (its angles equal transformers' llama3 inv_freq), a spec naming a base replaces
    it with a log line, a lone transform is refused."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    model = tiny("rope+llama3:factor=8")
    c = model.config
    hf = transformers.LlamaConfig(
        hidden_size=c.n_heads * c.head_dim, num_attention_heads=c.n_heads, head_dim=c.head_dim,
        rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": c.train_len, "rope_theta": c.rope_base},
    )  # fmt: skip
    inv_freq = ROPE_INIT_FUNCTIONS["llama3"](hf, None)[0]
    ids = torch.randint(0, 61, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        own = model(ids)
        model.with_method("self-extend:window=64,group=2")  # the window covers the input: plain llama3 RoPE
        assert model.pe.spec == "self-extend:group=2,window=64+llama3:factor=8"
        torch.testing.assert_close(model.pe.theta, inv_freq, rtol=1e-6, atol=0)
        torch.testing.assert_close(model(ids), own, atol=1e-5, rtol=0)
        model.with_method("rope")  # named: plain RoPE replaces the llama3 scaling (and the log says so)
        assert model.pe.spec == "rope"
        model.with_method("rope+yarn:factor=2")
        assert model.pe.spec == "rope+yarn:factor=2"
    err = capsys.readouterr().err
    assert "runs over the model's own llama3:factor=8" in err and "replaces the model's own rope+llama3" in err
    with pytest.raises(RopelabError, match="would replace the model's own llama3:factor=8"):
        model.with_method("yarn:factor=2")
    # an unscaled model is unaffected
    assert tiny("rope").with_method("self-extend").pe.spec == "self-extend"
