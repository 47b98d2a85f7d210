"""Bias methods (ALiBi, KERPLE, FIRE) attend query chunk by query chunk
(``ropelab.model.bias_attention``), with each chunk's bias or, for ALiBi and KERPLE at consecutive
positions, a strided view of one distance table: the results equal the one-shot computation --
the whole ``[B, H, T, T]`` bias, the causal ``-inf`` fill and one SDPA call, kept here as the
reference -- to 1e-5 in fp32, with padding, with the KV cache, and for the gradients of every
parameter, on both paths."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ropelab import ModelConfig, Transformer
from ropelab.model import bias_attention
from ropelab.model.transformer import Attention, _causal
from ropelab.pe import fire as fire_module
from ropelab.pe.alibi import ALiBi
from ropelab.pe.base import apply_rotary, relative_distance
from ropelab.pe.fire import Fire, scalar_mlp
from ropelab.pe.kerple import EPS, Kerple

SPECS = ["alibi", "kerple-log", "kerple-power", "kerple-log:shared=true", "fire", "fire:shared=true,width=8"]
TOL = dict(atol=1e-5, rtol=1e-5)


# -- the reference: the materialised computation ropelab used before the chunked path ----------------
def reference_bias(pe, layer: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """The bias formulas, element by element over the whole ``[B|1, H, Tq, Tk]``."""
    if isinstance(pe, ALiBi):
        return -pe.slopes[None, :, None, None] * relative_distance(q_pos, k_pos).abs()
    if isinstance(pe, Kerple):
        index = 0 if pe.shared else layer
        r1 = pe.r1[index].clamp(min=EPS)[None, :, None, None]
        distance = relative_distance(q_pos, k_pos).abs()
        if pe.kernel == "log":
            return -r1 * torch.log1p(pe.r2[index].clamp(min=EPS)[None, :, None, None] * distance)
        return -r1 * distance.pow(pe.r2[index].clamp(min=EPS, max=2.0)[None, :, None, None])
    assert isinstance(pe, Fire)
    fire = pe.functions[0 if pe.shared else layer]
    distance = relative_distance(q_pos, k_pos).clamp(min=0)[:, 0]
    threshold = (fire.L_multiplier.float() * fire.init_L.float()).abs()
    normaliser = torch.maximum(q_pos.float(), threshold)[:, :, None]
    c = fire.c.float()
    x = torch.log(torch.abs(c * distance) + 1) / (torch.log(torch.abs(c * normaliser) + 1) + fire.eps)
    first, last = fire.mlp[0], fire.mlp[2]
    hidden = F.relu(F.linear(x.unsqueeze(-1), first.weight.float(), first.bias.float()))
    return F.linear(hidden, last.weight.float(), last.bias.float()).permute(0, 3, 1, 2)


def reference_forward(self, x, layer, pe, inputs, cache):
    """``Attention.forward`` as it was: one ``[B|1, H, T, past + T]`` float mask per layer."""
    B, T, _ = x.shape
    q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
    k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
    v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
    if inputs.q_rotation is not None:
        q = apply_rotary(q, inputs.q_rotation, self.layout)
        k = apply_rotary(k, inputs.k_rotation, self.layout)
    if cache is not None:
        k, v = cache.update(layer, k, v)
    bias = reference_bias(pe, layer, inputs.q_positions, inputs.k_positions)
    if inputs.causal_mask is not None or inputs.is_causal:
        allowed = inputs.causal_mask if inputs.causal_mask is not None else _causal(T, k.shape[2], x.device)
        bias = bias.masked_fill(~allowed, float("-inf"))
    repeat = self.n_heads // self.n_kv_heads
    k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def model_for(spec: str) -> Transformer:
    """A tiny model with sharp attention and learned bias parameters away from their initial values."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", pe=spec, vocab_size=61, train_len=16, n_heads=4, n_kv_heads=2))
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
        for name, p in model.pe.named_parameters():
            if name.endswith(("r1", "r2")):
                p.copy_(torch.rand_like(p) * 1.5)
            elif name.endswith(".c"):
                p.fill_(0.37)
            elif name.endswith("L_multiplier"):
                p.fill_(0.6)
    return model


