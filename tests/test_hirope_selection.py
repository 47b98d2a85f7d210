"""How HiRoPE's settings are chosen (ropelab.experiments.hirope.selection): the grid, the rule
(hand-worked cases), the development/test guard, and the ShortLLM model's held-out data."""

from __future__ import annotations

import pytest

from ropelab.core.errors import RopelabError
from ropelab.experiments.hirope import data, selection
from ropelab.experiments.hirope.config import ShortConfig, ablations, resolved_methods
from ropelab.pe import parse_spec


def test_grid_spans_L_over_16_to_L_at_three_splits():
    specs = selection.grid(128)
    assert len(specs) == 15
    assert {selection.window_of(s, 128) for s in specs} == {8, 16, 32, 64, 128}
    splits = {parse_spec(s)[0].params["split"] for s in specs}
    assert splits == {0.25, 0.5, "auto"}
    assert selection.window_of("hirope", 128) == 64  # window=auto: L/2
    with pytest.raises(RopelabError, match="not a hirope"):
        selection.window_of("rope", 128)


def test_the_leader_wins_when_nothing_ties_it():
    # w=8 is 0.5 worse on every document (a tight interval above 0); w=64 is the leader
    found = {
        "hirope:window=8": {"a": 3.5, "b": 3.6, "c": 3.4, "d": 3.55},
        "hirope:window=64": {"a": 3.0, "b": 3.1, "c": 2.9, "d": 3.05},
    }
    chosen, rows = selection.select(found, 128)
    assert chosen == "hirope:window=64"
    assert [r.spec for r in rows] == ["hirope:window=64", "hirope:window=8"]  # sorted by mean
    assert rows[1].to_leader.mean == pytest.approx(0.5) and rows[1].to_leader.lo > 0 and not rows[1].tied


def test_a_tie_goes_to_the_smaller_window():
    # w=8 is better on two documents and worse on two: mean +0.025, interval across 0 -> tied
    found = {
        "hirope:window=8": {"a": 2.9, "b": 3.2, "c": 2.8, "d": 3.2},
        "hirope:window=64": {"a": 3.0, "b": 3.1, "c": 2.9, "d": 3.0},
        "hirope:window=32": {"a": 4.0, "b": 4.1, "c": 3.9, "d": 4.0},  # clearly worse: not tied
    }
    chosen, rows = selection.select(found, 128)
    leader = min(rows, key=lambda r: r.mean)
    assert leader.spec == "hirope:window=64"
    by = {r.spec: r for r in rows}
    assert by["hirope:window=8"].tied and not by["hirope:window=32"].tied
    assert chosen == "hirope:window=8"


def test_equal_windows_tie_on_the_lower_mean_and_the_reference_is_never_chosen():
    found = {
        "hirope:split=0.25,window=8": {"a": 3.0, "b": 3.3, "c": 2.9, "d": 3.1},
        "hirope:window=8": {"a": 3.1, "b": 3.1, "c": 3.0, "d": 3.0},
    }
    reference = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}  # far better, but only reported
    chosen, rows = selection.select(found, 128, reference)
    # by hand: split 0.25 -> (3.0 + 3.3 + 2.9 + 3.1) / 4 = 3.075; split 0.5 -> 3.05, the leader; the
    # differences -0.1, +0.2, -0.1, +0.1 straddle 0 (tied); equal windows -> the lower mean wins
    assert chosen == "hirope:window=8"
    assert {r.spec: round(r.mean, 3) for r in rows} == {"hirope:split=0.25,window=8": 3.075, "hirope:window=8": 3.05}


def test_the_rule_refuses_incomplete_or_too_few_documents():
    with pytest.raises(RopelabError, match="other development documents"):
        selection.select({"hirope:window=8": {"a": 1.0, "b": 1.0, "c": 1.0}, "hirope:window=16": {"a": 1.0}}, 128)
    with pytest.raises(RopelabError, match="at least 3"):
        selection.select({"hirope:window=8": {"a": 1.0, "b": 1.0}}, 128)
    with pytest.raises(RopelabError, match="not finite"):
        selection.select({"hirope:window=8": {"a": 1.0, "b": float("nan"), "c": 1.0}}, 128)
    with pytest.raises(RopelabError, match="no development scores"):
        selection.select({}, 128)


def test_a_large_chosen_window_brings_the_best_smaller_one():
    found = {
        "hirope:window=64": {"a": 3.0, "b": 3.1, "c": 2.9},
        "hirope:window=16": {"a": 3.5, "b": 3.6, "c": 3.4},
        "hirope:window=8": {"a": 3.9, "b": 3.6, "c": 3.8},
    }
    chosen, rows = selection.select(found, 128)
    assert chosen == "hirope:window=64"
    assert selection.smaller_window_alternative(chosen, rows, 128) == "hirope:window=16"
    assert selection.smaller_window_alternative("hirope:window=16", rows, 128) is None


