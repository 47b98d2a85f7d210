"""The ``context`` task (loss by position, fixed targets, needle grid from one pass), the one-pass
sliding-window reference, and the statistics the reports use -- on a tiny random model with the
small BPE tokenizer of ``test_eval_runner``."""

from __future__ import annotations

import math

import pytest
import torch

from ropelab import ModelConfig, Transformer
from ropelab.core.errors import RopelabError
from ropelab.eval import get_task
from ropelab.eval.runner import WINDOW, Evaluator, evaluate, read_results
from ropelab.eval.stats import block_means, estimate, mcnemar, paired, verdict, wilson
from ropelab.eval.tasks.context import cuts, question_text
from ropelab.pe.sliding import SlidingWindow
from ropelab.reporting.eval import compare_runs, write_report

from .test_eval_runner import tokenizer  # noqa: F401  (module fixture)

TRAIN = 640


@pytest.fixture
def model(tokenizer):  # noqa: F811
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, train_len=TRAIN)
    model = Transformer(config).eval()
    with torch.no_grad():  # sharper attention, so positions matter
        for layer in model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
    return model


def _dense_sliding(model, ids: list[int], window: int, sinks: int) -> torch.Tensor:
    """Reference: every layer's attention with an explicit [T, T] mask -- keys at distance < window
    with RoPE, and sink key n scored at relative distance window - 1 - n."""
    from ropelab.pe.base import apply_rotary

    x = model.embed_tokens(torch.tensor([ids]))
    T = len(ids)
    pos = torch.arange(T)[None]
    rot = model.pe.rotation(pos)
    far_q = model.pe.rotation(torch.full_like(pos, window - 1))
    distance = pos[0][:, None] - pos[0][None]
    near_ok = (distance >= 0) & (distance < window)
    sink_ok = (distance >= window) & (pos[0][None] < sinks)
    for layer in model.layers:
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        B, _, _ = h.shape
        q = attn.q_proj(h).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        groups = attn.n_heads // attn.n_kv_heads
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        qn, qf, kn = apply_rotary(q, rot), apply_rotary(q, far_q), apply_rotary(k, rot)
        scores = torch.where(near_ok, qn @ kn.transpose(-1, -2), qf @ kn.transpose(-1, -2)) / math.sqrt(attn.head_dim)
        scores = scores.masked_fill(~(near_ok | sink_ok), float("-inf"))
        out = torch.softmax(scores, -1) @ v
        x = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.norm(x)[0]


@torch.no_grad()
@pytest.mark.parametrize("sinks", [0, 4])
def test_sliding_window_equals_a_dense_masked_reference(model, tokenizer, sinks):  # noqa: F811
    ids = tokenizer.encode("def f(x):\n    return x + 1\n" * 40)[:600]
    own = model.pe
    model.pe = SlidingWindow(own, 160, sinks)
    try:
        got = model.hidden_states(torch.tensor([ids]))[0]
    finally:
        model.pe = own
    want = _dense_sliding(model, ids, 160, sinks)
    assert torch.allclose(got, want, atol=1e-5)
    # and it is not plain causal attention
    assert not torch.allclose(got, model.hidden_states(torch.tensor([ids]))[0], atol=1e-3)


@torch.no_grad()
def test_window_prefill_equals_the_own_method_inside_and_the_sliding_window_beyond(model, tokenizer):  # noqa: F811
    ids = tokenizer.encode("class A:\n    def g(self):\n        return 2\n" * 40)[:1000]
    evaluator = Evaluator(model, tokenizer, WINDOW)
    own = model.pe.rotation(torch.arange(3)[None])  # keep a handle on the own encoding's output
    session = {}

    class Probe:
        mode = "session"

        def run(self, ev, sample):
            session["hidden"] = ev.prefill(ids, None, model.new_cache())
            return {"metrics": {}}

    evaluator.session(Probe(), None)
    full = model.hidden_states(torch.tensor([ids]))[0]
    assert torch.allclose(session["hidden"][:TRAIN], full[:TRAIN], atol=1e-5)  # no cut inside L
    sliding = model.pe
    model.pe = SlidingWindow(sliding, TRAIN)
    try:
        reference = model.hidden_states(torch.tensor([ids]))[0]
    finally:
        model.pe = sliding
    assert torch.allclose(session["hidden"], reference, atol=1e-5)
    assert model.pe.rotation(torch.arange(3)[None]).cos.equal(own.cos)  # the own method is back


def test_sliding_window_refuses_what_it_cannot_wrap(model):
    from ropelab.pe import build

    for spec in ("dynamic-ntk:factor=2", "rerope", "alibi"):
        with pytest.raises(RopelabError):
            SlidingWindow(build(spec, model.pe_context()), 64)


def _samples(tokenizer, length=1500, n=2):  # noqa: F811
    return get_task("context").build(tokenizer, length, n, 0, TRAIN)


