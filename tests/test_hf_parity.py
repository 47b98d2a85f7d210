"""Parity with Hugging Face ``transformers`` (tiny random models, float32, CPU).

ropelab's :class:`~ropelab.model.transformer.Transformer` is a Llama-family decoder whose
parameter names are HF's minus the ``model.`` prefix, and whose RoPE-family position methods
are meant to reproduce HF's rope types:

    HF rope type   ropelab spec
    default        rope
    linear         pi:factor=F
    dynamic        dynamic-ntk:factor=F
    llama3         llama3:factor=F,low_freq_factor=A,high_freq_factor=B (L = original_max_position_embeddings)
    proportional   proportional:fraction=P[,factor=F] (P = partial_rotary_factor)
    yarn           yarn:factor=F[,beta_fast,beta_slow,attention_factor,mscale,mscale_all_dim,truncate]

Checked here: logits of a randomly initialised ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` and
of ropelab with the same weights agree to 1e-5 inside and far beyond (>3x) the training length;
ropelab's frequency plans equal ``ROPE_INIT_FUNCTIONS``' ``inv_freq`` and attention scaling;
greedy generation gives the same tokens. Every parity test also checks that it can fail: a
perturbed weight, or the wrong position method, moves the logits far beyond the tolerance.
"""

from __future__ import annotations

import pytest
import torch

from ropelab.core.errors import RopelabError
from ropelab.model.config import ModelConfig
from ropelab.model.transformer import Transformer
from ropelab.pe import PEContext, RotaryEncoding, build
from tests.helpers import (
    DIM,
    EPS,
    HEADS,
    HIDDEN,
    KV_HEADS,
    LAYERS,
    MAX_POS,
    THETA,
    VOCAB,
    hf_logits,
    max_diff,
    randomise,
    tiny_hf_config,
)

transformers = pytest.importorskip("transformers")
rope_utils = pytest.importorskip("transformers.modeling_rope_utils")

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5

#: name -> (HF rope_parameters without rope_theta, ropelab pe spec)
ROPE_CASES: dict[str, tuple[dict, str]] = {
    "default": ({"rope_type": "default"}, "rope"),
    "linear": ({"rope_type": "linear", "factor": 2.0}, "pi:factor=2"),
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, "dynamic-ntk:factor=2"),
    "yarn": ({"rope_type": "yarn", "factor": 2.0}, "yarn:factor=2"),
    # MAX_POS = 64 with head_dim 16: wavelengths 6, 20, 63, 199, ... -> kept, smoothed (2), divided (5)
    "llama3": (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": MAX_POS,
        },
        "llama3:factor=8",
    ),
    # p-RoPE: a quarter / half of the head rotates (head_dim 16: 2 / 4 of 8 frequencies)
    "proportional": ({"rope_type": "proportional", "partial_rotary_factor": 0.25}, "proportional:fraction=0.25"),
    "proportional-factor": (
        {"rope_type": "proportional", "partial_rotary_factor": 0.5, "factor": 2.0},
        "proportional:fraction=0.5,factor=2",
    ),
    "llama3-custom": (
        {
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 0.5,
            "high_freq_factor": 2.0,
            "original_max_position_embeddings": MAX_POS,
        },
        "llama3:factor=4,low_freq_factor=0.5,high_freq_factor=2",
    ),
    "yarn-mscale": (
        {"rope_type": "yarn", "factor": 2.0, "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 1.0, "mscale_all_dim": 0.5},
        "yarn:factor=2,beta_fast=16,beta_slow=2,mscale=1,mscale_all_dim=0.5",
    ),
    "yarn-attention-factor": (
        {
            "rope_type": "yarn",
            "factor": 2.0,
            "beta_fast": 24.0,
            "beta_slow": 0.5,
            "mscale": 0.8,
            "mscale_all_dim": 0.3,
            "attention_factor": 1.3,
            "truncate": False,
        },
        "yarn:factor=2,beta_fast=24,beta_slow=0.5,mscale=0.8,mscale_all_dim=0.3,attention_factor=1.3,truncate=false",
    ),
}


# -- helpers ----------------------------------------------------------------------------------


def _hf_config(cls, rope_parameters: dict, tie: bool, attn: str, **extra):
    """The tiny HF config (``tests.helpers``) with ``rope_parameters`` and ``rope_theta`` = ``THETA``."""
    return tiny_hf_config(
        cls, tie=tie, rope_parameters={**rope_parameters, "rope_theta": THETA}, attn_implementation=attn, **extra
    )


