"""The benchmark suite's arithmetic and rendering (the measurements themselves are not tests)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import long_context, render, train_speed
from bench import pe_speed as pe_speed_bench
from ropelab.model.config import ModelConfig
from ropelab.model.transformer import Transformer


def _row(method, tokens, seconds, memory):
    return {"method": method, "tokens": tokens, "forward_seconds": seconds, "forward_memory_mb": memory}


def test_scaling_summary_ratios_and_exponents():
    rows = [
        _row("rope", 4096, 10.0, 100.0),
        _row("rope", 8192, 30.0, 200.0),  # linear memory
        _row("rerope", 4096, 12.0, 100.0),
        _row("rerope", 8192, 45.0, 400.0),  # quadratic memory
    ]
    summary = {(r["method"], r["tokens"]): r for r in long_context.scaling_summary(rows)}
    assert summary[("rerope", 8192)]["time_vs_rope"] == pytest.approx(1.5)
    assert summary[("rope", 8192)]["memory_exponent"] == pytest.approx(1.0)
    assert summary[("rerope", 8192)]["memory_exponent"] == pytest.approx(2.0)
    assert summary[("rerope", 4096)]["memory_exponent"] is None


@pytest.mark.parametrize("tie", [True, False])
def test_model_flops_per_token_by_hand(tie):
    config = ModelConfig(vocab_size=100, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=32, tie_embeddings=tie)
    model = Transformer(config)
    head_dim, kv = 4, 2 * 4
    per_layer = 16 * 16 + 16 * kv + 16 * kv + 16 * 16 + 3 * 16 * 32  # q, k, v, o, gate/up/down
    matmul = 2 * per_layer + 100 * 16  # the LM head (tied or not); an untied embedding is a lookup only
    expected = 6 * matmul + 12 * 2 * 4 * head_dim * 64
    assert train_speed.model_flops_per_token(model, 64) == expected


def test_pe_speed_skips_bias_methods_beyond_the_memory_guard():
    cases = pe_speed_bench.measure(
        ["rope", "alibi"], "tiny", 32, 1, repeats=1, warmup=0, seed=0, phases=("fwd",), max_bias_gb=1e-9
    )
    rows = {r["method"]: r for r in pe_speed_bench.summarise(cases)}
    assert rows["alibi"]["status"] == "SKIP" and rows["alibi"]["fwd_ms"] is None
    assert rows["rope"]["fwd_ratio"] == 1.0 and "fwd_bwd_ms" not in rows["rope"]


def test_pe_speed_inference_targets_by_family_and_the_bias_memory_limit():
    def case(spec, ms, peak_mb=100.0):
        model = Transformer(ModelConfig.from_name("tiny", pe=spec))
        found = pe_speed_bench.Case(spec, pe_speed_bench.family_of(spec), model, samples={"fwd": [ms / 1e3] * 3})
        found.memory["fwd"] = {"peak_mb": peak_mb, "growth_mb": 1.0}
        return found

    cases = [
        case("rope", 10.0),
        case("alibi", 14.0),  # 1.4x <= 1.5x
        case("fire", 16.0),  # 1.6x > 1.5x
        case("kerple-log", 11.0, peak_mb=3 * 1024 + 1),  # fast, but over 3 GB
        case("rerope", 11.9),  # 1.19x <= 1.2x
        case("hirope", 12.5),  # 1.25x > 1.2x
    ]
    rows = {r["method"]: r for r in pe_speed_bench.summarise(cases)}
    assert {m: r["status"] for m, r in rows.items()} == {
        "rope": "PASS",
        "alibi": "PASS",
        "fire": "MISS",
        "kerple-log": "MISS",
        "rerope": "PASS",
        "hirope": "MISS",
    }
    assert rows["alibi"]["target"] == 1.5 and rows["hirope"]["target"] == 1.2
    # beyond 4K a bias method is judged by its memory alone (its ratio is still reported)
    long = {r["method"]: r for r in pe_speed_bench.summarise(cases, seq_len=16384)}
    assert long["fire"]["status"] == "PASS" and long["fire"]["target"] is None
    assert long["fire"]["fwd_ratio"] == pytest.approx(1.6)
    assert long["kerple-log"]["status"] == "MISS" and long["hirope"]["status"] == "MISS"
    cases[0].samples["fwd_bwd"] = [0.01]  # training measured: the training targets apply
    cases[1].samples["fwd_bwd"] = [0.018]
    assert pe_speed_bench.summarise(cases[:2])[1]["target"] == 2.0


def test_render_reads_json_and_marks_missing_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    text = render.render()
    assert text.count("*Not measured yet.*") >= 7  # nothing measured: every section says so, no numbers
    from bench import hf_speed

    def worker_run(impl, prefill, decode, memory, method="rope"):
        return {
            "impl": impl,
            "method": method,
            "length": 1024,
            "prefill_s": prefill,
            "decode_tokens_per_s": decode,
            "peak_memory_mb": memory,
            "generated": [1, 2],
            "last_logits": [0.5, 0.25],
            "threads": 2,
        }

    ours = [
        worker_run("ropelab", 2.0, 5.0, 10),
        worker_run("ropelab", 2.2, 6.0, 12),
        worker_run("ropelab", 1.0, 4.0, 9),
    ]
    theirs = [worker_run("transformers", 3.0, 4.0, 20)] * 3
    data = {
        "machine": {"cpu": "TestCPU", "cores": 2, "torch_threads": 2, "torch": "x", "date": "d"},
        "settings": {"repeats": 3, "new_tokens": 32},
        "results": [
            hf_speed.summarise(ours),
            hf_speed.summarise(theirs),
            hf_speed.summarise([worker_run("ropelab", 2.5, 4.8, 14, "rerope")] * 3),
        ],
        "comparisons": [hf_speed._compare(ours, theirs)],
    }
    comparison = data["comparisons"][0]  # by hand: medians 2.0 s, 5.0 tok/s, 10 MB against 3.0, 4.0, 20
    assert comparison["prefill_speedup"] == pytest.approx(1.5) and comparison["decode_speedup"] == pytest.approx(1.25)
    assert comparison["memory_ratio"] == pytest.approx(0.5) and comparison["memory_ratio_rounds"] == [0.45, 0.6]
    assert comparison["decode_speedup_rounds"] == [1.0, 1.5] and comparison["same_tokens"]
    (tmp_path / "hf_speed.json").write_text(json.dumps(data))
    text = render.render()
    row = "| 1024 | 5.0 (4.0-6.0) | 4.0 (4.0-4.0) | 1.25x (1.00-1.50) | 10 (9-12) | 20 (20-20) | 0.50 (0.45-0.60) "
    assert row + "| 1.50x (1.36-3.00) | 0.0e+00 | yes |" in text
    assert "| 1024 | `rerope` | 4.8 (4.8-4.8) | 1.20x | 14 (14-14) |" in text
    assert "TestCPU" in text


def test_import_run_requires_a_finished_run(tmp_path):
    from ropelab.core.errors import RopelabError

    with pytest.raises(RopelabError, match="no summary"):
        render.import_run("compare", tmp_path)


def test_matmul_peak_is_positive():
    from bench.common import matmul_peak_gflops

    torch.manual_seed(0)
    assert matmul_peak_gflops(size=64, seconds=0.05) > 0


def test_long_context_resumes_only_a_run_with_the_same_setting(tmp_path):
    setting = {"benchmark": "long_context", "model": "m", "language": "python", "skip": 0}
    full = {"spec": "rope", "tokens": 64, "buckets": [{"start": 0, "end": 64, "mean_loss": 1.0}]}
    short = {"spec": "rope", "requested": 32, "tokens": 32}
    path = tmp_path / "out.json"
    path.write_text(json.dumps({**setting, "bucket": 16, "tokens": 64, "results": [full], "scaling_passes": [short]}))
    done = long_context._finished(str(path), setting, 16, 64)
    assert done[("rope", 64)]["buckets"] and done[("rope", 32)] == short
    assert long_context._finished(str(path), {**setting, "language": "java"}, 16, 64) == {}
    assert long_context._finished(str(path), setting, 16, 128) == {}
    assert long_context._finished(str(path), setting, 8, 64) == {}
    path.write_text("{half a file")
    assert long_context._finished(str(path), setting, 16, 64) == {}


def test_hirope_sweep_grid_choice_and_held_out_table(tmp_path):
    import argparse
    import math

    from bench import hirope_sweep
    from ropelab.experiments.hirope import selection

    windows = hirope_sweep._fractions("1/16, 1/2")
    assert selection.grid(128, windows, ["0.5", "auto"]) == [
        "hirope:window=8",
        "hirope:window=64",
        "hirope:split=auto,window=8",
        "hirope:split=auto,window=64",
    ]
    for bad in ("1/x", "1/0", "-1/2", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            hirope_sweep._fractions(bad)
    # the choice from development records (one seed): window=8 ties window=64 (mixed signs) and is smaller
    beyond = {"hirope:window=8": [3.0, 3.3, 2.9], "hirope:window=64": [3.1, 3.1, 3.0], "window": [2.0, 2.0, 2.0]}
    dev = [{"method": m, "document": d, "beyond": v} for m, vs in beyond.items() for d, v in zip("abc", vs)]
    path = tmp_path / "selection.json"
    found = selection.choose(path, dev, list("abc"), ["hirope:window=8", "hirope:window=64"], 128, [0])
    assert found["chosen"] == "hirope:window=8" and found["smaller_window"] is None
    rows = {r["spec"]: r for r in found["rows"]}
    assert rows["hirope:window=8"]["to_reference"]["mean"] == pytest.approx(1.0667, abs=1e-4)  # 3.2/3 - 2
    # saved once: other records later never change the choice
    assert selection.choose(path, [], list("abc"), ["hirope:window=64"], 128, [0]) == found
    # held-out: each spec minus the window per document, Holm over specs x metrics
    test = [
        {"seed": 0, "method": m, "document": d, "beyond": b, "far": f}
        for m, values in {
            "hirope:window=8": [(3.0, 5.0), (3.2, 5.5), (2.8, 4.5)],
            "window": [(2.0, 6.0), (2.1, 6.4), (1.9, 5.6)],
        }.items()
        for d, (b, f) in zip("abc", values)
    ]
    table = {r["spec"]: r for r in hirope_sweep.held_out(test, ["hirope:window=8"])}
    hirope = table["hirope:window=8"]
    assert hirope["beyond"] == pytest.approx(3.0) and table["window"]["far"] == pytest.approx(6.0)
    assert hirope["beyond_minus_window"]["mean"] == pytest.approx(1.0) and hirope["beyond_minus_window"]["n"] == 3
    assert hirope["far_minus_window"]["mean"] == pytest.approx(-1.0)
    # differences 1.0, 1.1, 0.9 (and -1.0, -0.9, -1.1): t = 1.0 / (0.1 / sqrt 3), df 2 -> p = 0.00332 each;
    # Holm over the 2: the first x 2, the second x 1 but never below the first -> both 0.00663
    assert hirope["beyond_minus_window"]["adjusted_p"] == pytest.approx(2 * 0.003317, rel=0.01)
    assert hirope["far_minus_window"]["adjusted_p"] == pytest.approx(2 * 0.003317, rel=0.01)
    assert hirope["beyond_minus_window"]["call"] == "worse" and hirope["far_minus_window"]["call"] == "better"
    assert math.isnan(hirope_sweep._mean([]))
    found = hirope_sweep.out_of_range(
        [{"method": "hirope", "document": "a", "out_of_range": 0.25}, {"method": "rope", "document": "a"}]
    )
    assert found == {"hirope": {"a": 0.25}}


def test_long_context_without_scaling_lengths_records_no_scaling_passes(tmp_path, monkeypatch):
    """A pass at the main length is resumed from ``results`` (with its buckets), never from a
    bucket-less scaling copy: relabelling a result must not bring back its old copy."""
    import argparse

    import bench.common

    calls = []

    def fake(module, arguments):
        spec = arguments[arguments.index("--method") + 1]
        calls.append(spec)
        return {"method": spec, "tokens": 64, "buckets": [{"start": 0, "end": 64, "mean_loss": 1.0}], "blocks": [],
                "forward_seconds": 1.0, "forward_memory_mb": 1.0, "mean_loss": 1.0, "peak_rss_mb": 1.0}  # fmt: skip

    monkeypatch.setattr(bench.common, "isolated", fake)
    out = tmp_path / "lc.json"
    args = argparse.Namespace(method=None, methods="rope,hirope", scaling_methods="rope,hirope", scaling_lengths="",
                              model="m", bucket=16, threads=0, tokens=64, language="python", skip=0, out=str(out))  # fmt: skip
    assert long_context.run(args) == 0
    data = json.loads(out.read_text())
    assert data["scaling_passes"] == [] and calls == ["rope", "hirope"]
    data["results"][1]["spec"] = "hirope:window=512"  # relabelled: "hirope" must be measured again
    out.write_text(json.dumps(data))
    assert long_context.run(args) == 0
    assert calls == ["rope", "hirope", "hirope"]


def test_archive_keeps_every_file_of_a_run_and_counts_records_across_them(tmp_path):
    from bench.common import restore, save

    names = ("setting.json", "selection.json", "dev.jsonl", "test.jsonl")
    run, archive, fresh = tmp_path / "run", tmp_path / "archive", tmp_path / "fresh"
    run.mkdir()
    (run / "setting.json").write_text('{"length": 12288}')
    (run / "dev.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    (run / "test.jsonl").write_text('{"b": 1}\n')
    save(run, archive, names)  # no selection yet: that file is simply absent
    assert sorted(p.name for p in archive.iterdir()) == ["dev.jsonl.gz", "setting.json", "test.jsonl.gz"]
    restore(fresh, archive, names)
    assert [(fresh / n).read_text() for n in ("setting.json", "dev.jsonl", "test.jsonl")] == [
        '{"length": 12288}',
        '{"a": 1}\n{"a": 2}\n',
        '{"b": 1}\n',
    ]
    assert not (fresh / "selection.json").exists()
    (fresh / "test.jsonl").write_text('{"b": 1}\n{"b": 2}\n')  # more records here than archived: kept
    restore(fresh, archive, names)
    assert (fresh / "test.jsonl").read_text().count("\n") == 2


def test_released_memory_leaves_the_resident_set_before_a_measurement():
    """Freed 100 KB buffers (below glibc's mmap threshold) stay resident until the allocator
    hands them back: a measurement that starts then would reuse them unseen."""
    from bench.common import RssSampler, release_free_memory

    kept, freed = [], []
    for _ in range(2000):  # 200 MB, each buffer pinned in the heap by a small neighbour
        freed.append(torch.ones(25_000))
        kept.append(torch.ones(10))
    full = RssSampler.rss_mb()
    del freed
    if not release_free_memory():
        pytest.skip("no glibc malloc_trim here")
    assert RssSampler.rss_mb() < full - 100
