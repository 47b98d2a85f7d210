"""Padded batches: a padded row gives, at its real tokens, exactly what it gives alone.

Checked for every position method through ropelab's own :class:`~ropelab.model.transformer.Transformer`
(left and right padding, KV-cache decoding, ``token_losses``, ``generate``) and for every method
``ropelab.integrations.hf.patch`` supports on a tiny random Hugging Face Llama (forward with HF-style
``position_ids``, plain forward with only ``attention_mask``, batched ``generate``); the windowed
attention's ``key_mask`` and ``far_keys`` against a dense per-pair reference. Inputs are longer
than the models' training length and the windows are small, so extrapolation paths and the far
region are exercised. Where padding changes the numbers (left padding; dynamic NTK's length),
each comparison also checks that the same batch without its mask gives other numbers, so a
comparison that ignored the mask would fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from ropelab import ModelConfig, Transformer
from ropelab.core.errors import RopelabError
from ropelab.integrations import hf
from ropelab.model.window_attention import windowed_attention
from ropelab.pe import PEContext, build
from tests.helpers import randomise

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
VOCAB = 61
TRAIN_LEN = 16
LENGTHS = (37, 22, 29)  # all beyond TRAIN_LEN and the windows (8)

SPECS = [
    "rope",
    "pi:factor=2",
    "ntk:factor=2",
    "dynamic-ntk:factor=2",
    "yarn:factor=2",
    "hope",
    "nope",
    "alibi",
    "kerple-log",
    "kerple-power",
    "fire",
    "learned:max_len=64",  # a learned table cannot extrapolate: it covers the longest row
    "rerope:window=8",
    "rerope:window=8,logn=true",
    "self-extend:window=8,group=3",
    "hirope:window=8,chunk=5",
]
WINDOWED = ["rerope:window=8", "self-extend:window=8,group=3", "hirope:window=8,chunk=5"]
HF_SPECS = [s for s in SPECS if s.split(":")[0] not in ("alibi", "kerple-log", "kerple-power", "fire", "learned")]


def _rows(lengths=LENGTHS, seed=0, low=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, VOCAB, (n,), generator=g) for n in lengths]


def _pad(rows: list[torch.Tensor], side: str, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``[B, max_len]``: each row's tokens on the ``side``-padded layout."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, row in enumerate(rows):
        where = slice(T - len(row), T) if side == "left" else slice(0, len(row))
        ids[i, where], mask[i, where] = row, 1
    return ids, mask


def _worst(batch: torch.Tensor, mask: torch.Tensor, alone: list[torch.Tensor]) -> float:
    """Largest difference between each row's real-token outputs and that row run alone."""
    return max(float((batch[i][mask[i].bool()] - ref).abs().max()) for i, ref in enumerate(alone))


# -- windowed_attention: key_mask and far_keys against a dense reference ------------------------


def _dense_reference(qn, qf, kn, kf, v, window, past, key_mask=None, far_keys=None):
    """Every [Tq, Tk] score by hand, masked, softmax; a query that sees nothing gives 0."""
    B, H, Tq, d = qn.shape
    Tk = kn.shape[2]
    groups = H // kn.shape[1]
    kn, kf, v = (t.repeat_interleave(groups, dim=1) for t in (kn, kf, v))
    distance = torch.arange(past, past + Tq)[:, None] - torch.arange(Tk)[None]
    scores = torch.where(distance < window, qn @ kn.transpose(-1, -2), qf @ kf.transpose(-1, -2)) / math.sqrt(d)
    real = torch.ones(B, Tk, dtype=torch.bool) if key_mask is None else key_mask
    allowed = (distance >= 0)[None, None] & real[:, None, None, :]
    if far_keys is not None:  # beyond the window only each row's first far_keys real keys
        sink = real & (real.long().cumsum(dim=1) <= far_keys)
        allowed = allowed & ((distance < window)[None, None] | sink[:, None, None, :])
    scores = scores.masked_fill(~allowed, float("-inf"))
    top = scores.amax(dim=-1, keepdim=True)
    weights = (scores - torch.where(torch.isfinite(top), top, 0.0)).exp()
    total = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(total > 0, total, 1.0)
    return weights @ v, allowed.any(dim=-1).expand(B, H, Tq)


