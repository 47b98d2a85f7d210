"""RULER through lm-eval's ``ruler`` tasks and the ``ropelab`` lm-eval model, offline
(``ropelab.integrations.lm_eval_ruler``), and the statistics of ``python -m bench ruler``."""

from __future__ import annotations

import glob
import itertools
import json
import math
import socket
import sys
from pathlib import Path

import pytest

from ropelab.core.errors import RopelabError
from tests.helpers import assert_tables_well_formed, tiny_checkpoint

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from ropelab.integrations import lm_eval_ruler as ruler  # noqa: E402  (after the skip: imports nothing of lm-eval)

LENGTH = 512  # "8x" of the tiny checkpoint's train length (64): RULER's needle task fits there


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ruler") / "tiny")


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection (or resolve a host) is recorded and refused."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the network is off in this test")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection")):
        monkeypatch.setattr(owner, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    return attempts


def test_lengths_as_ropelab_writes_them(tiny):
    assert ruler.lengths("1x,2x", 8192) == [8192, 16384]
    assert ruler.lengths(["8k", 16384, "2x"], 8192) == [8192, 16384]
    assert ruler.lengths("8x", pretrained=tiny) == [LENGTH]  # the train length read from the checkpoint
    assert ruler.train_length(tiny) == 64
    for bad in ("", "often", [], {"a": 1}, [1.5]):
        with pytest.raises(RopelabError, match=r"max_seq_lengths|length"):
            ruler.lengths(bad, 8192)


def test_ruler_tasks_groups_and_the_offline_split():
    assert ruler.ruler_tasks(["niah_single_1,hellaswag", "ruler_vt"]) == ["niah_single_1", "ruler_vt"]
    assert ruler.ruler_tasks(["ruler"]) == list(ruler.TASKS) and len(ruler.TASKS) == 13
    assert not set(ruler.OFFLINE) & set(ruler.NEEDS_DOWNLOAD)
    task_dir = Path(lm_eval.__file__).parent / "tasks" / "ruler"
    names = {line.split(":", 1)[1].strip() for f in task_dir.glob("*.yaml") for line in f.read_text().splitlines()
             if line.startswith("task:")}  # fmt: skip
    assert names - {""} == set(ruler.TASKS)  # ruler.yaml: the group's list


def test_prepare_hands_the_tasks_the_models_tokenizer_and_room_for_the_answer(tiny, monkeypatch, no_network):
    monkeypatch.setattr(ruler, "import_needle_generator", lambda: None)  # seconds; the end-to-end test runs it
    monkeypatch.setattr(ruler, "check_packages", lambda: None)  # checked below
    model_args, metadata = ruler.prepare(["niah_single_1"], {"pretrained": str(tiny)}, {"max_seq_lengths": "8x"})
    assert metadata["max_seq_lengths"] == [LENGTH] and model_args["max_length"] == LENGTH + ruler.ANSWER_ROOM
    import transformers

    from ropelab.integrations import hf

    sizing = transformers.AutoTokenizer.from_pretrained(metadata["tokenizer"])  # what lm-eval's RULER loads
    _, model_tokenizer = hf.load(tiny)
    text = "w5 w17 One of the special magic numbers for w3 is: 1234567. </s>"
    assert sizing(text).input_ids == model_tokenizer(text).input_ids
    assert ruler.prepare(["hellaswag"], {"pretrained": "x"}, {"a": 1}) == ({"pretrained": "x"}, {"a": 1})
    assert not no_network
    for model_args, metadata, message in [
        ({"pretrained": str(tiny), "max_length": 600}, {"max_seq_lengths": [LENGTH]}, "max_length=600 cannot"),
        ({"pretrained": str(tiny)}, {"max_seq_lengths": [256]}, "at least 512"),
        ({}, {}, "pretrained=NAME"),
    ]:
        with pytest.raises(RopelabError, match=message):
            ruler.prepare(["niah_single_1"], model_args, metadata)
    with pytest.raises(RopelabError, match="ruler_vt needs lengths of at least 1024"):
        ruler.prepare(["ruler_vt"], {"pretrained": str(tiny)}, {"max_seq_lengths": [LENGTH]})
    monkeypatch.undo()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wonderwords" else real(name, *a))
    with pytest.raises(RopelabError, match=r"need wonderwords: pip install 'ropelab\[ruler\]'"):
        ruler.check_packages()


@pytest.mark.parametrize(
    ("metadata", "extra", "message"),
    [
        ('{"max_seq_lengths": "often"}', [], "length 'often' is not understood"),
        ('{"max_seq_lengths": "8x,16x"}', ["--limit", "2"], "--limit takes a task's first inputs"),
    ],
)
def test_command_line_bad_input_is_one_error_line(tiny, monkeypatch, capsys, metadata, extra, message):
    from ropelab.integrations import lm_eval_cli

    monkeypatch.setattr(sys, "argv", ["ropelab-lm-eval"])
    monkeypatch.setattr(ruler, "import_needle_generator", lambda: None)
    monkeypatch.setattr(ruler, "check_packages", lambda: None)
    argv = ["--model", "ropelab", "--model_args", f"pretrained={tiny}", "--tasks", "niah_single_1"]
    with pytest.raises(SystemExit) as exit_:
        lm_eval_cli.main([*argv, "--metadata", metadata, *extra])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0]