def _ropelab_twin(hf_model, spec: str, tie: bool, qkv_bias: bool = False, qk_norm: bool = False) -> Transformer:
    config = ModelConfig(
        vocab_size=VOCAB,
        dim=DIM,
        n_layers=LAYERS,
        n_heads=HEADS,
        n_kv_heads=KV_HEADS,
        hidden_dim=HIDDEN,
        norm_eps=EPS,
        rope_base=THETA,
        train_len=MAX_POS,
        qkv_bias=qkv_bias,
        qk_norm=qk_norm,
        tie_embeddings=tie,
        pe=spec,
    )
    model = Transformer(config)
    hf_state = hf_model.state_dict()
    state = {key.removeprefix("model."): value for key, value in hf_state.items()}
    assert set(state) == set(model.state_dict()), "parameter names differ from HF's minus 'model.'"
    model.load_state_dict(state, strict=True)
    if tie:
        assert model.lm_head.weight is model.embed_tokens.weight
    else:
        assert not torch.equal(model.lm_head.weight, model.embed_tokens.weight)
    return model.eval()


def _pair(rope_name: str, tie: bool, attn: str, seed: int = 0):
    rope_parameters, spec = ROPE_CASES[rope_name]
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(_hf_config(transformers.LlamaConfig, dict(rope_parameters), tie, attn))
    assert hf.config._attn_implementation == attn
    randomise(hf, seed)  # std 0.1: attention sharp enough that positions matter; logits O(1) (std ~0.8)
    hf.eval()
    return hf, _ropelab_twin(hf, spec, tie)


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- 1. Llama logits, every HF rope type ------------------------------------------------------


@pytest.mark.parametrize("length", [48, 200])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("rope_name", list(ROPE_CASES))
def test_llama_logits_match_hf(rope_name: str, attn: str, tie: bool, length: int) -> None:
    hf, model = _pair(rope_name, tie, attn)
    ids = _tokens(2, length)
    expected = hf_logits(hf, ids)
    with torch.no_grad():
        got = model(ids)
    assert expected.std() > 0.1, "degenerate logits: the comparison would prove nothing"
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)

    # The test can fail: the wrong position method moves the logits far past the tolerance
    # (dynamic NTK is plain RoPE up to the training length, so only beyond it).
    if rope_name != "default" and (rope_name != "dynamic" or length > MAX_POS):
        with torch.no_grad():
            plain = model.with_method("rope")(ids)
        assert max_diff(plain, expected) > 1e-2


def test_llama_parity_is_sensitive_to_weights() -> None:
    hf, model = _pair("default", tie=False, attn="sdpa")
    ids = _tokens(1, 48)
    expected = hf_logits(hf, ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, atol=ATOL, rtol=0)
        for name in ("layers.1.self_attn.k_proj.weight", "layers.0.post_attention_layernorm.weight", "lm_head.weight"):
            param = model.get_parameter(name)
            saved = param.detach().clone()
            param.view(-1)[0] += 1e-2
            assert max_diff(model(ids), expected) > 1e-4, name
            param.copy_(saved)
        torch.testing.assert_close(model(ids), expected, atol=ATOL, rtol=0)


# -- 2. Qwen2 (q/k/v biases) ------------------------------------------------------------------


@pytest.mark.parametrize("length", [48, 200])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_qwen2_logits_match_hf(tie: bool, length: int) -> None:
    torch.manual_seed(0)
    config = _hf_config(transformers.Qwen2Config, {"rope_type": "default"}, tie, "sdpa", use_sliding_window=False)
    hf = transformers.Qwen2ForCausalLM(config)
    randomise(hf, seed=3)
    hf.eval()
    biases = [p for name, p in hf.named_parameters() if name.endswith("_proj.bias")]
    assert len(biases) == 3 * LAYERS and all(bool(b.abs().min() > 0) for b in biases)
    model = _ropelab_twin(hf, "rope", tie, qkv_bias=True)

    ids = _tokens(2, length, seed=5)
    expected = hf_logits(hf, ids)
    with torch.no_grad():
        got = model(ids)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        # The biases matter: zeroing the key bias of layer 0 moves the logits.
        model.layers[0].self_attn.k_proj.bias.zero_()
        assert max_diff(model(ids), expected) > 1e-3


# -- 3. Frequency plans vs ROPE_INIT_FUNCTIONS ------------------------------------------------