def _qkv(B=3, H=4, H_kv=2, Tq=25, Tk=25, d=8, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, Tq, d), (B, H, Tq, d), (B, H_kv, Tk, d), (B, H_kv, Tk, d), (B, H_kv, Tk, d)]
    return [torch.randn(s, generator=g).requires_grad_(requires_grad) for s in shapes]


def _key_mask(kind: str, B: int, Tk: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    mask = torch.ones(B, Tk, dtype=torch.bool)
    if kind in ("left", "both"):
        mask[0, :12] = False  # reaches into the queries when past=9: queries that see nothing
    if kind in ("right", "both"):
        mask[1, -5:] = False
    if kind == "both":
        mask[2, :3] = False
        mask[2, -2:] = False
    if kind == "holes":  # padding between real keys: the far block's masked plain computation
        mask[0, 1:4] = False
        mask[1, 9:11] = False
    return mask


@pytest.mark.parametrize("past", [0, 9])
@pytest.mark.parametrize("chunk", [4, 7])
@pytest.mark.parametrize("far_keys", [None, 0, 2, 5])
@pytest.mark.parametrize("kind", ["none", "left", "right", "both", "holes"])
@pytest.mark.parametrize("window", [3, 6])
def test_windowed_attention_masks_match_dense_reference(window, kind, far_keys, chunk, past):
    Tk = 25
    qn, qf, kn, kf, v = _qkv(Tq=Tk - past, Tk=Tk, seed=window)
    key_mask = _key_mask(kind, 3, Tk)
    got = windowed_attention(qn, qf, kn, kf, v, window, past, chunk, key_mask=key_mask, far_keys=far_keys)
    expected, sees = _dense_reference(*(t.double() for t in (qn, qf, kn, kf, v)), window, past, key_mask, far_keys)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, atol=ATOL, rtol=0)
    assert torch.equal(got[~sees], torch.zeros_like(got[~sees]))  # queries that see no key: zeros
    if kind == "left" and past == 9:
        assert (~sees).any()  # the case is exercised
    if kind != "none":  # the mask matters: ignoring it gives other numbers
        unmasked = windowed_attention(qn, qf, kn, kf, v, window, past, chunk, far_keys=far_keys)
        assert float((unmasked.double() - expected)[sees].abs().max()) > 1e-3


def test_windowed_attention_all_true_mask_is_the_unmasked_path():
    qn, qf, kn, kf, v = _qkv(Tq=16, Tk=40, seed=3)
    plain = windowed_attention(qn, qf, kn, kf, v, 5, past=24, chunk_size=4)
    ones = windowed_attention(qn, qf, kn, kf, v, 5, past=24, chunk_size=4, key_mask=torch.ones(3, 40, dtype=torch.bool))
    assert torch.equal(plain, ones)


def test_windowed_attention_padded_row_with_sinks_equals_the_row_alone():
    """far_keys counts real keys: a left-padded row keeps the sinks it has alone."""
    qn, qf, kn, kf, v = _qkv(B=1, Tq=30, Tk=30, seed=4)
    pad = 7
    padded = [torch.cat((torch.randn((*t.shape[:2], pad, t.shape[3])), t), dim=2) for t in (qn, qf, kn, kf, v)]
    key_mask = torch.arange(30 + pad)[None] >= pad
    alone = windowed_attention(qn, qf, kn, kf, v, 4, past=0, chunk_size=8, far_keys=3)
    got = windowed_attention(*padded, 4, past=0, chunk_size=8, key_mask=key_mask, far_keys=3)
    torch.testing.assert_close(got[:, :, pad:], alone, atol=ATOL, rtol=0)
    assert torch.equal(got[:, :, :pad], torch.zeros_like(got[:, :, :pad]))


