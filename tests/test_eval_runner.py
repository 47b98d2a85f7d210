"""The evaluation runner and the ppl / passkey tasks, on a tiny random model with a small
byte-level BPE tokenizer trained in the test (no real model needed)."""

from __future__ import annotations

import json

import pytest
import torch

from ropelab import ModelConfig, Transformer
from ropelab.core.errors import RopelabError
from ropelab.core.lengths import parse_length
from ropelab.eval import get_task
from ropelab.eval.base import Outputs
from ropelab.eval.documents import long_code
from ropelab.eval.runner import REFERENCE, Evaluator, evaluate, read_results
from ropelab.eval.tasks.passkey import QUESTION
from ropelab.reporting.eval import compare_runs, write_report
from tests.helpers import corpus_or_skip, long_code_bpe


@pytest.fixture(scope="module")
def tokenizer():
    return long_code_bpe(200_000)


@pytest.fixture
def model(tokenizer):
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, train_len=128)
    return Transformer(config).eval()


@pytest.mark.parametrize(
    ("text", "tokens"), [("2x", 1024), ("0.5x", 256), ("1.5x", 768), ("4k", 4096), ("12K", 12288), ("300", 300)]
)
def test_parse_length(text, tokens):
    assert parse_length(text, 512) == tokens


@pytest.mark.parametrize("bad", ["", "x", "-1x", "2q", "0", "12.5"])
def test_parse_length_rejects_bad_input(bad):
    with pytest.raises(RopelabError):
        parse_length(bad, 512)


def test_ppl_samples_are_prefixes_and_reproducible(tokenizer):
    task = get_task("ppl")
    short = task.build(tokenizer, 300, 2, seed=0, train_len=128)
    long = task.build(tokenizer, 500, 2, seed=0, train_len=128)
    again = task.build(tokenizer, 500, 2, seed=0, train_len=128)
    assert [s.prompt_ids for s in long] == [s.prompt_ids for s in again]
    for a, b in zip(short, long):
        assert len(a.prompt_ids) == 300 and len(b.prompt_ids) == 500
        assert b.prompt_ids[:300] == a.prompt_ids  # what lets one pass serve every length
    assert short[0].prompt_ids != short[1].prompt_ids  # samples are different documents
    # the metric is the mean loss of the last 256 tokens (the last half, 150, below 512), by hand
    losses = [float(i) for i in range(299)]
    assert task.score(short[0], Outputs(losses=losses))["loss"] == pytest.approx(sum(losses[-150:]) / 150)
    losses = [float(i) for i in range(499)]
    assert task.score(long[0], Outputs(losses=losses))["loss"] == pytest.approx(sum(losses[-250:]) / 250)


@pytest.mark.parametrize("length", [300, 2000])
def test_ppl_inputs_equal_the_full_texts_first_tokens(tokenizer, length):

    sample = get_task("ppl").build(tokenizer, length, 1, seed=0, train_len=128)[0]
    text, _ = long_code(min_chars=length * 6, skip=0)
    assert sample.prompt_ids == tokenizer.encode(text)[:length]  # tokenizing everything, the slow reference


@pytest.mark.parametrize("n", [1, 3, 5])
def test_passkey_places_the_needle_at_its_depth(tokenizer, n):
    task = get_task("passkey")
    # 2000 tokens of this test's 300-token vocabulary are ~50 lines of code: a line start (where the
    # needle goes) is then finer than the 0.1 tolerance below
    samples = task.build(tokenizer, 2000, n, seed=3, train_len=128)
    for sample in samples:
        assert len(sample.prompt_ids) <= 2000
        key = sample.answer.strip()
        assert len(key) == 5 and key.isdigit()
        assert sample.prompt.count(f"The pass key is {key}.") == 1
        assert sample.prompt.endswith(QUESTION)
        needle_char = sample.prompt.index("# The pass key is")
        filler_chars = (
            len(sample.prompt) - len(QUESTION) - len(f"# The pass key is {key}. Remember it. {key} is the pass key.\n")
        )
        # the needle starts at a line boundary, at the requested fraction of the filler
        assert needle_char == 0 or sample.prompt[needle_char - 1] == "\n"
        assert abs(needle_char / filler_chars - sample.extra["depth"]) < 0.1
        assert sample.answer_ids == tokenizer.encode(sample.answer)
    if n > 1:
        assert [s.extra["depth"] for s in samples] == [i / (n - 1) for i in range(n)]
    else:
        assert samples[0].extra["depth"] == 0.25
    correct = Outputs(answer_argmax=list(samples[0].answer_ids))
    assert task.score(samples[0], correct)["exact_match"] == 1.0
    wrong = Outputs(answer_argmax=[*samples[0].answer_ids[:-1], -1])
    assert task.score(samples[0], wrong)["exact_match"] == 0.0


