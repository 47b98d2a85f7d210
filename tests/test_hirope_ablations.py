"""HiRoPE's ablations: ``shift`` (what far pairs add to the higher levels), ``granularity`` (the
segments the evaluator builds), and the out-of-range share of far-pair segment distances."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from ropelab import ModelConfig, Transformer, pe
from ropelab.core.errors import RopelabError
from ropelab.eval.base import Sample
from ropelab.eval.runner import Evaluator
from ropelab.eval.runner import hierarchy_positions as _hierarchy_positions
from ropelab.pe.base import PEContext
from ropelab.pe.hirope import far_out_of_range_share, segment_shift
from ropelab.pe.rope import rotation_tables
from tests.helpers import byte_level_bpe

CTX = PEContext(head_dim=8, n_heads=1, train_len=16)

SOURCE = """import os


class Box:
    def __init__(self, size):
        self.size = size

    def area(self):
        return self.size * self.size


def total(boxes):
    return sum(box.area() for box in boxes)
"""


def build(spec: str):
    return pe.build(spec, CTX)


def brute_force_share(seg, window, shift, max_distance) -> float:
    pairs = [(q, k) for q in range(len(seg)) for k in range(q + 1) if q - k >= window]
    beyond = [seg[q] - seg[k] + shift > max_distance for q, k in pairs]
    return sum(beyond) / len(pairs) if pairs else 0.0


def _model(spec: str, train_len: int = 16) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", vocab_size=61, train_len=train_len, pe=spec, init_std=0.2)
    return Transformer(config).eval()


# -- the out-of-range share ----------------------------------------------------------------------------


def test_out_of_range_share_by_hand():
    seg = [0, 0, 1, 1, 2, 3]
    # window 2: far pairs (q, k) with q - k >= 2, distance seg[q] - seg[k] + shift:
    #   q=2: k=0 -> 1+s
    #   q=3: k=0 -> 1+s, k=1 -> 1+s
    #   q=4: k=0 -> 2+s, k=1 -> 2+s, k=2 -> 1+s
    #   q=5: k=0 -> 3+s, k=1 -> 3+s, k=2 -> 2+s, k=3 -> 2+s
    # 10 pairs. max_distance 2, shift 1: beyond are q=4 k=0,1 and q=5 k=0..3 -> 6 / 10
    assert far_out_of_range_share(seg, window=2, shift=1, max_distance=2) == pytest.approx(0.6)
    # shift 0: beyond are q=5 k=0,1 only -> 2 / 10
    assert far_out_of_range_share(seg, window=2, shift=0, max_distance=2) == pytest.approx(0.2)
    # shift 3: every pair (smallest distance 1 + 3 = 4 > 2)
    assert far_out_of_range_share(seg, window=2, shift=3, max_distance=2) == 1.0
    # window 5: q=5 k=0 only (distance 3 + 0 > 2)
    assert far_out_of_range_share(seg, window=5, shift=0, max_distance=2) == 1.0
    # no far pair
    assert far_out_of_range_share(seg, window=6, shift=100, max_distance=0) == 0.0
    assert far_out_of_range_share([], window=1, shift=0, max_distance=0) == 0.0


def test_out_of_range_share_equals_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        T = int(rng.integers(0, 40))
        seg = np.cumsum(rng.integers(0, 3, T)) if T else np.zeros(0, dtype=np.int64)
        window, shift, max_distance = int(rng.integers(0, T + 2)), int(rng.integers(-2, 12)), int(rng.integers(0, 8))
        expected = brute_force_share(seg.tolist(), window, shift, max_distance)
        assert far_out_of_range_share(seg, window, shift, max_distance) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("segments", "window"), [([0, 2, 1], 1), ([[0, 1], [1, 2]], 1), ([0, 1, 2], -1)])
def test_out_of_range_share_rejects_bad_input(segments, window):
    with pytest.raises(RopelabError):
        far_out_of_range_share(segments, window, 0, 4)


# -- the shift rule -------------------------------------------------------------------------------------


def test_segment_shift_rule():
    assert segment_shift("window", 64, 3, 100) == 63
    assert segment_shift("none", 64, 3, 100) == 0
    assert segment_shift("segments", 64, 10, 100) == 6  # round(63 * 10 / 100 = 6.3)
    for kind in ("window", "none", "segments"):
        assert segment_shift(kind, 0, 10, 100) == 0
    with pytest.raises(RopelabError, match="shift must be one of window, none, segments"):
        segment_shift("tokens", 8, 1, 2)
    # what an encoding uses on a document's segments: one int, or per query round(4 (seg[q] + 1) / (q + 1))
    assert build("hirope:window=5").far_shift([0, 0, 1]) == build("hirope:window=5").far_shift([]) == 4
    assert build("hirope:window=5,shift=segments").far_shift([0, 0, 1]).tolist() == [4, 2, 3]  # 4/1, 4/2, 8/3
    assert build("hirope:window=5,shift=segments").far_shift([]).tolist() == []


def test_segment_shift_is_pythons_round_for_ints_and_tensors():
    cases = [(w, s, t) for w in (1, 2, 5, 9, 64) for t in (1, 3, 8, 20, 100) for s in range(1, t + 1)]
    expected = [round(Fraction((w - 1) * s, t)) for w, s, t in cases]  # exact, ties to even
    assert [segment_shift("segments", w, s, t) for w, s, t in cases] == expected
    for w in (1, 2, 5, 9, 64):
        rows = [(s, t) for ww, s, t in cases if ww == w]
        s, t = torch.tensor(rows).T
        assert segment_shift("segments", w, s, t).tolist() == [round(Fraction((w - 1) * a, b)) for a, b in rows]


def test_default_spec_is_unchanged():
    assert pe.canonical_spec("hirope") == "hirope"
    assert pe.canonical_spec("hirope:shift=window,granularity=function") == "hirope"
    assert pe.canonical_spec("hirope:shift=none,granularity=class") == "hirope:shift=none,granularity=class"
    default = build("hirope:window=5")
    assert (default.shift, default.granularity, default.rotation_depends_on_length) == ("window", "function", False)
    assert not build("hirope:window=5,shift=segments").rotation_depends_on_length  # causal: no length in it
    seg = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4])
    positions = torch.stack((torch.arange(12), seg), -1)[None]
    index = torch.arange(12)[None]
    a = default.windowed_rotation(positions, index)
    b = build("hirope:window=5,shift=window").windowed_rotation(positions, index)
    for name in ("near_q", "near_k", "far_q", "far_k"):
        assert torch.equal(getattr(a, name).cos, getattr(b, name).cos)
        assert torch.equal(getattr(a, name).sin, getattr(b, name).sin)
    # the default's far queries are the paper's: window - 1 = 4 added to the segment level
    shifted = rotation_tables(default.theta, positions + torch.tensor([0, 4]), default.frequency_level)
    assert torch.equal(a.far_q.cos, shifted.cos) and torch.equal(a.far_q.sin, shifted.sin)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hirope:shift=tokens", "shift must be one of window, none, segments"),
        ("hirope:granularity=method", "granularity must be one of function, class, chunk"),
    ],
)
def test_bad_values_are_errors(spec, message):
    with pytest.raises(RopelabError, match=message):
        build(spec)


# -- shift=none and shift=segments in the forward pass --------------------------------------------------


def test_shift_none_changes_only_far_queries():
    T, window = 24, 6
    seg = torch.tensor([0] * 5 + [1] * 7 + [2] * 3 + [3] * 9)
    positions = torch.stack((torch.arange(T), seg), -1)[None]
    index = torch.arange(T)[None]
    paper = build(f"hirope:window={window}").windowed_rotation(positions, index)
    none = build(f"hirope:window={window},shift=none").windowed_rotation(positions, index)
    # near tables and far keys are the same; without a shift far queries read the key's positions
    for name in ("near_q", "near_k", "far_k"):
        assert torch.equal(getattr(paper, name).cos, getattr(none, name).cos)
    assert torch.equal(none.far_q.cos, none.far_k.cos) and torch.equal(none.far_q.sin, none.far_k.sin)

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, T, 8, generator=g)

    def scores(tables):
        q_near, q_far, k_near, k_far = tables.apply(q, k)
        near, far = q_near @ k_near.transpose(-1, -2), q_far @ k_far.transpose(-1, -2)
        distance = index[0, :, None] - index[0, None, :]
        return torch.where(distance < window, near, far)[0, 0], distance

    a, distance = scores(paper)
    b, _ = scores(none)
    causal_far = distance >= window
    assert torch.equal(a[~causal_far], b[~causal_far])
    assert (a[causal_far] - b[causal_far]).abs().min() > 0  # the segment frequencies turn differently

    # through the model: the first query with a far key is query `window`
    ids = torch.randint(0, 61, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (_model("hirope:window=8,shift=none")(ids) - _model("hirope:window=8")(ids)).abs().amax(-1)[0]
    assert diff[:8].max() < 1e-5 and diff[8:].max() > 1e-3


def test_shift_segments_is_the_segments_a_window_spans_so_far():
    """Query q adds round((window - 1) (seg[q] + 1) / (q + 1)): causal, per query."""
    T, window = 20, 9
    seg = [0] * 3 + [1] * 5 + [2] * 4 + [3] * 8
    other = [i // 2 for i in range(T)]
    expected = [[round(Fraction(8 * (s + 1), q + 1)) for q, s in enumerate(row)] for row in (seg, other)]
    assert expected[0][-1] == 2 and expected[1][-1] == 4  # 8 * 4 / 20 = 1.6; 8 * 10 / 20 = 4
    positions = torch.stack((torch.arange(T).expand(2, T), torch.tensor([seg, other])), -1)
    index = torch.arange(T)[None]
    encoding = build(f"hirope:window={window},shift=segments")
    assert [encoding.far_shift(seg).tolist(), encoding.far_shift(other).tolist()] == expected
    tables = encoding.windowed_rotation(positions, index)
    shift = torch.stack((torch.zeros(2, T, dtype=torch.long), torch.tensor(expected)), -1)
    shifted = rotation_tables(encoding.theta, positions + shift, encoding.frequency_level)
    assert torch.equal(tables.far_q.cos, shifted.cos) and torch.equal(tables.far_q.sin, shifted.sin)
    # causal and cache-aware: a prefix gets the same tables, and so do the last queries alone
    head = encoding.windowed_rotation(positions[:, :12], index[:, :12])
    assert torch.equal(head.far_q.cos, tables.far_q.cos[:, :12])
    tail = encoding.windowed_rotation(positions[:, 12:], index[:, 12:])
    assert torch.equal(tail.far_q.cos, tables.far_q.cos[:, 12:])
    # levels=3: the unit level gets the same shift
    three = build(f"hirope:window={window},shift=segments,levels=3,split=0.25")
    vectors = torch.cat((positions[:1], positions[:1, :, 1:] // 2), -1)
    got = three.windowed_rotation(vectors, index).far_q
    first = torch.tensor(expected[0])
    want = rotation_tables(three.theta, vectors + torch.stack((0 * first, first, first), -1), three.frequency_level)
    assert torch.equal(got.cos, want.cos)
    # no structure: the chunk ordinals i // chunk play the segments
    chunked = build(f"hirope:window={window},shift=segments,chunk=3")
    plain = chunked.windowed_rotation(index, index).far_q
    ordinals = index[0] // 3
    per_query = torch.tensor(chunked.far_shift(ordinals.tolist()))
    vectors = torch.stack((index, index // 3), -1)  # the token level is the global index
    want = rotation_tables(
        chunked.theta, vectors + torch.stack((0 * per_query, per_query), -1), chunked.frequency_level
    )
    assert torch.equal(plain.cos, want.cos)
    # window=0: no shift whatever the rule
    assert build("hirope:window=0,shift=segments").far_shift(seg) == 0


def test_out_of_range_share_takes_a_shift_per_query():
    seg = [0, 0, 1, 1, 2, 2]
    # window 2, max distance 1: far pairs (q, k) with q - k >= 2; per-query shifts 0,0,0,0,1,0
    shift = [0, 0, 0, 0, 1, 0]
    # q=2: k=0 (1-0=1, ok); q=3: k=0,1 (1, 1 ok); q=4: k=0..2 (2+1=3, 3, 1+1=2: all out);
    # q=5: k=0..3 (2, 2, 1, 1: two out) -> 5 out of 1 + 2 + 3 + 4 = 10 far pairs
    assert far_out_of_range_share(seg, 2, shift, 1) == pytest.approx(0.5)
    brute = sum(1 for q in range(6) for k in range(q - 1) if seg[q] - seg[k] + shift[q] > 1) / sum(
        1 for q in range(6) for k in range(q - 1)
    )
    assert brute == pytest.approx(0.5)
    with pytest.raises(RopelabError, match="one value per token"):
        far_out_of_range_share(seg, 2, [0, 1], 1)


def test_shift_segments_needs_no_host_sync():
    """Meta tensors have no values: any .item() / bool() on them raises."""
    encoding = build("hirope:window=9,shift=segments")
    positions = torch.zeros(2, 20, 2, dtype=torch.long, device="meta")
    index = torch.arange(20, device="meta")[None]
    shift = encoding._query_shift(encoding.hierarchy(positions, index), index)
    assert shift.shape == (2, 20, 1) and shift.device.type == "meta"


@pytest.mark.parametrize(
    "spec",
    [
        "hirope:split=1,window=4,shift=segments",
        "hirope:split=1,window=4,shift=none",
        "hirope:window=64,shift=segments",
        "hirope:window=64,shift=none",
    ],
)
def test_reductions_to_rope_hold(spec):
    ids = torch.randint(0, 61, (2, 60), generator=torch.Generator().manual_seed(0))
    seg = torch.arange(60) // 7
    positions = torch.stack((torch.arange(60), seg), -1)[None]
    with torch.no_grad():
        rope = _model("rope")(ids)
        torch.testing.assert_close(_model(spec)(ids), rope, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(_model(spec)(ids, positions=positions), rope, atol=1e-5, rtol=1e-5)


# -- granularity ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_bpe([SOURCE * 4], 300)


def _sample(tokenizer) -> Sample:
    ids = tokenizer.encode(SOURCE)
    return Sample("ppl", len(ids), 0, 0, SOURCE, ids, "", language="python")


def test_granularity_selects_the_segments(tokenizer):
    sample = _sample(tokenizer)
    function, _ = _hierarchy_positions(sample, sample.prompt_ids, tokenizer, 2, "function")
    klass, _ = _hierarchy_positions(sample, sample.prompt_ids, tokenizer, 2, "class")
    # functions: import, class header, __init__, area, total; classes: import, Box, total
    assert function[0, -1, 1] == 4 and klass[0, -1, 1] == 2
    assert torch.equal(function, _hierarchy_positions(sample, sample.prompt_ids, tokenizer, 2)[0])  # the default

    def evaluator(spec):
        config = ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, train_len=16, pe=spec)
        return Evaluator(Transformer(config).eval(), tokenizer, spec)

    assert torch.equal(evaluator("hirope:granularity=class").positions(sample, sample.prompt_ids)[0], klass)
    assert torch.equal(evaluator("hirope").positions(sample, sample.prompt_ids)[0], function)
    assert evaluator("hirope:granularity=chunk").positions(sample, sample.prompt_ids) == (None, None)


def test_hierarchy_analysis_honours_the_granularity(tokenizer):
    from ropelab.analysis.levels import hierarchy_analysis

    def segments(spec):
        config = ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, train_len=16, pe=spec)
        model = Transformer(config).eval()
        return hierarchy_analysis(model, tokenizer, SOURCE, "python", 64, [0], map_size=8)["segments"]

    assert [s["name"] for s in segments("hirope:granularity=class") if s["kind"] != "other"] == ["Box", "total"]
    assert [s["name"] for s in segments("hirope") if s["kind"] != "other"] == ["__init__", "area", "total"]
    assert {s["kind"] for s in segments("hirope:granularity=chunk,chunk=16")} == {"chunk"}