def test_development_and_test_must_not_overlap():
    selection.check_disjoint(["py:urllib"], ["py:email"])
    with pytest.raises(RopelabError, match="overlap: py:email"):
        selection.check_disjoint(["py:urllib", "py:email"], ["py:email"])


def test_the_study_reads_disjoint_project_lists():
    from ropelab.eval import projects

    config = ShortConfig()
    dev = [p.name for lang in config.languages for p in projects.projects("dev", lang)[: config.dev_documents]]
    test = [p.name for lang in config.languages for p in projects.projects("test", lang)[: config.documents]]
    assert len(dev) == 10 and len(test) == 28
    selection.check_disjoint(dev, test)


def test_every_corpus_stdlib_project_is_held_out_of_training(monkeypatch):
    from ropelab.data.corpus import stdlib_root
    from ropelab.eval import projects

    held = {str(p.resolve()) for p in data.python_holdout()}
    for project in projects.projects(language="python"):
        if project.source.startswith("stdlib:"):
            _, names = projects.load(project)
            assert all(str((stdlib_root() / n).resolve()) in held for n in names), project.name
    doc = {"name": "py:email", "files": projects.load(projects.get("py:email"))[1]}
    data.check_held_out([doc], ["stdlib"])
    monkeypatch.setattr(data, "python_holdout", lambda: [])
    with pytest.raises(RopelabError, match=r"py:email: .* is in the training data"):
        data.check_held_out([doc], ["stdlib"])


def test_java_training_tree_leaves_out_every_corpus_package(tmp_path, monkeypatch):
    from ropelab.eval import projects
    from ropelab.eval.documents import jdk_sources

    if jdk_sources() is None:
        pytest.skip("no JDK sources")
    monkeypatch.setenv("ROPELAB_HOME", str(tmp_path))
    tree = data.java_training_dir()
    for project in projects.projects(language="java"):
        where = project.source.partition(":")[2]
        assert not list((tree / where).glob("*.java")), project.name
    assert list((tree / "java.base/java/util").glob("*.java"))  # the rest of java.util is trained on
    doc = {"name": "java:java.util.zip", "files": []}
    data.check_held_out([doc], [str(tree)])
    (tree / "java.base/java/util/zip").mkdir(parents=True, exist_ok=True)
    (tree / "java.base/java/util/zip/Leak.java").write_text("class Leak {}\n")
    with pytest.raises(RopelabError, match="its package is in the training data"):
        data.check_held_out([doc], [str(tree)])


def test_ablations_change_one_choice_at_a_time():
    chosen = "hirope:split=0.25,window=32"
    found = ablations(chosen)
    base = parse_spec(chosen)[0].params
    assert {(name, value) for name, value, _ in found} == {
        ("shift", "none"), ("shift", "segments"), ("split", "0.5"), ("split", "auto"),
        ("token_index", "segment"), ("granularity", "class"), ("granularity", "chunk"),
    }  # fmt: skip
    for name, _, spec in found:
        params = parse_spec(spec)[0].params
        assert [k for k in base if params[k] != base[k]] == [name]
    methods = resolved_methods(ShortConfig(), [chosen])
    assert methods[:7] == ["rope", "rope+ntk:factor=128", "rope+yarn:factor=128", "rerope:window=64",
                           "rerope:window=64,logn=true", "self-extend:group=171,window=32", "hirope"]  # fmt: skip
    assert chosen in methods and len(methods) == len(set(methods)) == 7 + 1 + len(found)


def test_measure_runs_each_seed_method_document_once(tmp_path, monkeypatch):
    """A unit listed twice (a setting that is both the default and an ablation) is measured once,
    and a resumed call measures nothing already in the file."""
    from ropelab.experiments.hirope import run

    calls = []

    def fake(model, tokenizer, doc, spec, seed):
        calls.append((seed, spec, doc["name"]))
        return {"seed": seed, "method": spec, "document": doc["name"], "language": "python", "blocks": [1.0]}

    monkeypatch.setattr(run, "evaluate_document", fake)
    doc = {"name": "py:email"}
    units = [(0, "hirope", doc), (0, "hirope", doc), (0, "window", doc)]
    records = run.measure(tmp_path / "r.jsonl", units, {0: None}, None, False, "test")
    assert calls == [(0, "hirope", "py:email"), (0, "window", "py:email")] and len(records) == 2
    run.measure(tmp_path / "r.jsonl", units, {0: None}, None, False, "test")
    assert len(calls) == 2
