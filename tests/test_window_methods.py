"""ReRoPE, Self-Extend and HiRoPE against a direct per-pair computation of each paper's formula,
their exact reductions to RoPE, and the chunked two-score-set attention."""

from __future__ import annotations

import math

import pytest
import torch

from ropelab import ModelConfig, Transformer, pe
from ropelab.model.window_attention import windowed_attention
from ropelab.pe.base import PEContext
from ropelab.pe.hirope import auto_window, frequency_levels, reliable_split

D = 8  # head dim: 4 frequencies
BASE = 10000.0
THETA = [BASE ** (-2 * j / D) for j in range(D // 2)]


def pair_logit(q, k, deltas):
    """Eq. 4 of the HoPE paper, per frequency j with angle difference deltas[j] (rotate-half layout)."""
    half = D // 2
    total = 0.0
    for j in range(half):
        q0, q1, k0, k1 = q[j], q[j + half], k[j], k[j + half]
        total += (q0 * k0 + q1 * k1) * math.cos(deltas[j]) + (q0 * k1 - q1 * k0) * math.sin(deltas[j])
    return total


def reference_attention(q, k, v, deltas_of):
    """Naive causal attention: logit(m, n) from ``deltas_of(m, n)``; q/k/v are [T, D] float64."""
    T = q.shape[0]
    out = torch.zeros_like(v)
    for m in range(T):
        logits = torch.tensor(
            [pair_logit(q[m].tolist(), k[n].tolist(), deltas_of(m, n)) / math.sqrt(D) for n in range(m + 1)],
            dtype=torch.float64,
        )
        out[m] = logits.softmax(0) @ v[: m + 1]
    return out


def ropelab_attention(spec, q, k, v, positions=None, train_len=16, chunk_size=None):
    ctx = PEContext(head_dim=D, n_heads=1, train_len=train_len, rope_base=BASE)
    encoding = pe.build(spec, ctx)
    T = q.shape[0]
    index = torch.arange(T)[None]
    tables = encoding.windowed_rotation(index if positions is None else positions, index)
    as4 = lambda x: x.float()[None, None]  # noqa: E731
    out = windowed_attention(
        *tables.apply(as4(q), as4(k)),
        as4(v),
        encoding.window,
        past=0,
        chunk_size=chunk_size,
    )
    return out[0, 0].double(), encoding


def random_qkv(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, D, generator=g, dtype=torch.float64) for _ in range(3))


def random_hierarchy(T, seed=0):
    """(tok, seg, unit) per token from random segment lengths."""
    g = torch.Generator().manual_seed(seed)
    tok, seg, unit = [], [], []
    s = 0
    while len(tok) < T:
        length = int(torch.randint(1, 7, (1,), generator=g))
        tok += list(range(length))
        seg += [s] * length
        unit += [s // 2] * length
        s += 1
    return tok[:T], seg[:T], unit[:T]


@pytest.mark.parametrize(("window", "logn"), [(5, False), (5, True), (1, False), (40, False)])
def test_rerope_equals_per_pair_formula(window, logn):
    T, train_len = 30, 16
    q, k, v = random_qkv(T)
    scale = [max(1.0, math.log(m + 1) / math.log(train_len)) if logn else 1.0 for m in range(T)]

    def deltas(m, n):
        distance = m - n if m - n < window else window
        return [distance * t for t in THETA]

    expected = reference_attention(q * torch.tensor(scale, dtype=torch.float64)[:, None], k, v, deltas)
    got, _ = ropelab_attention(f"rerope:window={window},logn={str(logn).lower()}", q, k, v, train_len=train_len)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("group", "window"), [(2, 6), (3, 4), (4, 1)])
def test_self_extend_equals_per_pair_formula(group, window):
    T = 30
    q, k, v = random_qkv(T, seed=1)

    def deltas(m, n):
        if m - n < window:
            distance = m - n
        else:
            distance = (m // group + window - window // group) - n // group
        return [distance * t for t in THETA]

    got, _ = ropelab_attention(f"self-extend:group={group},window={window}", q, k, v)
    torch.testing.assert_close(got, reference_attention(q, k, v, deltas), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("split", "window", "levels", "token_index"),
    [
        (0.5, 6, 2, "segment"),
        (0.5, 0, 2, "segment"),
        (0.25, 4, 3, "segment"),
        (0.75, 5, 2, "global"),
        (0.5, 1, 2, "segment"),
    ],
)
def test_hirope_equals_per_pair_formula(split, window, levels, token_index):
    T = 32
    q, k, v = random_qkv(T, seed=2)
    tok, seg, unit = random_hierarchy(T, seed=3)
    level_of = frequency_levels(D // 2, split, levels).tolist()
    J = round(split * D // 2)
    assert level_of == [0] * J + [1 if levels == 2 or j < J + (D // 2 - J + 1) // 2 else 2 for j in range(J, D // 2)]
    shift = max(window - 1, 0)
    token = list(range(T)) if token_index == "global" else tok

    def deltas(m, n):
        if m - n < window:  # plain RoPE on every frequency inside the window
            return [(m - n) * t for t in THETA]
        by_level = [token[m] - token[n], seg[m] - seg[n] + shift, unit[m] - unit[n] + shift]
        return [by_level[level_of[j]] * THETA[j] for j in range(D // 2)]

    columns = [tok, seg, unit][:levels]
    positions = torch.tensor(columns).T[None]
    spec = f"hirope:split={split},window={window},levels={levels},token_index={token_index}"
    got, _ = ropelab_attention(spec, q, k, v, positions=positions)
    torch.testing.assert_close(got, reference_attention(q, k, v, deltas), atol=2e-5, rtol=1e-5)


def test_hirope_without_hierarchy_uses_fixed_chunks():
    T = 20
    q, k, v = random_qkv(T, seed=4)
    chunked = torch.tensor([[i % 6 for i in range(T)], [i // 6 for i in range(T)]]).T[None]
    a, _ = ropelab_attention("hirope:window=3,chunk=6", q, k, v)
    b, _ = ropelab_attention("hirope:window=3,chunk=6", q, k, v, positions=chunked)
    torch.testing.assert_close(a, b)


def test_chunking_over_queries_does_not_change_results():
    q, k, v = random_qkv(50, seed=5)
    tok, seg, _ = random_hierarchy(50, seed=6)
    positions = torch.tensor([tok, seg]).T[None]
    whole, _ = ropelab_attention("hirope:window=7", q, k, v, positions=positions, chunk_size=1000)
    for chunk in (1, 3, 16):
        part, _ = ropelab_attention("hirope:window=7", q, k, v, positions=positions, chunk_size=chunk)
        torch.testing.assert_close(part, whole, atol=1e-6, rtol=1e-6)


def _model(spec, train_len=16, init_std=0.02):
    torch.manual_seed(0)
    return Transformer(
        ModelConfig.from_name("tiny", vocab_size=61, train_len=train_len, pe=spec, init_std=init_std)
    ).eval()


@pytest.mark.parametrize(
    "spec",
    [
        "hirope:split=1,window=4",
        "hirope:split=1,window=0,chunk=3",
        "hirope:window=64",
        "rerope:window=64",
        "self-extend:window=64",
    ],
)
def test_exact_reductions_to_rope(spec):
    """split=1, or a window at least as long as the input, is exactly RoPE (even past train_len)."""
    ids = torch.randint(0, 61, (2, 60), generator=torch.Generator().manual_seed(0))
    rope = _model("rope")
    other = _model(spec)
    with torch.no_grad():
        torch.testing.assert_close(other(ids), rope(ids), atol=1e-5, rtol=1e-5)


def test_windowed_methods_differ_from_rope_beyond_the_window():
    ids = torch.randint(0, 61, (1, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rope = _model("rope", init_std=0.2)(ids)
        for spec in ("hirope:window=8", "rerope:window=8", "self-extend:window=8,group=2"):
            different = (_model(spec, init_std=0.2)(ids) - rope).abs().amax(dim=-1)[0]
            assert different[:8].max() < 1e-4 and different[8:].max() > 1e-2, (
                spec
            )  # query 8 is the first with a far key


def test_hierarchical_positions_through_the_model_and_generation():
    model = _model("hirope:window=6")
    tok, seg, _ = random_hierarchy(30, seed=7)
    positions = torch.tensor([tok, seg]).T[None]
    ids = torch.randint(0, 61, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, positions=positions)
        cache = model.new_cache()
        part = torch.cat(
            [
                model(ids[:, :17], positions=positions[:, :17], cache=cache),
                model(ids[:, 17:], positions=positions[:, 17:], cache=cache),
            ],
            1,
        )
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)
    # generated tokens extend the last segment; cached and recomputed generation agree
    cached = model.generate(ids, 12, positions=positions)
    recomputed = model.generate(ids, 12, positions=positions, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_reliable_split_matches_the_paper():
    assert reliable_split(4096, 10000.0) == pytest.approx(0.70, abs=0.005)
    assert reliable_split(2048, 10000.0) == pytest.approx(0.63, abs=0.005)
    model = _model("hirope:split=auto", train_len=4096)
    assert model.pe.split == pytest.approx(math.log(4096 / (2 * math.pi)) / math.log(10000.0))


@pytest.mark.parametrize("train_len", [64, 512])
def test_hirope_auto_window_is_the_documented_fraction_of_the_train_length(train_len):
    from ropelab.pe.hirope import AUTO_WINDOW_FRACTION

    numerator, denominator = AUTO_WINDOW_FRACTION
    expected = round(train_len * numerator / denominator)
    assert _model("hirope:window=auto", train_len=train_len).pe.window == expected
    assert _model("hirope:window=auto", train_len=8192).pe.window == round(8192 * numerator / denominator)
    auto, fixed = (
        _model("hirope:window=auto", train_len=train_len),
        _model(f"hirope:window={expected}", train_len=train_len),
    )
    fixed.load_state_dict(auto.state_dict())
    ids = torch.randint(0, auto.config.vocab_size, (1, 2 * train_len))
    torch.testing.assert_close(auto(ids), fixed(ids), rtol=0, atol=0)


def test_describe_reports_hirope_levels():
    from ropelab.cli.info import describe

    info = describe("hirope", 64, 2048, 10000.0, None)
    roles = [f["role"] for f in info["frequencies"]]
    assert roles == ["token-level"] * 16 + ["segment-level"] * 16
    info = describe("hirope:levels=3,split=0.5", 64, 2048, 10000.0, None)
    assert [f["role"] for f in info["frequencies"]].count("unit-level") == 8
    assert describe("hirope:window=auto", 64, 2048, 10000.0, None)["window"] == auto_window(2048)
    assert "window" not in describe("rope", 64, 2048, 10000.0, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hirope:split=1.5", "split must be a number >= 0 and <= 1 or 'auto'"),
        ("hirope:levels=4", "levels must be one of 2, 3"),
        ("hirope:token_index=local", "token_index must be one of global, segment"),
        ("rerope:window=0", "window must be an integer >= 1"),
        ("hirope+dynamic-ntk:factor=2", "a windowed method ('hirope') takes static frequency transforms only"),
        ("rerope+pi:factor=auto", "'pi' changes the angles with the input length"),
        ("alibi+yarn:factor=2", "'yarn' rescales RoPE frequencies, but 'alibi' has none"),
    ],
)
def test_bad_window_specs(spec, message):
    with pytest.raises(ValueError) as error:
        pe.parse_spec(spec)
    assert message in str(error.value)


def test_windowed_methods_take_static_frequency_scaling_but_not_attention_scaling():
    ctx = pe.PEContext(head_dim=16, n_heads=2, train_len=64)
    scaled = pe.build("self-extend+llama3:factor=8", ctx)
    torch.testing.assert_close(scaled.theta, pe.build("rope+llama3:factor=8", ctx).plan().theta, atol=0, rtol=0)
    torch.testing.assert_close(pe.build("rerope+pi:factor=2", ctx).theta, pe.build("rope", ctx).plan().theta / 2)
    with pytest.raises(ValueError, match="cannot take a transform that scales attention"):
        pe.build("hirope+yarn:factor=2", ctx)


def test_hierarchy_level_count_mismatch_is_a_clear_error():
    model = _model("hirope")
    with pytest.raises(ValueError, match="positions have 3 levels but the method uses 2"):
        model(torch.zeros(1, 4, dtype=torch.long), positions=torch.zeros(1, 4, 3, dtype=torch.long))


@pytest.mark.parametrize("spec", ["hirope:window=8", "rerope:window=8", "self-extend:window=8,group=2"])
def test_windowed_methods_train(spec):
    """Gradients flow through the two-score-set attention (the same values as without grad)."""
    model = _model(spec)
    model.train()
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(0))
    loss = model.token_losses(ids).mean()
    loss.backward()
    grad = model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        assert model.token_losses(ids).mean().item() == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("window", [4, 16])
def test_windowed_attention_gradients_equal_the_per_pair_reference(window):
    """Gradients through the chunked, log-sum-exp-merged attention equal those of a direct
    masked softmax (sequence longer than window + chunk, so every block is used)."""
    g = torch.Generator().manual_seed(0)
    T, d = 40, 8
    tensors = [torch.randn(1, 2, T, d, generator=g, requires_grad=True) for _ in range(5)]
    qn, qf, kn, kf, v = tensors
    out = windowed_attention(qn, qf, kn, kf, v, window, past=0, chunk_size=8)
    weights = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * weights).sum(), tensors)

    m = torch.arange(T)[:, None]
    n = torch.arange(T)[None]
    near, far = qn @ kn.transpose(-1, -2), qf @ kf.transpose(-1, -2)
    scores = torch.where(m - n < window, near, far) / math.sqrt(d)
    reference = scores.masked_fill(n > m, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    expected = torch.autograd.grad((reference * weights).sum(), tensors)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_hirope_default_token_level_is_the_global_index_as_in_the_paper():
    """The paper's Fig. 2: positions (function_idx, token_idx) = (0,0)..(0,4), (1,5), (1,6) -- the
    token index keeps counting across the function boundary. ``token_index=segment`` (the
    offset inside the function) is the documented alternative."""
    from ropelab.pe import build

    ctx = PEContext(head_dim=16, n_heads=2, train_len=64)
    encoding = build("hirope", ctx)
    assert encoding.token_index == "global"
    offsets_and_segments = torch.tensor([[[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [0, 1], [1, 1]]])
    index = torch.arange(7)[None]
    vectors = encoding.hierarchy(offsets_and_segments, index)[0].tolist()
    assert vectors == [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 1], [6, 1]]
    segment = build("hirope:token_index=segment", ctx).hierarchy(offsets_and_segments, index)[0].tolist()
    assert segment == [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [0, 1], [1, 1]]