#: (head_dim, rope_theta, factor, train_len)
FREQ_COMBOS = [
    (16, 10000.0, 2.0, 64),
    (64, 10000.0, 4.0, 2048),
    (128, 500000.0, 8.0, 8192),
    (128, 1_000_000.0, 2.5, 4096),
    (96, 10000.0, 16.0, 512),
    (32, 50000.0, 1.0, 256),
]

#: (HF rope_type, extra HF rope_parameters, ropelab transform spec without factor)
FREQ_TYPES = [
    pytest.param("default", {}, "", id="default"),
    pytest.param("linear", {}, "pi", id="linear"),
    pytest.param("dynamic", {}, "dynamic-ntk", id="dynamic"),
    pytest.param("yarn", {}, "yarn", id="yarn"),
    pytest.param(
        "yarn", {"beta_fast": 16.0, "beta_slow": 2.0, "mscale": 1.0, "mscale_all_dim": 0.5}, "yarn", id="yarn-mscale"
    ),
    pytest.param(
        "yarn",
        {"beta_fast": 8.0, "beta_slow": 0.25, "mscale": 0.707, "mscale_all_dim": 0.707, "truncate": False},
        "yarn",
        id="yarn-no-truncate",
    ),
    pytest.param(
        "yarn", {"attention_factor": 1.25, "beta_fast": 40.0, "beta_slow": 1.5}, "yarn", id="yarn-attention-factor"
    ),
    pytest.param("llama3", {"low_freq_factor": 1.0, "high_freq_factor": 4.0}, "llama3", id="llama3"),
    pytest.param("llama3", {"low_freq_factor": 2.0, "high_freq_factor": 8.0}, "llama3", id="llama3-narrow"),
]


def _spec(rope_type: str, transform: str, factor: float, extra: dict) -> str:
    if rope_type == "default":
        return "rope"
    params = {"factor": factor, **extra}
    text = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
    return f"{transform}:{text}"


def _hf_inv_freq(config, rope_type: str, seq_len: int | None):
    if rope_type == "default":
        return transformers.models.llama.modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return rope_utils.ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)


@pytest.mark.parametrize(("rope_type", "extra", "transform"), FREQ_TYPES)
@pytest.mark.parametrize(("head_dim", "base", "factor", "train_len"), FREQ_COMBOS)
def test_frequency_plan_matches_rope_init_functions(
    head_dim: int, base: float, factor: float, train_len: int, rope_type: str, extra: dict, transform: str
) -> None:
    n_heads = 4
    config = transformers.LlamaConfig(
        hidden_size=head_dim * n_heads,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        head_dim=head_dim,
        max_position_embeddings=train_len,
        rope_parameters={
            "rope_type": rope_type,
            "rope_theta": base,
            **({} if rope_type == "default" else {"factor": factor}),
            **extra,
            # llama3's original context is ropelab's train length
            **({"original_max_position_embeddings": train_len} if rope_type == "llama3" else {}),
        },
    )
    ctx = PEContext(head_dim=head_dim, n_heads=n_heads, train_len=train_len, rope_base=base)
    encoding = build(_spec(rope_type, transform, factor, extra), ctx)
    assert isinstance(encoding, RotaryEncoding)

    seq_lens = [train_len // 2, train_len, 3 * train_len + 7] if rope_type == "dynamic" else [train_len]
    for seq_len in seq_lens:
        inv_freq, scaling = _hf_inv_freq(config, rope_type, seq_len)
        plan = encoding.plan(seq_len)
        assert plan.theta.dtype == torch.float32 and plan.theta.shape == inv_freq.shape
        torch.testing.assert_close(plan.theta, inv_freq.to(torch.float32), rtol=1e-6, atol=0)
        assert plan.attention_factor == pytest.approx(scaling, rel=1e-6, abs=0)
    # The static tables the model uses are the train-length plan.
    torch.testing.assert_close(encoding.inv_freq, _hf_inv_freq(config, rope_type, train_len)[0], rtol=1e-6, atol=0)
    if rope_type == "dynamic" and factor > 1:  # the dynamic base really moves beyond train_len
        assert not torch.allclose(encoding.plan(3 * train_len + 7).theta, encoding.plan(train_len).theta)


# -- 4. Greedy generation ---------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len", [12, 50])
def test_greedy_generation_matches_hf(prompt_len: int) -> None:
    hf, model = _pair("default", tie=False, attn="sdpa", seed=7)
    ids = _tokens(2, prompt_len, seed=11)
    with torch.no_grad():
        hf_out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=20,
            min_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    hf_new = hf_out[:, prompt_len:]
    ours = model.generate(ids, 20)
    assert hf_new.shape == (2, 20)
    assert ours.tolist() == hf_new.tolist()
    # Not degenerate: the continuation depends on the prompt and is not one repeated token.
    assert ours[0].tolist() != ours[1].tolist()
    assert all(len(set(row)) > 1 for row in ours.tolist())
    # Same tokens without the KV cache (prompt 50 + 20 new crosses max_position_embeddings).
    assert model.generate(ids, 20, use_cache=False).tolist() == hf_new.tolist()


@pytest.mark.parametrize("qkv_bias,tie,qk_norm", [(False, True, False), (True, False, False), (False, False, True)])
def test_to_hf_model_is_the_same_network(qkv_bias, tie, qk_norm):
    """ropelab -> transformers export: same logits, and the config maps back to itself."""
    from ropelab.pretrained.hf_dir import hf_config_to_ropelab, ropelab_to_hf_config, to_hf_model

    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", qkv_bias=qkv_bias, tie_embeddings=tie, train_len=64, qk_norm=qk_norm)
    model = Transformer(config).eval()
    with torch.no_grad():  # non-zero biases and non-unit norms, so a dropped one would show
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.5)
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.uniform_(0.5, 1.5)
    hf = to_hf_model(model)
    expected = "Qwen3ForCausalLM" if qk_norm else "Qwen2ForCausalLM" if qkv_bias else "LlamaForCausalLM"
    assert type(hf).__name__ == expected
    ids = torch.randint(0, config.vocab_size, (2, 100))  # beyond max_position_embeddings: plain RoPE either way
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=1e-5)
    assert hf_config_to_ropelab(ropelab_to_hf_config(config)) == config


