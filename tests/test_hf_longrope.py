"""LongRoPE (transformers' rope type ``longrope``, Phi-3) as the ropelab transform ``longrope``.

Its per-frequency factor lists are written in the spec with ``/`` between values
(``longrope:short_factor=1/1.1/...,long_factor=...``). The frequencies and attention factor equal
``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["longrope"]`` (1e-6, fp32) on both sides of
the switch at ``original_max_position_embeddings``; a Phi-3 model with rope type ``longrope`` keeps
it under ``hf.patch``, in a saved directory and in ropelab's own model, with transformers' logits.
"""

from __future__ import annotations

import math

import pytest
import torch

from ropelab.core.errors import RopelabError, SpecError
from ropelab.integrations import hf
from ropelab.pe import PEContext, RotaryEncoding, build, canonical_spec
from ropelab.pretrained.hf_dir import hf_config_to_ropelab
from ropelab.pretrained.registry import load_model
from tests.helpers import DIM, HEADS, MAX_POS, THETA, VOCAB, hf_logits, max_diff, randomise, tiny_hf_config

transformers = pytest.importorskip("transformers")
rope_utils = pytest.importorskip("transformers.modeling_rope_utils")

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
HALF = DIM // HEADS // 2  # frequencies of the tiny models' heads
SHORT = [round(1.0 + 0.05 * j, 4) for j in range(HALF)]
LONG = [round(1.0 + 1.5 * j**1.2, 4) for j in range(HALF)]


def _factors(values) -> str:
    return "/".join(str(v) for v in values)


def _phi3(factor: float | None = None, **rope):
    """A tiny random Phi-3 with rope type ``longrope``: original context ``MAX_POS``, 4x that in
    ``max_position_embeddings`` (transformers' default factor)."""
    parameters = {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG,
                  "original_max_position_embeddings": MAX_POS, "rope_theta": THETA, **rope}  # fmt: skip
    if factor is not None:
        parameters["factor"] = factor
    config = tiny_hf_config(
        transformers.Phi3Config, tie=False, rope_parameters=parameters, max_position_embeddings=4 * MAX_POS,
        sliding_window=None, original_max_position_embeddings=MAX_POS,
    )  # fmt: skip
    model = transformers.Phi3ForCausalLM(config)
    randomise(model, 3)
    return model.eval()


# -- the spec ------------------------------------------------------------------------------------------


def test_the_spec_carries_the_factor_lists() -> None:
    spec = f"longrope:short_factor={_factors(SHORT)},long_factor={_factors(LONG)},factor=4"
    canonical = canonical_spec(spec)
    assert canonical.startswith("rope+longrope:short_factor=1/1.05/") and canonical_spec(canonical) == canonical
    assert canonical_spec("longrope") == "rope+longrope"  # lists of one: 1 for every frequency (plain RoPE)
    ctx = PEContext(head_dim=2 * HALF, n_heads=HEADS, train_len=MAX_POS)
    plain, scaled = build("longrope", ctx), build(spec, ctx)
    assert isinstance(scaled, RotaryEncoding) and scaled.rotation_depends_on_length
    assert torch.equal(plain.plan(10 * MAX_POS).theta, build("rope", ctx).plan().theta)
    theta = build("rope", ctx).plan().theta
    torch.testing.assert_close(scaled.plan(MAX_POS).theta, theta / torch.tensor(SHORT), rtol=1e-6, atol=0)
    torch.testing.assert_close(scaled.plan(MAX_POS + 1).theta, theta / torch.tensor(LONG), rtol=1e-6, atol=0)
    expected = math.sqrt(1 + math.log(4) / math.log(MAX_POS))
    assert scaled.plan(MAX_POS).attention_factor == scaled.plan(MAX_POS + 1).attention_factor == pytest.approx(expected)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("longrope:short_factor=1/2", "short_factor has 2 values; give one per frequency (head_dim / 2 = 8)"),
        ("longrope:long_factor=1//2", "long_factor='' is not valid; long_factor must be a number > 0"),
        ("longrope:short_factor=0", "short_factor='0' is out of range"),
        ("longrope:short_factor=a/1", "short_factor='a' is not valid"),
        ("longrope:factor=0.5", "factor='0.5' is out of range"),
        ("self-extend+longrope", "'longrope' changes the angles with the input length"),
    ],
)
def test_bad_longrope_specs_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(SpecError) as error:
        build(spec, PEContext(head_dim=2 * HALF, n_heads=HEADS, train_len=MAX_POS))
    assert message in str(error.value) and "\n" not in str(error.value)