def test_teacher_forced_argmax_equals_greedy_generation(tokenizer, model):
    """Exact match under teacher forcing is exactly 'greedy decoding reproduces the answer'."""
    task = get_task("passkey")
    sample = task.build(tokenizer, 200, 1, seed=0, train_len=128)[0]
    greedy = model.generate(torch.tensor([sample.prompt_ids]), len(sample.answer_ids))[0].tolist()
    sample.answer_ids = greedy  # make the model's own greedy output the gold answer
    outputs, _ = Evaluator(model, tokenizer, "rope").outputs(task, sample)
    assert outputs.answer_argmax == greedy


def test_shared_pass_equals_separate_passes(tokenizer, model):
    task = get_task("ppl")
    samples = [task.build(tokenizer, n, 1, seed=0, train_len=128)[0] for n in (260, 300, 400)]
    shared = Evaluator(model, tokenizer, "rope")
    for sample in sorted(samples, key=lambda s: -s.length):
        outputs, info = shared.outputs(task, sample, samples)
        alone, _ = Evaluator(model, tokenizer, "rope").outputs(task, sample)
        assert info["shared_pass"] == 400
        torch.testing.assert_close(torch.tensor(outputs.losses), torch.tensor(alone.losses), atol=1e-4, rtol=1e-4)


def test_window_reference_truncates_to_the_train_length(tokenizer, model):
    task = get_task("ppl")
    sample = task.build(tokenizer, 300, 1, seed=0, train_len=128)[0]
    outputs, info = Evaluator(model, tokenizer, REFERENCE).outputs(task, sample)
    assert info["context"] == 128 and len(outputs.losses) == 127
    direct = model.token_losses(torch.tensor([sample.prompt_ids[-128:]]))[0]
    torch.testing.assert_close(torch.tensor(outputs.losses), direct, atol=1e-5, rtol=1e-5)


def test_window_reuses_the_own_method_only_where_it_truncates_nothing(tmp_path, tokenizer, model):
    train_len = model.config.train_len
    out = evaluate(model, tokenizer, "m", ["rope"], ["passkey"], ["100", "3x"], 1, tmp_path / "w", progress=False)
    records = {(r["method"], r["length"]): r for r in read_results(out / "results.jsonl")}
    within, beyond = records[(REFERENCE, 100)], records[(REFERENCE, 3 * train_len)]
    assert within["same_as"] == "rope" and within["metrics"] == records[("rope", 100)]["metrics"]
    # computing it as a window gives the same answer: the copy is exact, not an approximation
    task = get_task("passkey")
    sample = task.build(tokenizer, 100, 1, seed=0, train_len=train_len)[0]
    outputs, info = Evaluator(model, tokenizer, REFERENCE).outputs(task, sample)
    assert "context" not in info and task.score(sample, outputs) == within["metrics"]
    assert "same_as" not in beyond and beyond["context"] < 3 * train_len


def test_run_writes_everything_and_resumes(tmp_path, tokenizer, model):
    out = tmp_path / "run"
    args = dict(
        model_name="tiny-random",
        methods=["rope", "yarn:factor=2", "hirope:window=32"],
        tasks=["ppl", "passkey"],
        lengths=["2.5x", "3x"],
        samples=2,
        out=out,
        progress=False,
    )
    evaluate(model, tokenizer, **args)
    write_report(out)
    records = read_results(out / "results.jsonl")
    # 4 methods (with window) x 2 tasks x 2 lengths x 2 samples
    assert len(records) == 32
    assert {r["method"] for r in records} == {"rope", "rope+yarn:factor=2", "hirope:window=32", REFERENCE}
    for name in (
        "config.json",
        "summary.json",
        "report.md",
        "ppl_loss.png",
        "passkey_exact_match.png",
        "passkey_heatmap.png",
    ):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| `rope` |" in report and "*window* (reference)" in report and "against the `window` reference" in report
    assert "±" in report or "n=" in report  # every cell carries its uncertainty
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["ppl"]["cells"]["rope"]["320"]["n"] == 2

    # interrupt: drop the last 5 records and cut a line in half, then resume
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-5]) + "\n" + lines[-5][:20])
    evaluate(model, tokenizer, **args)
    resumed = read_results(out / "results.jsonl")
    assert len(resumed) == 32
    key = lambda r: (r["task"], r["method"], r["length"], r["index"])  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, records))
    before = {key(r): r["metrics"] for r in records}
    assert all(before[key(r)] == pytest.approx(r["metrics"], rel=1e-4) for r in resumed)

    with pytest.raises(RopelabError, match=r"holds a run with other settings \(samples differ\)"):
        evaluate(model, tokenizer, **{**args, "samples": 3})
    assert "| `rope` |" in compare_runs(out, out)
    assert write_report(out).is_file()