@pytest.mark.slow
def test_niah_single_1_runs_offline_on_a_tiny_checkpoint_at_the_requested_length(
    tiny, tmp_path, monkeypatch, no_network
):
    """``ropelab-lm-eval --model ropelab ... --tasks niah_single_1 --metadata '{"max_seq_lengths":
    "8x"}'`` in this process: the inputs are sized to 512 tokens of the model's own tokenizer, the
    model reads each prompt whole, and nothing tries to reach the network."""
    pytest.importorskip("wonderwords")
    pytest.importorskip("nltk")
    from ropelab.integrations import hf, lm_eval_plugin
    from ropelab.integrations.lm_eval_plugin import RopelabLM

    seen: list[list[int]] = []
    real = RopelabLM._model_generate

    def record(self, context, *args, **kwargs):
        seen.extend(context.tolist())
        return real(self, context, *args, **kwargs)

    monkeypatch.setattr(RopelabLM, "_model_generate", record)
    monkeypatch.setattr(sys, "argv", ["ropelab-lm-eval"])
    out = tmp_path / "out"
    lm_eval_plugin.main(
        [
            "--model",
            "ropelab",
            "--model_args",
            f"pretrained={tiny},method=yarn:factor=2",
            "--tasks",
            "niah_single_1",
            "--metadata",
            '{"max_seq_lengths": "8x"}',
            "--device",
            "cpu",
            "--batch_size",
            "1",
            "--limit",
            "2",
            "--log_samples",
            "--output_path",
            str(out),
        ]
    )
    assert not no_network, f"tried to reach the network: {no_network[:3]}"
    samples = [json.loads(line) for path in glob.glob(f"{out}/**/samples_niah_single_1_*.jsonl", recursive=True)
               for line in open(path)]  # fmt: skip
    assert len(samples) == 2 and len(seen) == 2
    _, tokenizer = hf.load(tiny)
    answer = 128  # RULER's answer budget for the needle tasks, counted in the length
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        doc = sample["doc"]
        assert doc["max_length"] == LENGTH
        # RULER sized input + answer to at most 512 tokens of the model's tokenizer, within one
        # haystack step (5 sentences of 18 words) of it
        assert doc["length"] == len(tokenizer(doc["input"]).input_ids) + answer
        assert LENGTH - 5 * 18 < doc["length"] <= LENGTH
        assert doc["outputs"][0] in doc["input"]
        assert sample[str(LENGTH)] in (0.0, 1.0)
    contexts = [s["arguments"]["gen_args_0"]["arg_0"] for s in sorted(samples, key=lambda s: s["doc_id"])]
    for context, ids in zip(contexts, seen):
        assert ids == tokenizer(context, add_special_tokens=False).input_ids  # the whole prompt, uncut
        assert len(ids) + answer <= LENGTH + ruler.ANSWER_ROOM


# -- python -m bench ruler: statistics and resuming ---------------------------------------------------