def test_windowed_attention_gradients_with_masks_are_finite_and_exact():
    tensors = _qkv(Tq=16, Tk=25, seed=5, requires_grad=True)
    key_mask = _key_mask("both", 3, 25)
    out = windowed_attention(*tensors, 4, 9, 4, key_mask=key_mask, far_keys=2)
    reference, sees = _dense_reference(*tensors, 4, 9, key_mask, far_keys=2)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)) * sees[..., None]
    grads = torch.autograd.grad((out * weights).sum(), tensors)
    expected = torch.autograd.grad((reference * weights).sum(), tensors)
    for got, want in zip(grads, expected):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_windowed_attention_rejects_bad_arguments():
    qn, qf, kn, kf, v = _qkv(Tq=10, Tk=10)
    with pytest.raises(RopelabError, match="key_mask must be bool"):
        windowed_attention(qn, qf, kn, kf, v, 4, 0, key_mask=torch.ones(3, 9, dtype=torch.bool))
    with pytest.raises(RopelabError, match="far_keys must be a non-negative integer"):
        windowed_attention(qn, qf, kn, kf, v, 4, 0, far_keys=-1)


# -- dynamic NTK: one length per row --------------------------------------------------------------


def test_dynamic_ntk_rebases_each_row_by_its_own_length():
    encoding = build("dynamic-ntk:factor=2", PEContext(head_dim=16, n_heads=1, train_len=TRAIN_LEN))
    long, short = torch.arange(40), torch.arange(25)
    padded = torch.stack((long, torch.cat((torch.zeros(15, dtype=torch.long), short))))
    batch = encoding.rotation(padded)
    for row, alone in ((0, long), (1, short)):
        single = encoding.rotation(alone[None])
        torch.testing.assert_close(batch.cos[row, -len(alone) :], single.cos[0], atol=0, rtol=0)
        torch.testing.assert_close(batch.sin[row, -len(alone) :], single.sin[0], atol=0, rtol=0)
    # one shared length (the batch's longest row) would rotate the short row differently
    assert float((encoding.rotation(torch.stack((long, long))).cos[1, :25] - batch.cos[1, 15:]).abs().max()) > 1e-3


# -- ropelab's Transformer ------------------------------------------------------------------------


def _tiny(spec: str) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", pe=spec, vocab_size=VOCAB, train_len=TRAIN_LEN, init_std=0.1)
    return Transformer(config).eval()


@pytest.fixture(scope="module")
def tiny_models():
    return {spec: _tiny(spec) for spec in SPECS}


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("spec", SPECS)
def test_padded_batch_equals_rows_alone(tiny_models, spec: str, side: str):
    model = tiny_models[spec]
    rows = _rows()
    ids, mask = _pad(rows, side)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask)
        alone = [model(row[None])[0] for row in rows]
        unmasked = model(ids)
    assert torch.isfinite(batch).all()  # padding rows included
    assert _worst(batch, mask, alone) < ATOL
    if side == "left" or model.pe.rotation_depends_on_length:  # the mask matters here
        assert _worst(unmasked, mask, alone) > 1e-3


@pytest.mark.parametrize("spec", SPECS)
def test_padded_kv_cache_decoding_equals_rows_alone(tiny_models, spec: str):
    """Left-padded prefill, then a chunk (mask given explicitly) and single tokens (mask kept by
    the cache) -- each row equals the same steps run on that row alone."""
    model = tiny_models[spec]
    prompts = _rows((20, 9, 14), seed=1)
    more = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(2))
    ids, mask = _pad(prompts, "left")
    with torch.no_grad():
        cache = model.new_cache()
        pieces = [model(ids, cache=cache, attention_mask=mask)]
        mask = torch.cat((mask, torch.ones(3, 3, dtype=torch.long)), dim=1)
        pieces.append(model(more[:, :3], cache=cache, attention_mask=mask))
        pieces += [model(more[:, t : t + 1], cache=cache) for t in range(3, 8)]
        batch = torch.cat(pieces, dim=1)
        mask = torch.cat((mask, torch.ones(3, 5, dtype=torch.long)), dim=1)
        alone = []
        for i, prompt in enumerate(prompts):
            row_cache = model.new_cache()
            steps = [model(prompt[None], cache=row_cache), model(more[i : i + 1, :3], cache=row_cache)]
            steps += [model(more[i : i + 1, t : t + 1], cache=row_cache) for t in range(3, 8)]
            alone.append(torch.cat(steps, dim=1)[0])
    assert cache.length == mask.shape[1] and torch.isfinite(batch).all()
    assert _worst(batch, mask, alone) < ATOL
    with torch.no_grad():  # the prefill without its mask reads the padding
        assert _worst(model(ids), mask[:, : ids.shape[1]], [a[: len(p)] for a, p in zip(alone, prompts)]) > 1e-3