def test_bad_run_arguments(tmp_path, tokenizer, model):
    with pytest.raises(RopelabError, match="unknown task 'nope'"):
        evaluate(model, tokenizer, "m", ["rope"], ["nope"], ["1x"], 1, tmp_path / "a", progress=False)
    with pytest.raises(RopelabError, match="unknown position method"):
        evaluate(model, tokenizer, "m", ["ropee"], ["ppl"], ["2x"], 1, tmp_path / "b", progress=False)
    with pytest.raises(RopelabError, match="too short"):
        evaluate(model, tokenizer, "m", ["rope"], ["ppl"], ["10"], 1, tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "config.json").exists()  # nothing written for a rejected run


def test_every_task_runs_through_the_runner(tmp_path, tokenizer, model):
    from ropelab.eval import TASKS

    corpus_or_skip()  # the context tasks read the project corpus

    out = evaluate(
        model,
        tokenizer,
        "tiny-random",
        ["rope"],
        list(TASKS),
        ["6x"],
        1,
        tmp_path / "all",
        progress=False,
        include_window=False,
        task_lengths={"context": ["1500"], "context-dev": ["1500"]},  # needles of this tiny tokenizer need room
    )
    records = read_results(out / "results.jsonl")
    assert sorted(r["task"] for r in records) == sorted(TASKS)
    for record in records:
        task = get_task(record["task"])
        assert task.metric in record["metrics"]
        if task.mode == "generate":
            assert "generated" in record
    report = write_report(out).read_text()
    assert all(f"## {name}:" in report for name, task in TASKS.items() if task.report_kind != "context")
    assert "## Long-context use at 1500 tokens" in report
    assert "## Long-context use at 1500 tokens (11.7x the train length), development projects" in report


def test_passkey_haystack_is_the_ppl_document_tokenized_naturally(tokenizer):
    from ropelab.eval.tasks.ppl import code_document

    for sample in get_task("passkey").build(tokenizer, 400, 3, seed=2, train_len=128):
        assert len(sample.prompt_ids) + len(sample.answer_ids) == 400  # exactly the requested length
        text, _, document, _ = code_document(400, sample.index, 2)
        assert sample.extra["document"] == document
        start, end = sample.extra["needle_token"], sample.extra["needle_end"]
        count = sample.extra["haystack_tokens"]
        haystack = sample.prompt_ids[:count]
        assert sample.prompt_ids[count:] == tokenizer.encode(QUESTION)
        needle = tokenizer.decode(haystack[start:end])
        assert (
            needle
            == f"# The pass key is {sample.answer.strip()}. Remember it. {sample.answer.strip()} is the pass key.\n"
        )
        # the haystack is the document's text with the needle line inserted, tokenized as one text
        cut = len(tokenizer.decode(haystack[:start]))
        assert haystack == tokenizer.encode(text[:cut] + needle + text[cut:])[:count]
        assert end <= count  # even at depth 1 the needle lies inside the haystack