def test_cell_intervals_and_paired_sign_test():
    from scipy import stats as st

    from bench import ruler as bench_ruler
    from ropelab.eval.stats import mcnemar

    binary = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
    cell = bench_ruler.cell_interval([float(x) for x in binary])
    exact = st.binomtest(7, 10).proportion_ci(method="exact")
    assert cell["interval"] == "clopper-pearson" and (cell["lo"], cell["hi"]) == (exact.low, exact.high)
    fractions = [0.2, 0.4, 0.4, 1.0, 0.6]
    cell = bench_ruler.cell_interval(fractions)
    half = st.t.ppf(0.975, 4) * st.tstd(fractions) / math.sqrt(5)
    assert cell["interval"] == "t" and cell["df"] == 4 and math.isclose(cell["hi"] - cell["mean"], half)
    other = [0, 0, 1, 0, 0, 0, 1, 0, 0, 1]
    test = bench_ruler.sign_test([float(x) for x in binary], [float(x) for x in other])
    assert (test["wins"], test["losses"], test["ties"]) == (4, 0, 6)
    assert math.isclose(test["p"], mcnemar(binary, other)[0])  # for 0/1 scores: the exact McNemar test


def test_bench_ruler_resumes_from_cell_files_and_renders(tmp_path, monkeypatch, tiny, capsys):
    """Cells already on disk are not run again; the summary pairs the methods by sample, Holm-adjusts
    the table and renders; different samples across methods are refused."""
    from bench import ruler as bench_ruler
    from bench.__main__ import main

    def refuse(*args):
        raise AssertionError("a cell was run although its file is there")

    monkeypatch.setattr(bench_ruler, "isolated", refuse)
    monkeypatch.setattr(ruler, "check_packages", lambda: None)  # no cell runs here
    scores = {"rope": [1, 1, 0, 1], "yarn:factor=2": [1, 0, 0, 0]}
    for method, values in scores.items():
        for task, (label, length) in itertools.product(("niah_single_1", "ruler_cwe"), (("8x", 512), ("16x", 1024))):
            records = [{"doc_id": i, "doc_hash": f"h{i}", "score": float(v)} for i, v in enumerate(values)]
            cell = {"task": task, "label": label, "length": length, "method": method, "model": str(tiny)}
            path = bench_ruler.cell_path(tmp_path / "work", task, label, method)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cell | {"seconds": 1.0, "records": records}))
    out = tmp_path / "ruler.json"
    common = ["ruler", "--model", str(tiny), "--methods", "rope,yarn:factor=2", "--samples", "4"]
    argv = [*common, "--work", str(tmp_path / "work"), "--out", str(out), "--tasks"]
    assert main([*argv, "niah_single_1,niah_single_2", "--lengths", "8x"]) == 0
    assert "skipped niah_single_2: needs a download" in capsys.readouterr().out
    data = json.loads(out.read_text())
    rope = next(c for c in data["cells"] if c["method"] == "rope")
    assert (rope["n"], rope["mean"], rope["interval"]) == (4, 0.75, "clopper-pearson")
    assert [(c["wins"], c["losses"], c["ties"]) for c in data["comparisons"]] == [(0, 2, 2)]
    assert main([*argv, "niah_single_1,ruler_cwe", "--lengths", "8x,16x"]) == 0
    data = json.loads(out.read_text())
    adjusted = sorted(c["p_holm"] for c in data["comparisons"])
    assert len(adjusted) == 4 and adjusted[0] == min(1.0, 4 * min(c["p"] for c in data["comparisons"]))
    text = "\n".join(bench_ruler.section(data, lambda d: "TestCPU"))
    assert "TestCPU" in text and "| `rope` | 75 [19, 99] |" in text and assert_tables_well_formed(text) == 3
    assert "Not measured yet" in "\n".join(bench_ruler.section(None, lambda d: ""))
    path = bench_ruler.cell_path(tmp_path / "work", "niah_single_1", "8x", "rope")
    cell = json.loads(path.read_text())
    cell["records"][0]["doc_hash"] = "other"
    path.write_text(json.dumps(cell))
    with pytest.raises(SystemExit, match="different samples"):
        main([*argv, "niah_single_1", "--lengths", "8x"])
