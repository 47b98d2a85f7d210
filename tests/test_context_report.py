"""The context report's statistics: documents as units, pairing by sample, Holm, calls, rendering."""

from __future__ import annotations

import json

import pytest

from bench import context_study, render
from ropelab.eval.runner import REFERENCE
from ropelab.reporting.context import render_context, summarise_rows

T975_3 = 3.182446305284263  # t_{0.975, 3}


def _row(method, index, beyond, inside=1.0, sha="s", far=None, needles=None, length=2048):
    metrics = {"loss_inside": inside, "loss_beyond": beyond}
    counts = {"far_tokens": 0}
    if far is not None:
        metrics["loss_far"] = far
    if needles is not None:  # (hits, asked)
        metrics["needle_far"] = needles[0] / needles[1]
        counts.update(needle_far=needles[1], needle_far_hits=needles[0])
    return {
        "method": method, "length": length, "index": index, "document": f"doc{index}", "language": "python",
        "era": "new" if index == 3 else "old", "sample_sha256": sha, "seconds": 1.0, "metrics": metrics,
        "counts": counts, "buckets": [inside, beyond],
    }  # fmt: skip


CONFIG = {"methods": ["a"], "train_len": 1024, "model": "m", "samples": 4}


def test_paired_t_interval_holm_and_calls_by_hand():
    rows = [_row("a", i, b, needles=(n, 4)) for i, (b, n) in enumerate(zip([1.0, 1.1, 0.9, 1.2], [4, 3, 4, 4]))]
    rows += [_row(REFERENCE, i, b, needles=(0, 4)) for i, b in enumerate([1.5, 1.6, 1.4, 1.6])]
    s = summarise_rows(CONFIG, rows)["lengths"]["2048"]
    beyond = s["diffs"]["a"]["loss_beyond"]
    # differences -0.5, -0.5, -0.5, -0.4: mean -0.475, sd 0.05, se 0.025, 3 degrees of freedom
    assert beyond["interval"]["mean"] == pytest.approx(-0.475)
    assert beyond["interval"]["lo"] == pytest.approx(-0.475 - T975_3 * 0.025)
    assert beyond["interval"]["hi"] == pytest.approx(-0.475 + T975_3 * 0.025)
    assert beyond["interval"]["n"] == 4 and beyond["call"] == "better"
    # loss inside L is the same on every document: identical, never better
    assert s["diffs"]["a"]["loss_inside"]["call"] == "identical"
    needles = s["diffs"]["a"]["needle_far"]  # per-document rates 1, .75, 1, 1 against 0
    assert needles["interval"]["mean"] == pytest.approx(0.9375) and needles["call"] == "better"
    pooled = s["rows"]["a"]["needle_far"]["pooled"]  # 15 of 16 needles; Wilson 95 % interval
    assert (pooled["k"], pooled["n"]) == (15, 16)
    assert pooled["lo"] == pytest.approx(0.7167, abs=1e-4) and pooled["hi"] == pytest.approx(0.9889, abs=1e-4)
    # Holm over the family: the needle and loss comparisons' p values are adjusted together
    assert beyond["p_holm"] >= beyond["interval"]["p"]
    text = "\n".join(render_context(CONFIG, "context", summarise_rows(CONFIG, rows)))
    assert "**4 documents** (4 python)" in text and "**-0.475 [-0.555, -0.395] better**" in text
    assert "identical" in text and "Memorisation check" in text


def test_two_documents_make_no_call_and_mismatched_samples_do_not_pair():
    rows = [_row("a", i, 1.0) for i in range(2)] + [_row(REFERENCE, i, 3.0) for i in range(2)]
    s = summarise_rows(CONFIG, rows)["lengths"]["2048"]
    assert s["diffs"]["a"]["loss_beyond"]["call"] == "n too small"  # a huge effect, but 2 documents
    rows = [_row("a", i, 1.0 + i / 10, sha="x" if i == 0 else "s") for i in range(4)]
    rows += [_row(REFERENCE, i, 2.0) for i in range(4)]
    s = summarise_rows(CONFIG, rows)["lengths"]["2048"]
    assert s["mismatched"] == ["doc0"] and s["diffs"]["a"]["loss_beyond"]["interval"]["n"] == 3


def test_within_the_train_length_only_the_inside_loss_is_tested():
    rows = [_row("a", i, 1.0, inside=1.0 + i / 100, length=512) for i in range(4)]
    rows += [_row(REFERENCE, i, 1.0, length=512) for i in range(4)]
    summary = summarise_rows(CONFIG, rows)
    assert summary["family"] == 1
    text = "\n".join(render_context(CONFIG, "context", summary))
    assert "no row can differ from the reference beyond it" in text


def test_study_section_renders_partial_stages(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    assert "Not measured yet" in "\n".join(render.section_study())
    config = {**CONFIG, "methods": ["a"], "samples": 20}
    rows = [_row(m, i, 1.0 + (m == REFERENCE)) for i in range(4) for m in ("a", REFERENCE)] + [_row("a", 4, 1.0)]
    data = {"machine": {"cpu": "C", "cores": 2, "torch_threads": 2, "torch": "t", "date": "d"},
            "stages": {"2x": {"config": config, "documents": rows}}}  # fmt: skip
    (tmp_path / "context_study.json").write_text(json.dumps(data))
    text = "\n".join(render.section_study())
    assert "**Partial: 4 of 20 documents measured so far**" in text and "**4 documents**" in text


def test_study_run_is_saved_and_restored_from_its_archive(tmp_path):
    run, archive = tmp_path / "runs" / "2x", tmp_path / "archive" / "2x"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"samples": 20}')
    (run / "results.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    context_study.save(run, archive)
    fresh = tmp_path / "fresh" / "2x"
    context_study.restore(fresh, archive)  # a new checkout: the run starts from the archive
    assert (fresh / "results.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
    assert (fresh / "config.json").read_text() == '{"samples": 20}'
    (fresh / "results.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    context_study.restore(fresh, archive)  # a run that holds more is never overwritten
    assert (fresh / "results.jsonl").read_text().count("\n") == 3


def test_a_model_no_better_than_a_unigram_one_gets_no_call():
    rows = [_row("a", i, b) for i, b in enumerate([1.0, 1.1, 0.9, 1.2])]
    rows += [_row(REFERENCE, i, b) for i, b in enumerate([1.5, 1.6, 1.4, 1.6])]
    for row in rows:
        row["unigram_loss"] = 0.9  # every loss inside L (1.0) is above it
    summary = summarise_rows(CONFIG, rows)
    assert summary["lengths"]["2048"]["diffs"]["a"]["loss_beyond"]["call"] == "model at floor"
    assert "**The model is at floor:**" in "\n".join(render_context(CONFIG, "context", summary))
    for row in rows:
        row["unigram_loss"] = 2.0
    assert summarise_rows(CONFIG, rows)["lengths"]["2048"]["diffs"]["a"]["loss_beyond"]["call"] == "better"