def test_context_samples_hold_every_needle_before_its_cut(tokenizer):  # noqa: F811
    samples = _samples(tokenizer)
    assert len(samples) == 2
    for sample in samples:
        extra = sample.extra
        assert len(sample.prompt_ids) == sample.length - extra["room"]
        assert len(extra["needles"]) == 9 and len({n["key"] for n in extra["needles"]}) == 9
        for needle in extra["needles"]:
            text = tokenizer.decode(sample.prompt_ids[needle["start"] : needle["end"]])
            assert f"pass key of {needle['name']} is {needle['name']}{needle['key']}" in text
            assert needle["end"] <= needle["cut"] - extra["room"]
        assert sorted({n["cut"] for n in extra["needles"]}) == cuts(sample.length)
    assert samples[0].prompt_ids != samples[1].prompt_ids
    again = _samples(tokenizer)
    assert [s.prompt_ids for s in again] == [s.prompt_ids for s in samples]


@torch.no_grad()
@pytest.mark.parametrize("method", ["rope", "rerope:window=32", "hirope:window=32,chunk=16", WINDOW])
def test_cached_needle_answers_equal_separate_passes(model, tokenizer, method):  # noqa: F811
    """Questions asked from the truncated KV cache of one pass give the logits of a fresh pass over
    prefix + question (longest cut first, so truncation never loses what a later question needs)."""
    model.with_method("rope" if method == WINDOW else method)
    sample = _samples(tokenizer, n=1)[0]
    ids = sample.prompt_ids
    evaluator = Evaluator(model, tokenizer, method)
    found = {}

    class Probe:
        mode = "session"

        def run(self, ev, s):
            cache = model.new_cache()
            ev.prefill(ids, None, cache)
            for cut in sorted(cuts(s.length), reverse=True):
                prefix = cut - s.extra["room"]
                question = [*tokenizer.encode(question_text("amber")), 5, 6]
                cache.truncate(prefix)
                cached = model(torch.tensor([question]), cache=cache)[0]
                fresh = ev.prefill(ids[:prefix] + question, None, model.new_cache())
                found[cut] = (cached, model.lm_head(fresh[prefix:]))
            return {"metrics": {}}

    evaluator.session(Probe(), sample)
    for cached, fresh in found.values():
        assert torch.allclose(cached, fresh, atol=1e-4)


def test_context_task_runs_and_reports(tmp_path, model, tokenizer):  # noqa: F811
    out = evaluate(
        model, tokenizer, "tiny", ["rope", "rerope:window=32"], ["context"], ["1500"], 2, tmp_path / "run",
        progress=False,
    )  # fmt: skip
    records = read_results(out / "results.jsonl")
    assert {(r["method"], r["index"]) for r in records} == {
        (m, i) for m in ("rope", "rerope:window=32", WINDOW) for i in (0, 1)
    }
    by = {(r["method"], r["index"]): r for r in records}
    for (method, _), r in by.items():
        assert 1400 < len(r["token_losses"]) < 1500  # the document up to the question room of the last cut
        assert r["token_losses"][0] is None
        assert len(r["needles"]) > 9  # every needle before each cut
        if method != WINDOW:
            assert len(r["fixed"]["contexts"]) == 3  # L/4, L/2 and the whole document
            # the whole-document column is the main pass's losses of the same targets
            first, end = r["fixed"]["targets"]
            assert r["fixed"]["losses"][-1] == r["token_losses"][first:end]
    # inside the train length the window reference is the own method (rope) exactly
    for index in (0, 1):
        rope, window = by[("rope", index)]["token_losses"], by[(WINDOW, index)]["token_losses"]
        assert all(a is None or abs(a - b) < 2e-4 for a, b in zip(rope[:TRAIN], window[:TRAIN]))
        assert any(abs(a - b) > 1e-3 for a, b in zip(rope[TRAIN:], window[TRAIN:]) if a is not None)
    assert "Not a table task" in compare_runs(out, out)  # a context run compares without a KeyError
    report = write_report(out).read_text()
    assert "## Long-context use at 1500 tokens" in report and "Fixed targets, growing context" in report
    assert "Needle grid" in report and "±" in report
    for name in ("context_overview.png", "context_loss.png", "context_needles.png"):
        assert (out / name).is_file()
    # resumable: a second call measures nothing new
    evaluate(model, tokenizer, "tiny", ["rope", "rerope:window=32"], ["context"], ["1500"], 2, out, progress=False)
    assert len(read_results(out / "results.jsonl")) == len(records)


def test_statistics_against_hand_computed_values():
    est = estimate([1.0, 2.0, 3.0, 4.0])
    assert est.mean == 2.5 and est.n == 4
    assert est.se == pytest.approx(math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3 / 4))
    assert estimate([3.0]).se is None
    diff = paired([1.0, 2.0, None, 4.0], [0.5, 1.0, 7.0, 3.0])
    assert diff.n == 3 and diff.mean == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert verdict(paired([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])) == "better"
    assert verdict(paired([1.0, 2.0, 0.0], [1.1, 0.9, 1.0])) == "within noise"
    # Wilson interval: 0 of 10 is not a zero-width interval; 5 of 10 is symmetric around 50 %
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    # exact McNemar: 6 discordant pairs all one way -> p = 2 / 64
    p, a, b = mcnemar([1] * 6 + [0, 1], [0] * 6 + [0, 1])
    assert (a, b) == (6, 0) and p == pytest.approx(2 / 64)
    assert mcnemar([1, 0], [1, 0])[0] == 1.0
    assert block_means([None, None, 1.0, 2.0, 3.0, None], 0, 6, block=3) == [None, 2.5]
