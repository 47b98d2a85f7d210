"""``ropelab.integrations.hf.patch``: a ropelab RoPE-family method applied in place to HF Llama / Qwen2 / Mistral.

Tiny random models (float32, CPU, seeded). A patched HF model must give the logits of ropelab's
own :class:`~ropelab.model.transformer.Transformer` with the same weights and the same spec, on
inputs more than twice the training length; ``unpatch`` must give back the exact original model.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ropelab.core.errors import RopelabError, SpecError
from ropelab.integrations import hf
from ropelab.model.transformer import Transformer
from ropelab.pe import RotaryEncoding
from ropelab.pe import canonical_spec as _canonical
from ropelab.pretrained.hf_dir import hf_config_to_ropelab, unfused
from tests.helpers import DIM, HEADS, MAX_POS, THETA, VOCAB, hf_logits, max_diff, tiny_hf_model

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTH = 150  # > 2 * max_position_embeddings
ATOL = 1e-5

ARCHS = ["llama", "qwen2", "mistral", "qwen3", "phi3"]
SPECS = [
    "rope",
    "pi:factor=2",
    "ntk:factor=4",
    "dynamic-ntk:factor=2",
    "yarn:factor=2",
    "hope",
    "hope-ab1",
    "hope+yarn:factor=2",
    "hope+pi:factor=4",
    "nope",
    # windowed methods go through the attention-function hook
    "rerope:window=24",
    "rerope:window=24,logn=true",
    "self-extend:window=24,group=3",
    "hirope:window=24,chunk=10",
]
WINDOWED = ["rerope:window=24", "self-extend:window=24,group=3", "hirope:window=24,chunk=10"]
NON_ROTARY = ["alibi", "kerple-log", "kerple-power", "fire", "learned"]


# -- helpers ----------------------------------------------------------------------------------


def _twin(hf_model, spec: str) -> Transformer:
    """ropelab's Transformer with the HF model's weights (names minus ``model.``)."""
    config = hf_config_to_ropelab(hf_model.config.to_dict())
    assert (config.rope_base, config.train_len) == (THETA, MAX_POS)
    config.pe = spec
    model = Transformer(config)
    state = unfused({key.removeprefix("model."): value for key, value in hf_model.state_dict().items()}, config)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def models():
    """arch -> (HF model, ropelab twin); every test leaves the HF model unpatched."""
    pairs = {}
    for i, arch in enumerate(ARCHS):
        model = tiny_hf_model(arch, seed=i)
        pairs[arch] = (model, _twin(model, "rope"))
    return pairs


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def original_logits(models, ids):
    return {arch: hf_logits(model, ids) for arch, (model, _) in models.items()}


# -- logits parity ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("arch", ARCHS)
def test_patched_logits_match_ropelab(models, ids, arch: str, spec: str) -> None:
    model, twin = models[arch]
    try:
        encoding = hf.patch(model, spec)
        assert hf.is_patched(model) and hf.patched_spec(model) == _canonical(spec)
        assert encoding.ctx.train_len == MAX_POS and encoding.ctx.head_dim == DIM // HEADS
        got = hf_logits(model, ids)
    finally:
        hf.unpatch(model)
    with torch.no_grad():
        expected = twin.with_method(spec)(ids)
    assert expected.std() > 0.1, "degenerate logits: the comparison would prove nothing"
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_rope_patch_equals_hf_rope_and_unpatch_restores(models, ids, original_logits, arch: str) -> None:
    model, _ = models[arch]
    original = model.model.rotary_emb
    expected = original_logits[arch]
    hf.patch(model, "rope")
    assert model.model.rotary_emb is not original
    torch.testing.assert_close(hf_logits(model, ids), expected, atol=ATOL, rtol=0)
    assert hf.unpatch(model) is True
    assert model.model.rotary_emb is original and not hf.is_patched(model) and hf.patched_spec(model) is None
    assert torch.equal(hf_logits(model, ids), expected)
    assert hf.unpatch(model) is False  # unpatching an unpatched model is a no-op


@pytest.mark.parametrize("arch", ARCHS)
def test_hope_changes_the_logits(models, ids, original_logits, arch: str) -> None:
    model, _ = models[arch]
    hf.patch(model, "hope")
    try:
        assert max_diff(hf_logits(model, ids), original_logits[arch]) > 1e-3
    finally:
        hf.unpatch(model)
    assert torch.equal(hf_logits(model, ids), original_logits[arch])


def test_patching_twice_replaces_the_patch(models, ids, original_logits) -> None:
    model, twin = models["llama"]
    original = model.model.rotary_emb
    hf.patch(model, "hope")
    hf.patch(model, "yarn:factor=2")
    try:
        assert hf.patched_spec(model) == "rope+yarn:factor=2"
        assert model.model.rotary_emb.original is original  # no stacking
        with torch.no_grad():
            expected = twin.with_method("yarn:factor=2")(ids)
        torch.testing.assert_close(hf_logits(model, ids), expected, atol=ATOL, rtol=0)
    finally:
        assert hf.unpatch(model)
    assert model.model.rotary_emb is original and not hf.is_patched(model)
    assert torch.equal(hf_logits(model, ids), original_logits["llama"])


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["ropee", "yarn:factor=0.5", "yarn:fator=2", "alibi+yarn:factor=2", ""])
def test_bad_spec_raises_and_leaves_model_alone(models, spec: str) -> None:
    model, _ = models["llama"]
    original = model.model.rotary_emb
    with pytest.raises(SpecError):
        hf.patch(model, spec)
    assert model.model.rotary_emb is original and not hf.is_patched(model)


@pytest.mark.parametrize("spec", NON_ROTARY)
def test_non_rotary_spec_raises(models, spec: str) -> None:
    model, _ = models["qwen2"]
    with pytest.raises(RopelabError, match="RoPE-family methods only") as info:
        hf.patch(model, spec)
    assert spec.split("-")[0] in str(info.value)
    assert not hf.is_patched(model)


def test_unsupported_model_raises() -> None:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    gpt2 = transformers.GPT2LMHeadModel(config)
    for target in (gpt2, torch.nn.Linear(2, 2)):
        with pytest.raises(RopelabError, match=r"Llama.*Mistral.*Qwen2") as info:
            hf.patch(target, "rope")
    assert "gpt2" in str(info.value) or "config" in str(info.value)
    with pytest.raises(RopelabError, match="gpt2"):
        hf.patch(gpt2, "rope")


def test_train_len_override_and_bad_train_len(models) -> None:
    model, _ = models["mistral"]
    try:
        encoding = hf.patch(model, "hope", train_len=32)
        assert encoding.ctx.train_len == 32
    finally:
        hf.unpatch(model)
    with pytest.raises(RopelabError, match="train_len"):
        hf.patch(model, "hope", train_len=0)
    assert not hf.is_patched(model)


def test_context_reads_original_max_position_embeddings_and_theta() -> None:
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        head_dim=16,  # not hidden_size // heads
        num_hidden_layers=3,
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 500000.0,
        },
    )
    ctx = hf.hf_pe_context(config)
    assert (ctx.train_len, ctx.rope_base, ctx.head_dim, ctx.n_heads, ctx.dim, ctx.n_layers) == (
        64,
        500000.0,
        16,
        2,
        64,
        3,
    )
    assert hf.hf_pe_context(config, train_len=128).train_len == 128


# -- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["yarn:factor=2", *WINDOWED])
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_matches_ropelab(models, arch: str, spec: str) -> None:
    model, twin = models[arch]
    prompt = torch.randint(0, VOCAB, (2, 60), generator=torch.Generator().manual_seed(11))  # crosses 64
    hf.patch(model, spec)
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=10,
                min_new_tokens=10,
                do_sample=False,
                use_cache=True,
                eos_token_id=None,
                pad_token_id=0,
            )
    finally:
        hf.unpatch(model)
    new = out[:, prompt.shape[1] :]
    ours = twin.with_method(spec).generate(prompt, 10)
    assert new.shape == (2, 10)
    assert ours.tolist() == new.tolist()
    assert ours[0].tolist() != ours[1].tolist()  # not degenerate


# -- the replacement module -------------------------------------------------------------------


def test_rotary_module_dtype_and_legacy_call(models) -> None:
    model, _ = models["llama"]
    encoding = hf.patch(model, "hope+yarn:factor=2")
    original = copy.deepcopy(model.model.rotary_emb.original)  # the cast below must not touch the shared model
    hf.unpatch(model)
    rotary = hf.RopelabRotaryEmbedding(encoding, original)
    positions = torch.arange(LENGTH)[None]
    x = torch.zeros(1, dtype=torch.bfloat16)
    cos, sin = rotary(x, positions)
    assert cos.dtype == sin.dtype == torch.bfloat16 and cos.shape == (1, LENGTH, DIM // HEADS)
    cos32, sin32 = rotary(torch.zeros(1), positions)
    assert torch.equal(cos32[..., :8], cos32[..., 8:]) and torch.equal(sin32[..., :8], sin32[..., 8:])
    # transformers < 4.45 Mistral/Qwen2 call: rotary_emb(x, seq_len=N) -> [N, head_dim] tables
    table_cos, table_sin = rotary(torch.zeros(1), seq_len=LENGTH)
    assert torch.equal(table_cos, cos32[0]) and torch.equal(table_sin, sin32[0])
    # Casting the module keeps its angles float32 (and exact).
    encoding = rotary.encoding
    assert isinstance(encoding, RotaryEncoding)
    exact = encoding.inv_freq.clone()
    rotary.to(torch.bfloat16)
    assert encoding.inv_freq.dtype == torch.float32 and torch.equal(encoding.inv_freq, exact)


def test_legacy_per_layer_rotary_modules_are_patched(ids) -> None:
    """transformers 4.38-4.47 keep a rotary module in every attention layer: all are swapped."""
    model = tiny_hf_model("llama", seed=5)
    for layer in model.model.layers:
        layer.self_attn.rotary_emb = copy.deepcopy(model.model.rotary_emb)
    originals = [model.model.rotary_emb] + [layer.self_attn.rotary_emb for layer in model.model.layers]
    expected = hf_logits(model, ids)
    hf.patch(model, "hope")
    hf.patch(model, "pi:factor=2")
    patched = [model.model.rotary_emb] + [layer.self_attn.rotary_emb for layer in model.model.layers]
    assert all(isinstance(m, hf.RopelabRotaryEmbedding) for m in patched)
    assert [m.original for m in patched] == originals
    assert len({id(m.encoding) for m in patched}) == 1
    hf.unpatch(model)
    assert [model.model.rotary_emb] + [layer.self_attn.rotary_emb for layer in model.model.layers] == originals
    assert torch.equal(hf_logits(model, ids), expected)


# -- windowed methods -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", WINDOWED)
def test_windowed_patch_switches_attention_and_unpatch_restores(models, ids, spec: str) -> None:
    model, _ = models["llama"]
    before = model.config._attn_implementation
    unpatched = hf_logits(model, ids)  # not the module fixture: another test round-trips dtypes
    hf.patch(model, spec)
    try:
        assert model.config._attn_implementation == hf.WINDOW_ATTENTION
        assert max_diff(hf_logits(model, ids), unpatched) > 1e-3
        hf.patch(model, "rope")  # a plain rotary patch gives the attention implementation back
        assert model.config._attn_implementation == before
    finally:
        hf.unpatch(model)
    assert model.config._attn_implementation == before
    assert torch.equal(hf_logits(model, ids), unpatched)


def test_hirope_reads_hierarchical_positions_from_a_forward_keyword(models, ids) -> None:
    model, twin = models["llama"]
    T = ids.shape[1]
    positions = torch.stack((torch.arange(T) % 17, torch.arange(T) // 17), dim=-1)[None]
    spec = "hirope:window=24"
    hf.patch(model, spec)
    try:
        with torch.no_grad():
            got = model(input_ids=ids, use_cache=False, ropelab_positions=positions).logits
            chunked = hf_logits(model, ids)
    finally:
        hf.unpatch(model)
    with torch.no_grad():
        expected = twin.with_method(spec)(ids, positions=positions)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert max_diff(got, chunked) > 1e-3  # the positions were used, not the default chunks


def test_a_llama3_scaled_model_keeps_its_frequencies_under_a_windowed_patch(capsys) -> None:
    """Llama 3.1 rope (transformers' ``llama3``): ``self-extend`` runs over the llama3 frequencies
    (a window covering the input gives the unpatched logits), a lone ``yarn`` is refused, and a
    spec naming its base replaces the rope type with a log line."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": MAX_POS, "rope_theta": THETA, "max_position_embeddings": 8 * MAX_POS}  # fmt: skip
    model = tiny_hf_model("llama", **rope)
    ids = torch.randint(0, VOCAB, (1, 3 * MAX_POS), generator=torch.Generator().manual_seed(0))
    own = hf_logits(model, ids)
    encoding = hf.patch(model, f"self-extend:window={4 * MAX_POS},group=2")
    assert encoding.spec == f"self-extend:group=2,window={4 * MAX_POS}+llama3:factor=8"
    assert max_diff(hf_logits(model, ids), own) < 1e-5
    plain = copy.deepcopy(model)
    hf.unpatch(plain)
    hf.patch(plain, "rope+pi:factor=1")  # names its base: replaces llama3, and says so
    assert max_diff(hf_logits(plain, ids), own) > 1e-3
    assert "replaces the model's own rope+llama3:factor=8" in capsys.readouterr().err
    with pytest.raises(SpecError, match="would replace the model's own llama3:factor=8"):
        hf.patch(model, "yarn:factor=2")