@pytest.mark.parametrize(
    "spec", ["rope", "alibi", "dynamic-ntk:factor=2", "rerope:window=8", "hirope:window=8,chunk=5"]
)
def test_token_losses_with_mask(tiny_models, spec: str):
    model = tiny_models[spec]
    rows = _rows(seed=3)
    ids, mask = _pad(rows, "left")
    with torch.no_grad():
        losses = model.token_losses(ids, attention_mask=mask, chunk_size=7)
        pairs = (mask[:, :-1] & mask[:, 1:]).bool()
        assert torch.equal(losses[~pairs], torch.zeros_like(losses[~pairs]))
        alone = [model.token_losses(row[None])[0] for row in rows]
        for i in range(len(rows)):
            torch.testing.assert_close(losses[i][pairs[i]], alone[i], atol=ATOL, rtol=1e-5)
        unmasked = model.token_losses(ids)
        assert max(float((unmasked[i][pairs[i]] - alone[i]).abs().max()) for i in range(len(rows))) > 1e-3


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("spec", ["rope", "dynamic-ntk:factor=2", "fire", *WINDOWED])
def test_left_padded_generation_equals_rows_alone(tiny_models, spec: str, use_cache: bool):
    model = tiny_models[spec]
    prompts = _rows((20, 9, 14), seed=4)
    ids, mask = _pad(prompts, "left")
    got = model.generate(ids, 8, attention_mask=mask, use_cache=use_cache)
    alone = [model.generate(prompt[None], 8, use_cache=use_cache)[0].tolist() for prompt in prompts]
    assert got.tolist() == alone
    assert model.generate(ids, 8, use_cache=use_cache).tolist() != alone  # padding read as tokens
    right_ids, right_mask = _pad(prompts, "right")
    with pytest.raises(RopelabError, match="pad on the left"):
        model.generate(right_ids, 8, attention_mask=right_mask)


def test_all_ones_mask_is_the_unmasked_path(tiny_models):
    """check_inputs (where inputs enter) turns an all-ones mask into none: the mask-free fast path;
    a mask passed straight to the forward is used as given, and gives the same logits."""
    from ropelab.model.inputs import check_inputs

    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for spec in ("rope", "alibi", "rerope:window=8"):
            model = tiny_models[spec]
            checked, positions, mask = check_inputs(model, ids, attention_mask=torch.ones_like(ids))
            assert mask is None and positions is None
            assert torch.equal(model(checked, attention_mask=mask), model(ids))
            torch.testing.assert_close(model(ids, attention_mask=torch.ones_like(ids)), model(ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("spec", ["rope", "alibi", "dynamic-ntk:factor=2"])
def test_padding_inside_a_row_is_skipped_by_non_windowed_methods(tiny_models, spec: str):
    """Positions come from the mask, so pads between real tokens are simply left out."""
    model = tiny_models[spec]
    row = _rows((24,), seed=6)[0]
    holes = torch.tensor([3, 4, 10, 17])
    keep = torch.ones(24 + len(holes), dtype=torch.bool)
    keep[holes + torch.arange(len(holes))] = False
    ids = torch.zeros(1, len(keep), dtype=torch.long)
    ids[0, keep] = row
    with torch.no_grad():
        got = model(ids, attention_mask=keep[None].long())[0, keep]
        torch.testing.assert_close(got, model(row[None])[0], atol=ATOL, rtol=0)


def test_bad_masks_are_refused_with_a_clear_error(tiny_models):
    """Where inputs enter (check_inputs; the forward pass reads no values)."""
    from ropelab.model.inputs import check_inputs

    model = tiny_models["rope"]
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(7))
    with pytest.raises(RopelabError, match=r"attention_mask must have shape \[batch, past \+ seq\] = \[2, 6\]"):
        check_inputs(model, ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(RopelabError, match="only 0 and 1"):
        check_inputs(model, ids, attention_mask=torch.full((2, 6), 2))
    cache = model.new_cache()
    model(ids, cache=cache, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6]))
    with pytest.raises(RopelabError, match=r"the 6 cached tokens"):
        check_inputs(model, ids[:, :1], cache=cache, attention_mask=torch.ones(2, 1))
    with pytest.raises(RopelabError, match="must repeat the mask of the tokens already in the KV cache"):
        check_inputs(model, ids[:, :1], cache=cache, attention_mask=torch.ones(2, 7))
    holes = torch.tensor([[1, 0, 1, 1, 1, 1], [1] * 6])
    with pytest.raises(RopelabError, match=r"contiguous .* row\(s\) \[0\]"):
        check_inputs(tiny_models["self-extend:window=8,group=3"], ids, attention_mask=holes)