def reference_of(model: Transformer) -> Transformer:
    return copy.deepcopy(model)


@pytest.fixture(params=[1, 7 * 2 * 4 * 50])
def small_chunks(monkeypatch, request):
    """Chunks of one query, or of about 14 (a shorter last one), so every path runs many chunks
    (with a bias per chunk, and reading the distance table)."""
    monkeypatch.setattr(bias_attention, "CHUNK_ELEMENTS", request.param)
    monkeypatch.setattr(bias_attention, "TABLE_CHUNK", 1 if request.param == 1 else 7)


@pytest.fixture(params=["table", "chunks"])
def path(monkeypatch, request):
    """``table``: distance-only biases read from one table where the positions allow it (the
    default); ``chunks``: every chunk builds its bias with ``attention_bias``."""
    if request.param == "chunks":
        monkeypatch.setattr(bias_attention, "_consecutive", lambda *args: False)
    return request.param


def run_reference(monkeypatch, fn):
    with monkeypatch.context() as patch:
        patch.setattr(Attention, "forward", reference_forward)
        return fn()


@pytest.mark.parametrize("spec", SPECS)
def test_chunked_logits_equal_the_materialised_bias(spec, small_chunks, path, monkeypatch):
    model = model_for(spec).eval()
    ids = torch.randint(0, 61, (2, 50), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(7, 57)[None]  # beyond FIRE's threshold, too
    with torch.no_grad():
        logits = model(ids, positions=positions)
        expected = run_reference(monkeypatch, lambda: model(ids, positions=positions))
    torch.testing.assert_close(logits, expected, **TOL)


@pytest.mark.parametrize("spec", SPECS)
def test_chunked_logits_with_padding_equal_the_materialised_bias(spec, small_chunks, monkeypatch):
    model = model_for(spec).eval()
    ids = torch.randint(0, 61, (3, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[0, :9] = 0  # left padding
    mask[1, 31:] = 0  # right padding
    mask[2, 12:15] = 0  # padding between real tokens
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
        expected = run_reference(monkeypatch, lambda: model(ids, attention_mask=mask))
    torch.testing.assert_close(logits, expected, **TOL)
    with torch.no_grad():  # and the padded row equals the row alone
        alone = model(ids[:1, 9:])
    torch.testing.assert_close(logits[:1, 9:], alone, **TOL)
    positions = torch.arange(40)[None]  # positions shared by the rows, given with the mask
    with torch.no_grad():
        logits = model(ids, positions=positions, attention_mask=mask)
        expected = run_reference(monkeypatch, lambda: model(ids, positions=positions, attention_mask=mask))
    torch.testing.assert_close(logits, expected, **TOL)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_steps_equal_the_materialised_bias(spec, padded, small_chunks, path, monkeypatch):
    model = model_for(spec).eval()
    ids = torch.randint(0, 61, (2, 36), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 36, dtype=torch.long)
    if padded:
        mask[1, :5] = 0

    def decode():
        cache = model.new_cache()
        pieces = [model(ids[:, :20], cache=cache, attention_mask=mask[:, :20])]
        pieces.append(model(ids[:, 20:27], cache=cache, attention_mask=mask[:, :27]))  # several queries, a past
        pieces += [model(ids[:, t : t + 1], cache=cache) for t in range(27, 36)]  # decode steps
        return torch.cat(pieces, dim=1)

    with torch.no_grad():
        cached = decode()
        expected = run_reference(monkeypatch, decode)
        full = model(ids, attention_mask=mask)
    torch.testing.assert_close(cached, expected, **TOL)
    torch.testing.assert_close(cached, full, **TOL)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_gradients_equal_the_materialised_bias(spec, recompute, padded, small_chunks, monkeypatch):
    if recompute:  # every chunk checkpointed: recomputed in the backward pass
        monkeypatch.setattr(bias_attention, "RECOMPUTE_ELEMENTS", 0)
    model = model_for(spec).train()
    reference = reference_of(model)
    ids = torch.randint(0, 61, (2, 45), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 45, dtype=torch.long)
    if padded:  # (the chunks' own biases; unpadded, ALiBi and KERPLE read the distance table)
        mask[1, :6] = 0

    def loss_of(m):
        logits = m(ids[:, :-1], attention_mask=mask[:, :-1])
        return (
            F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
            .view(2, -1)[mask[:, 1:].bool()]
            .mean()
        )

    loss = loss_of(model)
    loss.backward()
    expected = run_reference(monkeypatch, lambda: loss_of(reference))
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOL)
    grads = dict(reference.named_parameters())
    pe_grads = 0
    for name, p in model.named_parameters():
        if p.grad is None:
            assert grads[name].grad is None, name
            continue
        pe_grads += name.startswith("pe.")
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-6, rtol=1e-4, msg=name)
        assert torch.isfinite(p.grad).all(), name
    assert pe_grads or spec == "alibi"


def test_no_bias_larger_than_a_chunk_and_no_key_after_the_chunk(monkeypatch):
    """A long prefill never builds more than one chunk's bias, and a chunk reads only its keys."""
    monkeypatch.setattr(bias_attention, "_consecutive", lambda *args: False)
    monkeypatch.setattr(bias_attention, "CHUNK_ELEMENTS", 4 * 64 * 300)
    model = model_for("kerple-log").eval()
    shapes = []
    original = Kerple.attention_bias

    def recorded(self, layer, q_pos, k_pos):
        shapes.append((int(q_pos[0, -1]), q_pos.shape[1], k_pos.shape[1]))
        return original(self, layer, q_pos, k_pos)

    monkeypatch.setattr(Kerple, "attention_bias", recorded)
    with torch.no_grad():  # explicit positions: not known to be the default ones, so the chunked path
        model(torch.zeros(1, 300, dtype=torch.long), positions=torch.arange(300))
    assert len(shapes) == 2 * 5  # 2 layers, 5 chunks of 64 queries (the last 44)
    assert all(last + 1 == keys for last, _, keys in shapes)  # causal: keys up to the chunk's last query
    assert max(4 * queries * keys for _, queries, keys in shapes) <= 4 * 64 * 300


@pytest.mark.parametrize("spec", ["alibi", "kerple-power"])
def test_consecutive_positions_read_one_distance_table_per_layer(spec, monkeypatch):
    """Distance-only biases at consecutive positions build no per-chunk bias: one table per layer."""
    monkeypatch.setattr(bias_attention, "CHUNK_ELEMENTS", 4 * 64 * 300)
    model = model_for(spec).eval()
    calls = []
    encoding = type(model.pe)
    original = encoding.distance_bias
    monkeypatch.setattr(encoding, "attention_bias", lambda *args: calls.append("chunk"))
    monkeypatch.setattr(encoding, "distance_bias", lambda self, *args: calls.append("table") or original(self, *args))
    with torch.no_grad():
        model(torch.zeros(1, 300, dtype=torch.long))  # default positions 0 .. 299
        cache = model.new_cache()
        model(torch.zeros(1, 20, dtype=torch.long), positions=torch.arange(5, 25)[None], cache=cache)
        model(torch.zeros(1, 1, dtype=torch.long), positions=torch.tensor([[25]]), cache=cache)
    assert calls == ["table"] * 6


def test_consecutive_positions():
    consecutive = bias_attention._consecutive
    assert consecutive(torch.arange(3, 8)[None], torch.arange(3, 8)[None], 0)
    assert consecutive(torch.arange(5, 8)[None], torch.arange(3, 8)[None], 2)
    assert consecutive(torch.arange(5, 8, dtype=torch.float64)[None], torch.arange(3, 8.0)[None], 2)
    assert not consecutive(torch.tensor([[0, 1, 3]]), torch.tensor([[0, 1, 3]]), 0)
    assert not consecutive(torch.arange(4)[None].expand(2, -1), torch.arange(4)[None].expand(2, -1), 0)
    assert not consecutive(torch.arange(2**24, 2**24 + 3)[None], torch.arange(2**24, 2**24 + 3)[None], 0)


@pytest.mark.parametrize("rows", [1, 8, 96])
@pytest.mark.parametrize("q_len", [1, 100, 4096, 65536])
@pytest.mark.parametrize("k_len", [1, 4096, 16384, 10**6])
@pytest.mark.parametrize("elements", [2**16, 2**21, 2**23])
def test_chunk_length_keeps_its_contract(rows, q_len, k_len, elements):
    """Whatever the sizes: at least one query, at most all of them, a multiple of 64 above 64, and a
    chunk's bias within the budget -- twice it only to reach MIN_CHUNK queries."""
    chunk = bias_attention.chunk_length(rows, q_len, k_len, elements=elements)
    assert 1 <= chunk <= q_len
    assert chunk <= 64 or chunk % 64 == 0 or chunk == q_len
    floats = rows * chunk * k_len
    assert floats <= elements or chunk == 1 or (chunk <= bias_attention.MIN_CHUNK and floats <= 2 * elements)
    bigger = bias_attention.chunk_length(rows, q_len, k_len, elements=4 * elements)
    assert bigger >= chunk  # a larger budget never gives a shorter chunk


@pytest.mark.parametrize("seed", range(4))
def test_scalar_mlp_equals_the_mlp_with_its_gradients(seed, monkeypatch):
    torch.manual_seed(seed)
    first, last = nn.Linear(1, 16), nn.Linear(16, 3)
    with torch.no_grad():  # kinks in range, a kink exactly at 0 and at 1, a flat unit, a dead one
        first.weight[:4, 0] = torch.tensor([2.0, -3.0, 0.0, 1.0])
        first.bias[:4] = torch.tensor([-1.0, 0.0, 0.5, -1.0])
        first.weight[4, 0], first.bias[4] = 0.0, -0.2
    x = torch.rand(2, 7, 9)
    x[0, 0, :3] = torch.tensor([0.0, 0.5, 1.0])  # exactly on kinks
    x.requires_grad_(True)
    got = scalar_mlp(x, first, last)
    expected = last(F.relu(first(x.detach().clone().requires_grad_(True).unsqueeze(-1)))).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # without autograd: blocks of query rows (here one or three at a time)
        for block in (1, 3 * 18 * 9):
            monkeypatch.setattr(fire_module, "_BLOCK_ELEMENTS", block)
            torch.testing.assert_close(scalar_mlp(x, first, last), expected, atol=1e-6, rtol=1e-6)
    weights = torch.randn_like(got)
    params = [*first.parameters(), *last.parameters()]
    got_grads = torch.autograd.grad((got * weights).sum(), [x, *params])
    x2 = x.detach().clone().requires_grad_(True)
    expected = last(F.relu(first(x2.unsqueeze(-1)))).permute(0, 3, 1, 2)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [x2, *params])
    for a, b in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fire_bias_beyond_its_threshold_by_hand():
    """FIRE's bias at positions past the threshold (x = psi(d) / psi(i)) from the formula."""
    model = model_for("fire:width=4")
    fire = model.pe.functions[0]
    q = torch.arange(40)[None]
    bias = model.pe.attention_bias(0, q, q)
    c, threshold = 0.37, 0.6 * 512
    for i, j in [(39, 3), (20, 20), (39, 0)]:
        x = math.log(c * (i - j) + 1) / (math.log(c * max(i, threshold) + 1) + 1e-6)
        torch.testing.assert_close(bias[0, :, i, j], fire.mlp(torch.tensor([[x]]))[0], atol=1e-6, rtol=1e-6)


def test_fire_reuses_its_sorted_units_only_while_the_weights_are_unchanged():
    model = model_for("fire:width=8").eval()
    q = torch.arange(600, 640)[None]
    with torch.no_grad():
        before = model.pe.attention_bias(0, q, torch.arange(640)[None])
        assert model.pe.functions[0]._terms  # kept
        model.pe.functions[0].mlp[0].bias.add_(0.3)  # an optimizer step: a new version
        after = model.pe.attention_bias(0, q, torch.arange(640)[None])
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference_bias(model.pe, 0, q, torch.arange(640)[None]), **TOL)
