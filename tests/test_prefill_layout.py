"""Decoding's two memory/speed levers: a prompt prefilled chunk by chunk gives the logits and
cache of one pass, and column-major linear weights compute the same numbers and save the same
checkpoint."""

from __future__ import annotations

import pytest
import torch

from ropelab import ModelConfig, Transformer, pe
from ropelab.model.generate import prefill
from ropelab.model.layout import column_major

SPECS = [m.name for m in pe.methods() if m.name != "learned"] + ["learned:max_len=64", "hirope:window=8,chunk=5"]
SPECS += ["rerope:window=8", "self-extend:window=8,group=3"]


def tiny(spec: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name("tiny", pe=spec, vocab_size=61, train_len=16)).eval()


@pytest.mark.parametrize("spec", SPECS)
def test_chunked_prefill_equals_one_pass_and_leaves_the_same_cache(spec):
    model = tiny(spec)
    ids = torch.randint(0, 61, (2, 37), generator=torch.Generator().manual_seed(1))
    nxt = torch.randint(0, 61, (2, 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(ids)[:, -1]
        one_cache, chunked_cache = model.new_cache(), model.new_cache()
        one = prefill(model, ids, one_cache, chunk=10_000)
        chunked = prefill(model, ids, chunked_cache, chunk=5)
        after_one = model(nxt, cache=one_cache)[:, -1]
        after_chunked = model(nxt, cache=chunked_cache)[:, -1]
    torch.testing.assert_close(one, reference, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, reference, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(after_chunked, after_one, atol=2e-5, rtol=1e-5)
    assert chunked_cache.length == one_cache.length == 38


def test_chunked_prefill_keeps_padding_and_hierarchical_positions():
    model = tiny("hirope:window=8,chunk=5")
    ids = torch.randint(0, 61, (2, 23), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 23, dtype=torch.bool)
    mask[1, :6] = False  # row 1 is left-padded
    tokens = torch.arange(23)
    positions = torch.stack((tokens, tokens // 7), dim=-1)[None].expand(2, -1, -1).clone()
    with torch.no_grad():
        reference = model(ids, positions=positions, attention_mask=mask)[:, -1]
        chunked = prefill(model, ids, model.new_cache(), positions=positions, attention_mask=mask, chunk=4)
    torch.testing.assert_close(chunked, reference, atol=2e-5, rtol=1e-5)


def test_a_length_dependent_rotation_takes_the_prompt_in_one_pass(monkeypatch):
    """Dynamic NTK's angles depend on the input length: chunks would change them, so it is one pass."""
    model = tiny("dynamic-ntk")
    calls = []
    original = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda ids, **kw: calls.append(ids.shape[1]) or original(ids, **kw))
    ids = torch.randint(0, 61, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        prefill(model, ids, model.new_cache(), chunk=8)
    assert calls == [40]
    calls.clear()
    rope = tiny("rope")
    monkeypatch.setattr(rope, "hidden_states", lambda ids, **kw: calls.append(ids.shape[1]) or original(ids, **kw))
    with torch.no_grad():
        prefill(rope, ids, rope.new_cache(), chunk=8)
    assert calls == [8, 8, 8, 8, 8]


def test_column_major_weights_keep_values_outputs_and_checkpoint(tmp_path):
    from ropelab.model.checkpoint import load_checkpoint, save_checkpoint

    model = tiny("rope")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 61, (1, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(ids)
    save_checkpoint(tmp_path / "a", model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    norm = model.norm.weight.data_ptr()
    changed = column_major(model)
    assert model.norm.weight.data_ptr() != norm  # its own memory: no view keeps a mapped file alive
    assert changed == len({id(m.weight) for m in linears})  # the tied head counted once
    for module in linears:
        out_features = module.weight.shape[0]
        assert module.weight.stride() == (1, out_features)  # the transpose of a contiguous [in, out]
    assert model.lm_head.weight is model.embed_tokens.weight  # still tied
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)
        assert model.generate(ids, 5).tolist() == tiny("rope").generate(ids, 5).tolist()
    assert column_major(model) == 0  # already laid out
    save_checkpoint(tmp_path / "b", model)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    loaded = load_checkpoint(tmp_path / "b")
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_load_model_lays_weights_out_for_decoding(tmp_path):
    from ropelab.model.checkpoint import save_checkpoint
    from ropelab.pretrained.registry import load_model

    save_checkpoint(tmp_path / "ckpt", tiny("rope"))
    model, _ = load_model(tmp_path / "ckpt")
    assert not model.layers[0].self_attn.q_proj.weight.is_contiguous()
    assert model.layers[0].self_attn.q_proj.weight.t().is_contiguous()
