"""``hf.patch`` on the families ropelab runs only inside transformers: Gemma 2 (logit soft-capping,
sliding layers), Gemma 3 (per-layer-type rope), StarCoder2 (sliding window), OLMo 2 and GPT-NeoX
(partial rotary).

Tiny random models built from transformers' own config classes (float32, CPU, seeded,
:func:`tests.helpers.tiny_family_model`). The model's own rope through the patch must give
transformers' logits (1e-5), with and without left padding; a windowed method whose window covers
the input must give them too; sliding windows keep working under rotary methods and are refused,
with one line, by windowed methods once the input outgrows them.
"""

from __future__ import annotations

import pytest
import torch

from ropelab.core.errors import RopelabError, SpecError
from ropelab.integrations import hf
from ropelab.pretrained.registry import load_model
from tests.helpers import MAX_POS, SLIDING, VOCAB, max_diff, tiny_family_model

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
#: windowed methods on Gemma (``query_pre_attn_scalar`` 24, head size 16): the softmax scale is folded
#: into the queries, which rounds differently from transformers' scaled scores (measured: <= 1.5e-5 on
#: logits up to 7; bit-identical when the two sizes agree, as in Gemma 3 1B and Gemma 2 9B)
ATOL_SCALED = 3e-5
FAMILIES = ["gemma2", "gemma3_text", "starcoder2", "olmo2", "gpt_neox"]
SLIDING_FAMILIES = ["gemma2", "gemma3_text", "starcoder2"]
ROTARY = ["yarn:factor=2", "pi:factor=2", "dynamic-ntk:factor=2", "hope", "nope"]
#: windows wider than SHORT: the near (plain RoPE) tables score every pair
WINDOWED = ["rerope:window=40", "self-extend:window=40,group=3", "hirope:window=40,chunk=10"]
SHORT = SLIDING - 2  # shorter than the sliding windows
LONG = MAX_POS + 16  # longer than the training length and the sliding windows


def _model(model_type: str, **config):
    """The family's tiny model; Gemma 2 without its logit soft-capping where ``uncapped``."""
    return tiny_family_model(model_type, seed=FAMILIES.index(model_type), **config)


def _uncapped(model_type: str):
    return _model(model_type, attn_logit_softcapping=None) if model_type == "gemma2" else _model(model_type)


def _ids(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))