# -- Hugging Face models through ropelab.integrations.hf.patch -------------------------------------------------


def _hf_llama(seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TRAIN_LEN,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = transformers.LlamaForCausalLM(config)
    randomise(model, seed, std=0.15)  # attention sharp enough that positions matter
    return model.eval()


@pytest.fixture(scope="module")
def llama():
    return _hf_llama()


def _hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """position_ids as transformers' generate makes them from the attention mask."""
    return (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 0)


@torch.no_grad()
def _hf_logits(model, ids, **kwargs):
    return model(input_ids=ids, use_cache=False, **kwargs).logits


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("spec", HF_SPECS)
def test_hf_padded_batch_equals_rows_alone(llama, spec: str, side: str):
    rows = _rows(seed=8)
    ids, mask = _pad(rows, side)
    hf.patch(llama, spec)
    try:
        batch = _hf_logits(llama, ids, attention_mask=mask, position_ids=_hf_positions(mask))
        alone = [_hf_logits(llama, row[None])[0] for row in rows]
        windowed = spec.split(":")[0] in ("rerope", "self-extend", "hirope")
        plain = _hf_logits(llama, ids, attention_mask=mask) if windowed else None
        unmasked = _hf_logits(llama, ids)
    finally:
        hf.unpatch(llama)
    assert torch.isfinite(batch).all()
    assert _worst(batch, mask, alone) < ATOL
    if plain is not None:  # windowed methods place tokens by the mask, whatever the position_ids
        assert _worst(plain, mask, alone) < ATOL
    if side == "left" or spec.startswith("dynamic"):
        assert _worst(unmasked, mask, alone) > 1e-3


@pytest.mark.parametrize("spec", WINDOWED)
def test_hf_left_padded_generate_equals_rows_alone(llama, spec: str):
    prompts = _rows((20, 9, 14), seed=9, low=1)
    ids, mask = _pad(prompts, "left")
    options = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    hf.patch(llama, spec)
    try:
        with torch.no_grad():
            got = llama.generate(input_ids=ids, attention_mask=mask, **options)[:, ids.shape[1] :]
            alone = [
                llama.generate(input_ids=p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), **options)
                for p in prompts
            ]
            ignored = llama.generate(input_ids=ids, attention_mask=torch.ones_like(mask), **options)
    finally:
        hf.unpatch(llama)
    expected = [out[0, len(p) :].tolist() for out, p in zip(alone, prompts)]
    assert got.tolist() == expected
    assert ignored[:, ids.shape[1] :].tolist() != expected  # padding read as tokens changes the output