def test_to_hf_model_refuses_methods_hf_cannot_express():
    from ropelab.pretrained.hf_dir import to_hf_model

    with pytest.raises(RopelabError, match="only rope"):
        to_hf_model(Transformer(ModelConfig.from_name("tiny", pe="hope")))


@pytest.mark.parametrize("head_dim", [16, 64, 128])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_proportional_plan_matches_rope_init_functions(head_dim: int, fraction: float, factor: float) -> None:
    config = transformers.LlamaConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
        rope_parameters={"rope_type": "proportional", "partial_rotary_factor": fraction, "factor": factor,
                         "rope_theta": 50000.0},
    )  # fmt: skip
    inv_freq, scaling = rope_utils.ROPE_INIT_FUNCTIONS["proportional"](config, None)
    ctx = PEContext(head_dim=head_dim, n_heads=2, train_len=128, rope_base=50000.0)
    plan = build(f"proportional:fraction={fraction},factor={factor}", ctx).plan()
    torch.testing.assert_close(plan.theta, inv_freq.to(torch.float32), rtol=1e-6, atol=0)
    assert plan.attention_factor == scaling == 1.0
    assert int((plan.theta > 0).sum()) == int(fraction * head_dim // 2)


# -- Qwen3 (per-head query/key RMSNorm) ---------------------------------------------------------


@pytest.mark.parametrize("length", [48, 200])
@pytest.mark.parametrize("spec", ["rope", "yarn:factor=2", "self-extend:window=24,group=3", "hirope:window=24"])
def test_qwen3_logits_match_hf_and_hf_patch(spec: str, length: int) -> None:
    """A tiny random Qwen3 (q_norm / k_norm before the rotation): ropelab's model with the same
    weights equals transformers' logits, and so does the HF model patched with the same method."""
    from ropelab.integrations import hf as hf_integration
    from tests.helpers import tiny_hf_model

    hf = tiny_hf_model("qwen3", seed=4)
    norms = [p for name, p in hf.named_parameters() if name.endswith(("q_norm.weight", "k_norm.weight"))]
    assert len(norms) == 2 * LAYERS and all(float((n - 1).abs().max()) > 1e-3 for n in norms)  # randomised
    model = _ropelab_twin(hf, "rope", tie=False, qk_norm=True)
    ids = _tokens(2, length, seed=6)
    expected = hf_logits(hf, ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, atol=ATOL, rtol=0)
        if spec != "rope":
            hf_integration.patch(hf, spec)
            torch.testing.assert_close(hf_logits(hf, ids), model.with_method(spec)(ids), atol=ATOL, rtol=0)
        # the norms matter: without them the logits move far
        for layer in model.layers:
            layer.self_attn.q_norm.weight.data.mul_(1.5)
        assert max_diff(model(ids), hf_logits(hf, ids)) > 1e-3