def test_ppl_on_the_haystack_skips_the_needle(tokenizer):
    passkey = get_task("passkey").build(tokenizer, 1600, 1, seed=0, train_len=128)[0]
    ppl = get_task("ppl")
    start, end = passkey.extra["needle_token"], passkey.extra["needle_end"]
    assert 300 < start < 600 - 30  # depth 0.25
    inside = ppl.from_haystack(tokenizer, passkey, 600)
    assert inside.prompt_ids == passkey.prompt_ids[:600] and inside.extra["needle"] == [start, end]
    losses = [float(t) for t in range(599)]  # entry t scores token t + 1
    kept = [t for t in range(599 - 256, 599) if not start <= t + 1 < end]
    assert len(kept) == 256 - (end - start)
    assert ppl.score(inside, Outputs(losses=losses))["loss"] == pytest.approx(sum(kept) / len(kept))
    before = ppl.from_haystack(tokenizer, passkey, 300)  # the input ends before the needle: nothing skipped
    assert "needle" not in before.extra and before.prompt_ids == passkey.prompt_ids[:300]
    # longer than the haystack: the input ends where the question starts
    assert len(ppl.from_haystack(tokenizer, passkey, 1600).prompt_ids) == passkey.extra["haystack_tokens"]


@pytest.mark.parametrize("method", ["rope", "self-extend:window=32,group=4", "hirope:window=32"])
def test_ppl_on_the_haystack_takes_one_pass_and_equals_separate_passes(tmp_path, tokenizer, model, method):
    calls = []
    forward = model.hidden_states

    def counted(ids, *args, **kwargs):
        calls.append(ids.shape[1])
        return forward(ids, *args, **kwargs)

    model.hidden_states = counted
    out = evaluate(
        model,
        tokenizer,
        "m",
        [method],
        ["ppl", "passkey"],
        ["2.5x", "3x", "4x"],
        1,
        tmp_path / "h",
        include_window=False,
        progress=False,
        task_lengths={"passkey": ["4x"]},
        ppl_document="haystack",
    )
    assert calls == [4 * 128]  # one pass served the passkey sample and ppl at every length
    model.hidden_states = forward
    passkey = get_task("passkey").build(tokenizer, 512, 1, seed=0, train_len=128)[0]
    records = {(r["task"], r["length"]): r for r in read_results(out / "results.jsonl")}
    for length in (320, 384, 512):
        sample = get_task("ppl").from_haystack(tokenizer, passkey, length)
        alone, _ = Evaluator(model.with_method(method), tokenizer, method).outputs(get_task("ppl"), sample)
        expected = get_task("ppl").score(sample, alone)["loss"]
        assert records[("ppl", length)]["metrics"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert records[("ppl", 512)]["input_tokens"] == passkey.extra["haystack_tokens"]
    assert "haystack" in write_report(out).read_text()


def test_ppl_on_the_haystack_needs_the_passkey_task(tmp_path, tokenizer, model):
    common = dict(samples=1, progress=False, include_window=False)
    with pytest.raises(RopelabError, match="needs the passkey task"):
        evaluate(
            model, tokenizer, "m", ["rope"], ["ppl"], ["1x"], out=tmp_path / "a", ppl_document="haystack", **common
        )
    with pytest.raises(RopelabError, match="exceeds the longest passkey length"):
        evaluate(
            model,
            tokenizer,
            "m",
            ["rope"],
            ["ppl", "passkey"],
            ["2x"],
            out=tmp_path / "b",
            task_lengths={"passkey": ["1x"]},
            ppl_document="haystack",
            **common,
        )
    with pytest.raises(RopelabError, match="not one of"):
        evaluate(model, tokenizer, "m", ["rope"], ["ppl"], ["1x"], out=tmp_path / "c", ppl_document="book", **common)


@pytest.mark.parametrize(
    ("tasks", "flag", "document"),
    [("ppl,passkey", [], "haystack"), ("ppl", [], "code"), ("ppl,passkey", ["--ppl-document", "code"], "code")],
)
def test_compare_scores_ppl_on_the_haystack_when_passkey_runs(tmp_path, tokenizer, model, tasks, flag, document):
    from ropelab import save_checkpoint
    from ropelab.cli import main

    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model, tokenizer="tokenizer.json")
    tokenizer.save(folder)
    out = tmp_path / "run"
    argv = ["compare", "--model", str(folder), "--methods", "rope", "--tasks", tasks, "--lengths", "2.5x,3x"]
    assert main([*argv, "--out", str(out), *flag]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["ppl_document"] == document
    if "passkey" in tasks:
        assert config["task_lengths"]["passkey"] == [3 * 128]  # compare's default: passkey at the longest length


def test_grid_heatmap_bins_many_depths():
    """200 passkey samples have 200 depths: the heatmap pools them into a few bins, each cell
    holding its samples (a row per sample was unreadable)."""
    from ropelab.reporting.eval import GRID_BINS, _grid_bins

    depths = [i / 199 for i in range(200)]
    rows, row_of = _grid_bins(depths)
    assert len(rows) == GRID_BINS and rows[0] == pytest.approx(0.1) and rows[-1] == pytest.approx(0.9)
    counts = {row: sum(row_of(d) == row for d in depths) for row in rows}
    assert sum(counts.values()) == 200 and all(c == 40 for c in counts.values())
    assert row_of(1.0) == rows[-1] and row_of(0.0) == rows[0]
    few = [0.0, 0.5, 1.0]
    assert _grid_bins(few)[0] == few and _grid_bins(few)[1](0.5) == 0.5


def test_a_cell_that_cannot_run_is_skipped_and_named(tmp_path, tokenizer, model, capsys):
    """A cell shorter than its task's minimum (copy needs 64 tokens) is skipped with one log line and
    named in the report; the rest of the run goes on. Nothing runnable is one error."""
    from ropelab.reporting.eval import write_report

    L = model.config.train_len
    common = dict(samples=1, progress=False, include_window=False)
    run = evaluate(model, tokenizer, "m", ["rope"], ["ppl", "copy"], ["32", "1x"], out=tmp_path / "a", **common)
    config = json.loads((run / "config.json").read_text())
    assert list(config["skipped"]) == ["copy"] and "32" in config["skipped"]["copy"]
    assert config["task_lengths"] == {"ppl": [32, L], "copy": [L]}
    assert "skipped: copy: length 32 is too short" in capsys.readouterr().err
    assert "Not run (the cell cannot be built at this length): copy at 32" in write_report(run).read_text()
    with pytest.raises(RopelabError, match="no task can run at the lengths given: copy: length"):
        evaluate(model, tokenizer, "m", ["rope"], ["copy"], ["32"], out=tmp_path / "b", **common)


def test_ppl_runs_at_a_small_models_lengths_on_the_last_half():
    """Below 512 tokens ppl scores the last half of its input (the HoPE protocol's 256 above)."""
    from ropelab.eval.tasks.ppl import scored_tail

    assert [scored_tail(n) for n in (16, 64, 128, 511, 512, 4096)] == [8, 32, 64, 255, 256, 256]


def test_report_a_b_gives_intervals_and_warns_on_other_train_lengths(tmp_path, tokenizer, model):
    """``ropelab report A B``: B - A per cell with a Welch interval over the samples and a Holm
    call; a warning when the models were trained at different lengths; a plain sentence when
    the runs share nothing."""
    import copy

    from ropelab.reporting.eval import compare_runs

    common = dict(samples=3, progress=False, include_window=False)
    a = evaluate(model, tokenizer, "m", ["rope"], ["copy"], ["1x"], out=tmp_path / "a", **common)
    b = evaluate(model, tokenizer, "m", ["rope", "yarn:factor=2"], ["copy"], ["1x"], out=tmp_path / "b", **common)
    text = compare_runs(a, b)
    assert "| method | length | A | B | B - A [95 %] | n (A / B) | Holm p | call |" in text
    assert "| `rope` | 128 |" in text and "3 / 3" in text and "Warning" not in text
    other = copy.deepcopy(model)
    other.config.train_len = 64
    c = evaluate(other, tokenizer, "m", ["alibi"], ["copy"], ["256"], out=tmp_path / "c", **common)
    assert "**Warning**: A's model was trained at 128 tokens and B's at 64" in compare_runs(a, c)
    assert "share no task, method and length" in compare_runs(a, c)


def test_a_run_parses_each_spec_once(tmp_path, tokenizer, model, monkeypatch):
    """From the method list to attention, a spec is parsed once (``pe.spec_of``): the runner, the
    method switches per unit, ``with_method``, ``compose`` and ``build`` take the parsed value."""
    from ropelab import pe

    pe._parsed.cache_clear()
    parsed = []
    original = pe.parse_spec
    monkeypatch.setattr(pe, "parse_spec", lambda text: parsed.append(text) or original(text))
    methods = ["rope", "yarn:factor=2", "hirope:window=32", "self-extend:window=32,group=4"]
    evaluate(model, tokenizer, "tiny", methods, ["ppl", "passkey"], ["2x", "3x"], 2, tmp_path / "run", progress=False)
    assert sorted(parsed) == sorted(set(parsed))  # no text parsed twice
    assert set(methods) <= set(parsed) and len(parsed) <= len(methods) + 2  # + the model's own spec (and rope)