def _hierarchy(length: int, seed: int) -> torch.Tensor:
    """``[length, 2]`` (token-in-segment, segment) from random segment lengths."""
    g = torch.Generator().manual_seed(seed)
    tok, seg = [], []
    while len(tok) < length:
        n = int(torch.randint(1, 9, (1,), generator=g))
        tok += list(range(n))
        seg += [len(set(seg))] * n
    return torch.tensor([tok[:length], seg[:length]]).T


def _padded_hierarchy(hierarchies: list[torch.Tensor], side: str) -> torch.Tensor:
    T = max(len(h) for h in hierarchies)
    out = torch.zeros(len(hierarchies), T, 2, dtype=torch.long)
    for i, h in enumerate(hierarchies):
        out[i, slice(T - len(h), T) if side == "left" else slice(0, len(h))] = h
    return out


@pytest.mark.parametrize("token_index", ["global", "segment"])
def test_hierarchical_positions_in_a_padded_batch(llama, token_index: str):
    """HiRoPE with code-structure positions ``[B, T, levels]``: its sequence index (token level
    for ``token_index=global``, the window's plain RoPE) is each row's own, in ropelab's model and
    through ``hf.patch`` (``ropelab_positions``)."""
    spec = f"hirope:window=8,token_index={token_index}"
    rows = _rows(seed=12)
    hierarchies = [_hierarchy(len(r), seed=i) for i, r in enumerate(rows)]
    ids, mask = _pad(rows, "left")
    positions = _padded_hierarchy(hierarchies, "left")
    model = _tiny(spec)
    with torch.no_grad():
        batch = model(ids, positions=positions, attention_mask=mask)
        alone = [model(r[None], positions=h[None])[0] for r, h in zip(rows, hierarchies)]
    assert _worst(batch, mask, alone) < ATOL
    hf.patch(llama, spec)
    try:
        batch = _hf_logits(llama, ids, attention_mask=mask, ropelab_positions=positions)
        alone = [_hf_logits(llama, r[None], ropelab_positions=h[None])[0] for r, h in zip(rows, hierarchies)]
        unmasked = _hf_logits(llama, ids, ropelab_positions=positions)
    finally:
        hf.unpatch(llama)
    assert _worst(batch, mask, alone) < ATOL
    assert _worst(unmasked, mask, alone) > 1e-3


def test_hf_window_attention_accepts_4d_bool_and_additive_masks(llama):
    ids, mask = _pad(_rows((30, 21), seed=10), "left")
    allowed = torch.ones(30, 30, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    hf.patch(llama, "self-extend:window=8,group=3")
    try:
        expected = _hf_logits(llama, ids, attention_mask=mask)
        for mask_4d in (allowed, additive, additive.masked_fill(~allowed, float("-inf"))):
            torch.testing.assert_close(_hf_logits(llama, ids, attention_mask=mask_4d), expected, atol=0, rtol=0)
        with pytest.raises(RopelabError, match="additive bias"):
            _hf_logits(llama, ids, attention_mask=additive + 0.5)
    finally:
        hf.unpatch(llama)


def test_hf_window_attention_refuses_what_it_cannot_compute(llama):
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(11))
    left = torch.ones(2, 12, dtype=torch.long)
    left[0, :3] = 0
    right = torch.ones(2, 12, dtype=torch.long)
    right[0, 9:] = 0
    packed = torch.tensor([list(range(6)) * 2, list(range(12))])
    options = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    hf.patch(llama, "rerope:window=4")
    try:
        with pytest.raises(RopelabError, match="another pattern"):  # packed sequences: block-diagonal mask
            _hf_logits(llama, ids, position_ids=packed)
        with pytest.raises(RopelabError, match="position_ids differ"):
            llama(input_ids=ids, position_ids=torch.arange(12)[None] + 5)
        with pytest.raises(RopelabError, match="contiguous"), torch.no_grad():  # right padding, then new tokens
            llama.generate(input_ids=ids, attention_mask=right, **options)
        with pytest.raises(RopelabError, match="static"), torch.no_grad():
            llama.generate(input_ids=ids, attention_mask=left, cache_implementation="static", **options)
    finally:
        hf.unpatch(llama)
