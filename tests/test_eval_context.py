"""The ``context`` task (loss by position, fixed targets, needle grid from one pass), the one-pass
sliding-window reference, and the statistics the reports use -- on a tiny random model with the
small BPE tokenizer of ``test_eval_runner``."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from ropelab import ModelConfig, Transformer
from ropelab.core.errors import RopelabError
from ropelab.eval import get_task
from ropelab.eval.runner import REFERENCE, Evaluator, evaluate, read_results
from ropelab.eval.stats import block_means, mcnemar, wilson
from ropelab.eval.tasks.context import fingerprint, question_text
from ropelab.pe.sliding import SlidingWindow
from ropelab.reporting.eval import compare_runs, write_report
from tests.helpers import corpus_or_skip

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
    evaluator = Evaluator(model, tokenizer, REFERENCE)
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


def _samples(tokenizer, length=1500, n=2, train_len=TRAIN):  # noqa: F811
    corpus_or_skip()
    return get_task("context").build(tokenizer, length, n, 0, train_len)


def test_context_samples_place_needles_far_and_near(tokenizer):  # noqa: F811
    train = 1600  # room for near needles of this tiny tokenizer (~45 tokens each) in the last L/2
    samples = _samples(tokenizer, length=4000, n=4, train_len=train)
    assert [s.language for s in samples] == ["python", "java", "python", "java"]  # the projects' fixed order
    for sample in samples:
        extra = sample.extra
        end = len(sample.prompt_ids)
        assert end == sample.length - extra["room"]
        far = [n for n in extra["needles"] if n["far"]]
        near = [n for n in extra["needles"] if not n["far"]]
        assert len(far) >= 4 and len(near) == 3 and len({n["key"] for n in extra["needles"]}) == len(extra["needles"])
        mark = "#" if sample.language == "python" else "//"
        for needle in extra["needles"]:
            text = tokenizer.decode(sample.prompt_ids[needle["start"] : needle["end"]])
            assert f"{mark} The pass key of {needle['name']} is {needle['name']}{needle['key']}" in text
        assert all(n["end"] <= end - train for n in far)  # the window cannot see them from the question
        assert all(n["start"] >= end - train // 2 for n in near)  # it must see these
        skip = {t for n in extra["needles"] for t in range(n["start"], n["end"])}
        assert not skip & set(extra["far_tokens"])
        for site in extra["sites"]:
            gold = tokenizer.decode(site["candidates"][site["gold"]]).strip()
            assert gold == site["name"]
            assert (
                sample.prompt_ids[site["start"] : site["start"] + len(site["candidates"][site["gold"]])]
                == site["candidates"][site["gold"]]
            )
    assert samples[0].prompt_ids != samples[2].prompt_ids
    again = _samples(tokenizer, length=4000, n=4, train_len=train)
    assert [fingerprint(s) for s in again] == [fingerprint(s) for s in samples]


def test_context_probes_are_lines_after_the_document_using_symbols_defined_far_back(tokenizer):  # noqa: F811
    samples = _samples(tokenizer, length=6000, n=4)
    for sample in samples:
        end = len(sample.prompt_ids)
        assert not [n for n in sample.extra["needles"] if not n["far"]]  # no room for near needles at this L
        for probe in sample.extra["probes"]:
            gold = probe["candidates"][probe["gold"]]
            line = tokenizer.decode(probe["context"] + gold)
            assert line.startswith("\n") and line.strip().endswith(probe["name"])
            assert line[1:] not in sample.prompt  # text after the document
            assert probe["distance"] > TRAIN and probe["distance"] <= end
    assert sum(len(s.extra["probes"]) for s in samples) >= 4
    # every candidate of a far site or probe is a made-up name: no prior knowledge of real code tells them apart
    from ropelab.eval import projects

    for sample in samples:
        original = "".join(projects.load(projects.get(sample.extra["document"]))[0])
        far_items = [s for s in sample.extra["sites"] if s["far"]] + sample.extra["probes"]
        for item in far_items:
            for candidate in item["candidates"]:
                name = tokenizer.decode(candidate).strip()
                assert re.search(rf"\b{re.escape(name)}\b", original) is None, name
                assert re.search(rf"\b{re.escape(name)}\b", sample.prompt), name  # defined in the document
        assert sample.extra.get("renamed", 0) >= len({item["name"] for item in far_items})


def test_renaming_keeps_style_and_whole_words():
    import random as r

    from ropelab.eval.tasks.context import _random_names, _rename

    mapping = _random_names(["Parser", "_helper", "MAX_SIZE", "get"], "get = Parser()", set(), r.Random(0))
    assert mapping["Parser"][0].isupper() and mapping["_helper"].startswith("_") and mapping["MAX_SIZE"].isupper()
    assert len(set(mapping.values())) == 4 and not set(mapping.values()) & {"get", "Parser"}
    text = "x = Parser(); y = Parsers; obj.get(1); forget(); MAX_SIZE"
    out = _rename(text, mapping)
    assert f"x = {mapping['Parser']}()" in out and "Parsers" in out and "forget()" in out
    assert f"obj.{mapping['get']}(1)" in out and out.endswith(mapping["MAX_SIZE"])


def test_context_refuses_more_documents_than_the_split_holds(tokenizer):  # noqa: F811
    with pytest.raises(RopelabError, match=r"only \d+ test project\(s\) hold"):
        _samples(tokenizer, n=500)


@torch.no_grad()
@pytest.mark.parametrize("method", ["rope", "rerope:window=32", "hirope:window=32,chunk=16", REFERENCE])
def test_cached_answers_equal_separate_passes(model, tokenizer, method):  # noqa: F811
    """A question at the end and a candidate at an earlier site, each asked from the truncated KV cache
    of one pass (end first, so truncation never loses what a later one needs), give the logits of a
    fresh pass over prefix + continuation."""
    model.with_method("rope" if method == REFERENCE else method)
    sample = _samples(tokenizer, n=1)[0]
    ids = sample.prompt_ids
    evaluator = Evaluator(model, tokenizer, method)
    found = []

    class Probe:
        mode = "session"

        def run(self, ev, s):
            cache = model.new_cache()
            ev.prefill(ids, None, cache)
            for prefix in (len(ids), len(ids) - 200, TRAIN + 50):
                question = [*tokenizer.encode(question_text("amber")), 5, 6]
                cache.truncate(prefix)
                cached = model(torch.tensor([question]), cache=cache)[0]
                fresh = ev.prefill(ids[:prefix] + question, None, model.new_cache())
                found.append((cached, model.lm_head(fresh[prefix:])))
            return {"metrics": {}}

    evaluator.session(Probe(), sample)
    for cached, fresh in found:
        assert torch.allclose(cached, fresh, atol=1e-4)


def test_context_task_runs_and_reports(tmp_path, model, tokenizer):  # noqa: F811
    corpus_or_skip()
    out = evaluate(
        model, tokenizer, "tiny", ["rope", "rerope:window=32"], ["context"], ["1500"], 3, tmp_path / "run",
        progress=False, order="sample",
    )  # fmt: skip
    records = read_results(out / "results.jsonl")
    assert [(r["method"], r["index"]) for r in records] == [
        (m, i) for i in (0, 1, 2) for m in ("rope", "rerope:window=32", REFERENCE)
    ]  # sample by sample
    by = {(r["method"], r["index"]): r for r in records}
    for r in records:
        assert 1400 < len(r["token_losses"]) < 1500  # the document up to the question room
        assert r["token_losses"][0] is None
        assert {n["far"] for n in r["needles"]} == {True}  # no room for near ones at L = 640 with these tokens
        assert r["metrics"]["needle_far_n"] >= 4 and 0 <= r["metrics"]["needle_far"] <= 1
        assert len({x["sample_sha256"] for x in records if x["index"] == r["index"]}) == 1
    # inside the train length the window reference is the own method (rope) exactly
    for index in (0, 1, 2):
        rope, window = by[("rope", index)]["token_losses"], by[(REFERENCE, index)]["token_losses"]
        assert all(a is None or abs(a - b) < 2e-4 for a, b in zip(rope[:TRAIN], window[:TRAIN]))
        assert any(abs(a - b) > 1e-3 for a, b in zip(rope[TRAIN:], window[TRAIN:]) if a is not None)
    assert "Not a table task" in compare_runs(out, out)  # a context run compares without a KeyError
    report = write_report(out).read_text()
    assert "## Long-context use at 1500 tokens" in report and "**3 documents**" in report
    assert "Holm" in report and "Δ loss beyond L" in report
    summary = json.loads((out / "summary.json").read_text())["tasks"]["context"]["lengths"]["1500"]
    rope_inside = summary["diffs"]["rope"]["loss_inside"]
    assert rope_inside["call"] == "identical" and rope_inside["interval"]["n"] == 3
    assert (out / "context_overview.png").is_file()
    # resumable: a second call measures nothing new
    evaluate(model, tokenizer, "tiny", ["rope", "rerope:window=32"], ["context"], ["1500"], 3, out, progress=False)
    assert len(read_results(out / "results.jsonl")) == len(records)


def test_old_statistics_helpers_against_hand_computed_values():
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
