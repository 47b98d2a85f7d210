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


def test_render_reads_json_and_marks_missing_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    text = render.render()
    assert text.count("*Not measured yet.*") >= 7  # nothing measured: every section says so, no numbers
    data = {
        "machine": {"cpu": "TestCPU", "cores": 2, "torch_threads": 2, "torch": "x", "date": "d"},
        "results": [
            {"impl": "ropelab", "length": 1024, "prefill_s": 2.0, "decode_tokens_per_s": 5.0, "peak_memory_mb": 10},
            {
                "impl": "transformers",
                "length": 1024,
                "prefill_s": 3.0,
                "decode_tokens_per_s": 4.0,
                "peak_memory_mb": 20,
            },
        ],
        "comparisons": [
            {
                "length": 1024,
                "prefill_speedup": 1.5,
                "decode_speedup": 1.25,
                "memory_ratio": 0.5,
                "max_logit_diff": 1e-5,
                "same_tokens": True,
            }
        ],
    }
    (tmp_path / "hf_speed.json").write_text(json.dumps(data))
    text = render.render()
    assert "| 1024 | 2.00 | 3.00 | 1.50x | 5.0 | 4.0 | 10 | 20 | 1.0e-05 | yes |" in text
    assert "TestCPU" in text


def test_import_run_requires_a_finished_run(tmp_path):
    from ropelab.errors import RopelabError

    with pytest.raises(RopelabError, match="no summary"):
        render.import_run("compare", tmp_path)


def test_matmul_peak_is_positive():
    from bench.common import matmul_peak_gflops

    torch.manual_seed(0)
    assert matmul_peak_gflops(size=64, seconds=0.05) > 0