# -- parity with ROPE_INIT_FUNCTIONS["longrope"] ---------------------------------------------------------

#: (head_dim, rope_theta, original_max_position_embeddings, max_position_embeddings, rope parameters)
GRID = [
    (16, 10000.0, 64, 256, {}),  # factor from max_position_embeddings / original
    (64, 10000.0, 4096, 131072, {}),  # Phi-3-mini-128k's shape
    (96, 10000.0, 4096, 131072, {"factor": 32.0}),
    (128, 500000.0, 8192, 8192, {}),  # factor 1: attention factor 1
    (32, 50000.0, 256, 1024, {"attention_factor": 1.3}),
    (128, 1_000_000.0, 2048, 4096, {"factor": 2.5, "attention_factor": 0.9}),
]


@pytest.mark.parametrize(("head_dim", "base", "original", "longest", "extra"), GRID)
def test_frequencies_and_attention_factor_match_rope_init_functions(
    head_dim: int, base: float, original: int, longest: int, extra: dict
) -> None:
    generator = torch.Generator().manual_seed(head_dim)
    short = (1 + 0.5 * torch.rand(head_dim // 2, generator=generator, dtype=torch.float64)).tolist()
    long = (1 + 60 * torch.rand(head_dim // 2, generator=generator, dtype=torch.float64)).tolist()
    config = transformers.LlamaConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, max_position_embeddings=longest,
        rope_parameters={"rope_type": "longrope", "rope_theta": base, "short_factor": short, "long_factor": long,
                         "original_max_position_embeddings": original, **extra},
    )  # fmt: skip
    ctx = hf.hf_pe_context(config)
    assert (ctx.train_len, ctx.rope_base, ctx.head_dim) == (original, base, head_dim)
    spec = hf_config_to_ropelab({**config.to_dict(), "model_type": "llama", "vocab_size": 8, "intermediate_size": 8,
                                 "num_hidden_layers": 1}).pe  # fmt: skip
    encoding = build(spec, ctx)
    for seq_len in (None, original // 2, original, original + 1, 3 * original):
        inv_freq, scaling = rope_utils.ROPE_INIT_FUNCTIONS["longrope"](config, None, seq_len=seq_len)
        plan = encoding.plan(seq_len)
        assert plan.theta.dtype == torch.float32 and plan.theta.shape == inv_freq.shape
        torch.testing.assert_close(plan.theta, inv_freq.to(torch.float32), rtol=1e-6, atol=0)
        assert plan.attention_factor == pytest.approx(scaling, rel=1e-6, abs=0)


# -- a Phi-3 model with longrope -----------------------------------------------------------------------


@pytest.mark.parametrize("factor", [None, 8.0])
@pytest.mark.parametrize("length", [MAX_POS - 1, MAX_POS, MAX_POS + 1, 2 * MAX_POS + 30])
def test_phi3_keeps_longrope_under_the_patch_with_transformers_logits(factor, length: int) -> None:
    """The model's own method (``rope`` replaced by nothing: the spec ropelab reads from its config)
    gives transformers' logits in the short and the long regime."""
    model = _phi3(factor)
    ids = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(length))
    expected = hf_logits(model, ids)
    own = hf_config_to_ropelab(model.config.to_dict()).pe
    assert canonical_spec(own).startswith("rope+longrope:short_factor=")
    hf.patch(model, own)
    try:
        assert hf.patched_spec(model) == canonical_spec(own)
        assert hf.config_entry(model.config)["hf_rope_type"] == "longrope"
        assert max_diff(hf_logits(model, ids), expected) <= ATOL
    finally:
        hf.unpatch(model)


def test_phi3_longrope_is_never_replaced_silently(capsys) -> None:
    model = _phi3()
    ids = torch.randint(0, VOCAB, (1, 2 * MAX_POS), generator=torch.Generator().manual_seed(0))
    expected = hf_logits(model, ids)
    with pytest.raises(SpecError, match="yarn:factor=2 would replace the model's own longrope"):
        hf.patch(model, "yarn:factor=2")
    with pytest.raises(SpecError, match="'longrope' changes the angles with the input length"):
        hf.patch(model, "self-extend:window=16")  # it would run over longrope, which is length-dependent
    assert not hf.is_patched(model)
    hf.patch(model, "rope")  # names its base: replaces longrope, and says so
    assert "rope replaces the model's own rope+longrope:short_factor=" in capsys.readouterr().err
    assert max_diff(hf_logits(model, ids), expected) > 1e-3
    hf.unpatch(model)
    assert torch.equal(hf_logits(model, ids), expected)


def test_phi3_longrope_directory_in_plain_transformers_and_in_ropelab(tmp_path) -> None:
    """Saved after a patch (HF-native ``longrope`` fields), plain transformers computes it; ropelab's
    own model loads the directory with its longrope, giving transformers' logits on both sides of
    ``original_max_position_embeddings``."""
    model = _phi3(factor=8.0)
    hf.patch(model, hf_config_to_ropelab(model.config.to_dict()).pe)
    model.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours, _ = load_model(tmp_path)
    assert ours.pe.spec.startswith("rope+longrope:short_factor=1/1.05/") and ours.config.train_len == MAX_POS
    for length in (MAX_POS // 2, 2 * MAX_POS + 30):
        ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))
        expected = hf_logits(model, ids)
        assert max_diff(hf_logits(plain, ids), expected) <= ATOL
        with torch.no_grad():
            assert max_diff(ours(ids), expected) <= ATOL


def test_cached_generation_across_the_switch_is_transformers_own() -> None:
    """Across ``original_max_position_embeddings`` HF's KV cache keeps the short-factor rotation of
    earlier keys; the patched model does exactly what plain transformers does there (module docstring
    of ropelab.integrations.hf), token for token."""
    model = _phi3()
    prompt = torch.randint(0, VOCAB, (2, MAX_POS - 6), generator=torch.Generator().manual_seed(5))
    options = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        expected = model.generate(input_ids=prompt, **options)
    hf.patch(model, hf_config_to_ropelab(model.config.to_dict()).pe)
    try:
        with torch.no_grad():
            got = model.generate(input_ids=prompt, **options)
    finally:
        hf.unpatch(model)
    assert got.tolist() == expected.tolist()


def test_a_longrope_config_without_its_lists_is_refused_in_one_line() -> None:
    config = tiny_hf_config(transformers.LlamaConfig, tie=False, rope_parameters={"rope_type": "default"}).to_dict()
    config["rope_parameters"] = {"rope_type": "longrope", "rope_theta": THETA, "short_factor": SHORT,
                                 "long_factor": ["x"] * HALF, "original_max_position_embeddings": MAX_POS}  # fmt: skip
    with pytest.raises(RopelabError, match="longrope's long_factor must be a list of numbers") as error:
        hf_config_to_ropelab(config)
    assert "\n" not in str(error.value)
    config["rope_parameters"]["long_factor"] = [1.0] * (HALF + 1)  # a spec, refused where it meets the head size
    spec = hf_config_to_ropelab(config).pe
    with pytest.raises(SpecError, match="long_factor has 9 values"):
        build(spec, PEContext(head_dim=2 * HALF, n_heads=HEADS, train_len=MAX_POS))