def _left_padded(ids: torch.Tensor, pad: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ids`` with the first row's first ``pad`` tokens padding: ids, mask and positions from the
    mask (as ``generate`` gives them)."""
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    return ids.masked_fill(mask == 0, 0), mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def _logits(model, ids, mask=None, positions=None) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits


# -- (a) the model's own rope through the patch equals transformers --------------------------------


@pytest.mark.parametrize("model_type", FAMILIES)
def test_own_rope_through_the_patch_equals_transformers(model_type: str) -> None:
    """``rope`` is each family's own rope (Gemma 3: each layer type over its own base); the logits
    equal transformers', plain and left-padded, with Gemma 2's soft-capping in place."""
    model = _model(model_type)
    ids = _ids(LONG)
    padded = _left_padded(ids)
    expected, expected_padded = _logits(model, ids), _logits(model, *padded)
    assert expected.std() > 0.1
    encoding = hf.patch(model, "rope")
    try:
        assert hf.patched_spec(model) == "rope" and hf.config_entry(model.config)["hf_rope_type"] is not None
        assert max_diff(_logits(model, ids), expected) <= ATOL
        assert max_diff(_logits(model, *padded), expected_padded) <= ATOL
    finally:
        assert hf.unpatch(model)
    assert torch.equal(_logits(model, ids), expected)
    assert encoding.ctx.train_len == MAX_POS


@pytest.mark.parametrize("spec", ROTARY)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_rotary_methods_run_and_change_the_logits(model_type: str, spec: str) -> None:
    """Every rotary method runs on every family past the training length and the sliding windows
    (the sliding layers keep transformers' masks and cache)."""
    model = _model(model_type)
    ids = _ids(LONG)
    own = _logits(model, ids)
    hf.patch(model, spec)
    try:
        got = _logits(model, ids)
        with torch.no_grad():
            out = model.generate(input_ids=ids[:, :SHORT], max_new_tokens=8, do_sample=False, pad_token_id=0)
    finally:
        hf.unpatch(model)
    assert torch.isfinite(got).all() and max_diff(got, own) > 1e-3
    assert out.shape == (2, SHORT + 8)


def test_a_plain_transformers_directory_runs_the_recorded_method(tmp_path) -> None:
    """``yarn`` on Gemma 3 is recorded per layer type as transformers' own rope parameters: plain
    ``from_pretrained`` computes it; ``nope`` has no twin and ``hf.from_pretrained`` re-applies it."""
    model = _model("gemma3_text")
    ids = _ids(LONG)
    hf.patch(model, "yarn:factor=2")
    expected = _logits(model, ids)
    entry = hf.config_entry(model.config)
    assert entry["hf_rope_type"] == {"full_attention": "yarn", "sliding_attention": "yarn"}
    model.save_pretrained(tmp_path / "yarn")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "yarn").eval()
    assert max_diff(_logits(plain, ids), expected) <= ATOL
    hf.patch(model, "nope")
    expected = _logits(model, ids)
    assert hf.config_entry(model.config)["hf_rope_type"] is None
    model.save_pretrained(tmp_path / "nope")
    again = hf.from_pretrained(tmp_path / "nope")
    assert hf.patched_spec(again) == "nope" and max_diff(_logits(again, ids), expected) <= ATOL


# -- (b) windowed methods ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", WINDOWED)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_window_covering_the_input_gives_the_own_rope(model_type: str, spec: str) -> None:
    """Below its window a windowed method is plain RoPE: transformers' logits, plain and left-padded
    (Gemma's softmax scale and GPT-NeoX's partial rotation are the attention function's to honour)."""
    model = _uncapped(model_type)
    ids = _ids(SHORT)
    padded = _left_padded(ids)
    expected, expected_padded = _logits(model, ids), _logits(model, *padded)
    atol = ATOL_SCALED if model_type.startswith("gemma") else ATOL
    hf.patch(model, spec)
    try:
        assert model.config._attn_implementation == hf.WINDOW_ATTENTION
        assert max_diff(_logits(model, ids), expected) <= atol
        got = _logits(model, padded[0], padded[1])  # windowed methods take positions from the mask
        real = padded[1].bool()
        assert max_diff(got[real], expected_padded[real]) <= atol
    finally:
        hf.unpatch(model)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_short_window_changes_the_logits_and_generates(model_type: str) -> None:
    model = _uncapped(model_type)
    ids = _ids(SHORT)
    own = _logits(model, ids)
    hf.patch(model, "self-extend:window=8,group=3")
    try:
        assert max_diff(_logits(model, ids), own) > 1e-3
        with torch.no_grad():
            out = model.generate(input_ids=ids[:, :16], max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert out.shape == (2, 24)
    finally:
        hf.unpatch(model)
    assert model.config._attn_implementation != hf.WINDOW_ATTENTION


# -- (c) per-layer-type rope (Gemma 3) and partial rotary (GPT-NeoX) -----------------------------------


def test_gemma3_layer_types_keep_their_own_bases() -> None:
    model = _model("gemma3_text")
    original = model.model.rotary_emb
    positions = torch.arange(LONG)[None]
    hf.patch(model, "rope")
    try:
        rotary = model.model.rotary_emb
        assert set(rotary.encodings) == {"sliding_attention", "full_attention"}
        assert rotary.encodings["sliding_attention"].ctx.rope_base == 10000.0
        assert rotary.encodings["full_attention"].ctx.rope_base == 100000.0
        for kind in ("sliding_attention", "full_attention"):
            ours, theirs = rotary(torch.zeros(1), positions, kind), original(torch.zeros(1), positions, kind)
            assert max_diff(ours[0], theirs[0]) <= 1e-6 and max_diff(ours[1], theirs[1]) <= 1e-6
        assert (
            max_diff(rotary(torch.zeros(1), positions, "sliding_attention")[0], rotary(torch.zeros(1), positions)[0])
            > 0.1
        )
    finally:
        hf.unpatch(model)


def test_gemma3_scaled_global_layers_and_a_spec_per_layer_type(capsys) -> None:
    """Gemma 3 scales only its global layers (here ``linear``, factor 2): ``rope`` replaces that,
    with a log line; a mapping keeps it, a lone transform is refused naming the layer type, and a
    windowed method on the global layers alone runs past the local layers' sliding window."""
    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
    }
    model = _model("gemma3_text", rope_parameters=rope)
    ids = _ids(LONG)
    own = _logits(model, ids)
    hf.patch(model, {"full_attention": "rope+pi:factor=2"})
    assert hf.patched_spec(model) == {"full_attention": "rope+pi:factor=2", "sliding_attention": "rope"}
    assert max_diff(_logits(model, ids), own) <= ATOL
    hf.patch(model, "rope")
    assert "full_attention layers: rope replaces the model's own rope+pi:factor=2" in capsys.readouterr().err
    assert max_diff(_logits(model, ids), own) > 1e-3
    with pytest.raises(SpecError, match="full_attention layers: yarn:factor=2 would replace the model's own pi"):
        hf.patch(model, "yarn:factor=2")
    with pytest.raises(SpecError, match="needs those layer types"):
        hf.patch(model, {"global": "rope"})
    for attn in ("sdpa", "eager"):
        hf.unpatch(model)
        model.config._attn_implementation = attn
        own = _logits(model, ids)
        hf.patch(model, {"full_attention": f"self-extend:window={2 * LONG},group=2"})
        assert max_diff(_logits(model, ids), own) <= ATOL_SCALED  # local layers: transformers' attention
        hf.patch(model, {"full_attention": "self-extend:window=8,group=2"})
        assert max_diff(_logits(model, ids), own) > 1e-3
    hf.unpatch(model)
    assert model.config._attn_implementation == "eager"


def test_gpt_neox_rotates_its_rotary_share_only() -> None:
    """GPT-NeoX (``rotary_pct=0.5``): the encoding and its tables cover the first 8 channels of each
    16-channel head; ``nope`` leaves every channel unrotated."""
    model = _model("gpt_neox")
    ids = _ids(SHORT)
    hf.patch(model, "nope")
    try:
        encoding = hf.patched_encodings(model)["*"]
        assert encoding.ctx.head_dim == model.gpt_neox.layers[0].attention.rotary_ndims == 8
        cos, sin = model.gpt_neox.rotary_emb(torch.zeros(1), torch.arange(SHORT)[None])
        assert cos.shape == (1, SHORT, 8) and torch.equal(cos, torch.ones_like(cos)) and not sin.any()
        unrotated = _logits(model, ids)
    finally:
        hf.unpatch(model)
    assert max_diff(unrotated, _logits(model, ids)) > 1e-3


def test_gpt_neox_partial_rotary_factor_is_checked() -> None:
    model = _model("gpt_neox", rotary_pct=0.3)  # 0.3 * 16 = 4.8 -> 4 channels: fine
    assert hf.patch(model, "rope").ctx.head_dim == 4
    hf.unpatch(model)
    odd = _model("gpt_neox", rotary_pct=0.2)  # 3 channels: no rotation pairs
    with pytest.raises(RopelabError, match="rotates 3 channels"):
        hf.patch(odd, "rope")


# -- (d) sliding windows and soft-capping --------------------------------------------------------------


@pytest.mark.parametrize("model_type", SLIDING_FAMILIES)
def test_windowed_methods_refuse_inputs_longer_than_a_sliding_window(model_type: str) -> None:
    model = _uncapped(model_type)
    ids = _ids(SHORT)
    message = rf"attends only to the last {SLIDING} tokens \(sliding_window={SLIDING}\)"
    hf.patch(model, "rerope:window=8")
    try:
        with pytest.raises(RopelabError, match=message):
            _logits(model, _ids(LONG))
        with pytest.raises(RopelabError, match=message), torch.no_grad():  # cached decoding crosses the window
            model.generate(input_ids=ids, max_new_tokens=SLIDING, do_sample=False, pad_token_id=0)
    finally:
        hf.unpatch(model)
    assert hf.patched_spec(model) is None


def test_gemma2_soft_capping_is_kept_by_rotary_methods_and_refused_by_windowed_ones() -> None:
    capped = _model("gemma2")
    assert capped.config.attn_logit_softcapping == 50.0 and capped.config.final_logit_softcapping == 30.0
    with pytest.raises(RopelabError, match="caps its attention logits") as error:
        hf.patch(capped, "self-extend:window=40")
    assert "\n" not in str(error.value) and not hf.is_patched(capped)
    uncapped = _uncapped("gemma2")  # the same weights (same seed) without the attention cap
    ids = _ids(LONG)
    assert max_diff(_logits(capped, ids), _logits(uncapped, ids)) > 1e-3


# -- ropelab's own model refuses them --------------------------------------------------------------------


@pytest.mark.parametrize("model_type", FAMILIES)
def test_load_model_refuses_a_patch_only_family_in_one_line(tmp_path, model_type: str) -> None:
    model = _model(model_type)
    model.save_pretrained(tmp_path)
    with pytest.raises(RopelabError) as error:
        load_model(tmp_path)
    message = str(error.value)
    assert f"{model_type} runs in transformers via ropelab.integrations.hf.patch" in message
    assert "ropelab's own model does not implement it" in message and "\n" not in message
    loaded, tokenizer = hf.load(tmp_path, method="yarn:factor=2")  # transformers runs it
    assert type(loaded) is type(model) and hf.patched_spec(loaded) == "rope+yarn:factor=2" and tokenizer is None
