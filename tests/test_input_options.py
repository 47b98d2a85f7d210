"""Option values at the edges, on every command and through the Python API: spec round trips, threads,
seeds, sizes, devices, closed pipes.

Each case is one clear error (or a documented fallback) in bounded work."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from ropelab.core.errors import RopelabError
from ropelab.hierarchy import extract
from tests.helpers import (
    one_error_line,
    run_cli,
    tiny_corpus,
)


# -- 8. option values at the edges: spec round trips, threads, seeds, sizes, devices -------------
@pytest.mark.parametrize("spec", ["rope:base=1000000", "hope:base=1e22", "rope:base=1234567", "ntk:factor=1e300"])
def test_a_canonical_spec_reads_back_as_itself(spec):
    """``f"{1e6:g}"`` is ``1e+06``: a canonical spec with that "+" split into two methods when it
    was read again (``ropelab train --pe rope:base=1000000`` failed at its first model)."""
    from ropelab import ModelConfig, Transformer
    from ropelab.experiments.hope.config import ExperimentConfig
    from ropelab.pe import canonical_spec, parse_spec

    canonical = canonical_spec(spec)
    assert "+" not in canonical.rpartition(":")[2] and canonical_spec(canonical) == canonical
    assert parse_spec(canonical)[-1].params == parse_spec(spec)[-1].params  # the same value, not 6 digits of it
    if "ntk" not in spec:
        Transformer(ModelConfig.from_name("tiny", pe=canonical, vocab_size=50))
    for method in ExperimentConfig(scale_factor=1e6).methods("rope"):
        canonical_spec(method)


@pytest.mark.parametrize(
    ("spec", "argv", "message"),
    [
        (
            "ntk:factor=1e308",
            ("--head-dim", "64"),
            "ntk: factor=1e+308 takes the rotary base 10000 beyond a float's range",
        ),
        ("dynamic-ntk:factor=1e300", ("--head-dim", "64", "--length", "1073741824"), "dynamic-ntk: factor=1e+300 at"),
        ("rope:base=1e308+ntk:factor=1e10", ("--head-dim", "4"), "beyond a float's range"),
        ("ntk:factor=2", ("--head-dim", "2"), None),  # one frequency, the highest: NTK leaves it as it is
        ("dynamic-ntk:factor=2", ("--head-dim", "2", "--length", "1000"), None),
    ],
)
def test_ntk_rebasing_never_divides_by_zero_or_overflows(capsys, spec, argv, message):
    code, err = run_cli(capsys, "describe", spec, "--train-len", "128", *argv)
    if message is None:
        assert code == 0, err
    else:
        assert code == 2 and message in one_error_line(err), err


@pytest.mark.parametrize(
    "argv",
    [
        ("eval", "m"),
        ("compare",),
        ("analyze", "m"),
        ("train", "--steps", "1", "--out", "o"),
        ("experiment", "hope"),
        ("generate", "m", "--prompt", "x"),
    ],
)
def test_threads_are_bounded_on_every_command(capsys, argv):
    """torch starts every thread it is given at the first parallel operation (2,000 threads made
    4,000 OS threads): ``--threads 100000`` could exhaust the machine's processes."""
    with pytest.raises(SystemExit) as exit_:
        run_cli(capsys, *argv, "--threads", "100000")
    assert exit_.value.code == 2
    assert "expected at most 1024 threads, got '100000'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--seed", "-5"), "seed must be an integer from 0 to 2**63 - 1, got -5"),
        (("--seed", str(10**23)), "seed must be an integer from 0 to 2**63 - 1"),
        (("--tokenizer", "bpe-99999999999"), "a byte-level BPE vocabulary is at most 4194304 tokens"),
        (("--tokenizer", "bpe-" + "9" * 5000), "a byte-level BPE vocabulary is at most"),
        (("--methods", "learned:max_len=1"), "learned: max_len=1 is shorter than the training length 32"),
    ],
)
def test_train_refuses_bad_settings_before_writing_anything(tmp_path, capsys, home, argv, message):
    """A negative or huge seed was a traceback from numpy or torch (a negative one after the run's
    files were written); ``bpe-99999999999`` aborted the process (the BPE trainer allocated 4.5 TB);
    a learned table shorter than the training length failed at the first step."""
    out = tmp_path / "run"
    start = time.perf_counter()
    code, err = run_cli(
        capsys, "train", "--train-len", "32", "--steps", "2", "--batch-size", "2", "--tokenizer", "bpe-300",
        "--data", str(tiny_corpus(tmp_path)), "--out", str(out), "--no-progress", *argv,
    )  # fmt: skip
    assert code == 2 and message in err.splitlines()[-1] and err.splitlines()[-1].startswith("error: "), err
    assert "Traceback" not in err and not out.exists()
    assert time.perf_counter() - start < 10


def test_an_analysis_seed_out_of_range_is_one_error(tmp_path, capsys):
    code, err = run_cli(capsys, "analyze", str(tmp_path / "no-such-model"), "--seed", str(10**23))
    assert code == 2 and "--seed must be an integer in [-2**63, 2**64)" in one_error_line(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--lengths", "16000000", "--samples", "1"), "lengths up to 16000000 tokens"),
        (("--lengths", "1x", "--samples", "100000000"), "analysing 100000000 sample(s)"),
    ],
)
def test_an_analysis_larger_than_memory_is_refused_before_allocating(
    tmp_path, capsys, loadable, monkeypatch, argv, message
):
    """These tried to allocate 25 and 51 GB, and ended in a traceback (or the OOM killer)."""
    from ropelab.analysis import pipeline

    monkeypatch.setattr(pipeline, "physical_memory", lambda: 8 << 30)
    out = tmp_path / "analysis"
    start = time.perf_counter()
    code, err = run_cli(capsys, "analyze", str(loadable), "--analyses", "pattern", "--out", str(out), *argv)
    last = err.splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and message in last and "more than this machine's memory" in last
    assert not out.exists() and time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--tasks", "", "--lengths", "300"), "no task given"),
        (("--tasks", " , ", "--lengths", "300"), "no task given"),
        (("--tasks", "ppl", "--lengths", ""), "no length given for ppl"),
        (
            ("--tasks", "ppl", "--lengths", "300", "--samples", "1000000000"),
            "samples must be an integer from 1 to 10000",
        ),
        (("--tasks", "ppl", "--lengths", "300", "--device", "cpu:5"), "the CPU has no index 5"),
    ],
)
def test_an_empty_or_oversized_eval_is_one_error_and_writes_nothing(tmp_path, capsys, loadable, argv, message):
    """An empty --tasks or --lengths made an empty run directory and exited 0; --samples 1e9 built
    samples until killed; --device cpu:5 blamed the checkpoint ("model.safetensors ... corrupt")."""
    out = tmp_path / "run"
    code, err = run_cli(capsys, "eval", str(loadable), "--methods", "rope", "--no-reference", "--out", str(out), *argv)
    assert code == 2 and message in one_error_line(err), err
    assert not out.exists()


def test_task_sample_count_is_bounded_before_loading(tmp_path, capsys):
    code, err = run_cli(capsys, "task-sample", "passkey", "--model", str(tmp_path / "nothing"), "--length", "100",
                     "--n", "1000000000")  # fmt: skip
    assert code == 2 and "samples must be an integer from 1 to 10000" in one_error_line(err)


def test_cpu_zero_is_the_cpu():
    from ropelab.model.device import resolve_device

    assert resolve_device("cpu:0") == torch.device("cpu")
    with pytest.raises(RopelabError, match="the CPU has no index 1"):
        resolve_device("cpu:1")


def test_a_learned_table_shorter_than_the_training_length_is_refused():
    from ropelab import ModelConfig, Transformer

    with pytest.raises(RopelabError, match="learned: max_len=8 is shorter than the training length 64"):
        Transformer(ModelConfig.from_name("tiny", pe="learned:max_len=8", train_len=64))
    Transformer(ModelConfig.from_name("tiny", pe="learned:max_len=64", train_len=64))


def test_odd_values_through_the_python_api_are_one_error(tmp_path, monkeypatch, loadable, tokenizer):
    """``hf.load(dtype="int8")`` / ``device="tpu"`` were a TypeError / RuntimeError from ``.to()``,
    ``extract(language=5)`` an AttributeError, ``ROPELAB_HOME=~nobody/x`` a RuntimeError."""
    pytest.importorskip("transformers")
    from ropelab.core.io import ropelab_home
    from ropelab.integrations import hf

    with pytest.raises(RopelabError, match="unknown dtype 'int8'"):
        hf.load(loadable, dtype="int8")
    with pytest.raises(RopelabError, match="unknown device 'tpu'"):
        hf.load(loadable, device="tpu")
    with pytest.raises(RopelabError, match="language must be a string"):
        extract("def f():\n    pass\n", tokenizer, language=5)  # type: ignore[arg-type]
    monkeypatch.setenv("ROPELAB_HOME", "~no-such-user-here/x")
    with pytest.raises(RopelabError, match="ROPELAB_HOME='~no-such-user-here/x': its '~' cannot be expanded"):
        ropelab_home()


@pytest.mark.parametrize("train_len", [0, -5, 10**30, True, 2.5])
def test_hf_patch_refuses_a_train_len_out_of_range(train_len):
    pytest.importorskip("transformers")
    from ropelab.integrations import hf
    from tests.helpers import tiny_hf_model

    model = tiny_hf_model("llama", seed=0)
    with pytest.raises(RopelabError, match=r"hf\.patch: train_len must be an integer from 1 to 16777216, got "):
        hf.patch(model, "yarn:factor=2", train_len=train_len)


def test_a_closed_output_pipe_ends_quietly():
    """``ropelab describe ... | head -1``: no "error: Broken pipe" line, no traceback, exit 0."""
    command = [sys.executable, "-m", "ropelab", "describe", "rope", "--head-dim", "4096", "--train-len", "512"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"rope: head_dim 4096")
    process.stdout.close()  # the table is far longer than a pipe's buffer: the next writes fail
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and err == b""


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("yarn:factor=2,beta_slow=100,beta_fast=1", "yarn: beta_slow=100 is above beta_fast=1"),
        ("hope+yarn:factor=2,beta_fast=0.5", "yarn: beta_slow=1 is above beta_fast=0.5"),
        ("yarn:factor=2,beta_slow=32,beta_fast=32", None),  # equal: a step instead of a ramp, still defined
    ],
)
def test_a_backwards_yarn_ramp_is_refused(capsys, spec, message):
    code, err = run_cli(capsys, "describe", spec, "--head-dim", "64", "--train-len", "512")
    if message is None:
        assert code == 0, err
    else:
        assert code == 2 and message in one_error_line(err), err


def test_kv_cache_memory_check_by_hand():
    from ropelab.model.config import ModelConfig
    from ropelab.model.generate import check_cache_memory

    config = ModelConfig(vocab_size=100, dim=64, n_layers=2, n_heads=4, n_kv_heads=2)  # head_dim 16
    per_token = 3 * 2 * 2 * 16 * 4  # (k, v, far k) x layers x kv heads x head_dim x float32 = 768 bytes
    check_cache_memory(config, rows=2, tokens=1000, element_bytes=4, memory=2 * 1000 * per_token)  # fits exactly
    with pytest.raises(RopelabError, match=r"1001 tokens \(prompt \+ max_new_tokens\) need a KV cache of"):
        check_cache_memory(config, rows=2, tokens=1001, element_bytes=4, memory=2 * 1000 * per_token)


def test_generate_echo_and_prompt_files(tmp_path, capsys, loadable):
    """``--prompt`` is echoed before the continuation (``--no-echo``: only the continuation); a
    ``--prompt-file`` is never echoed, and stderr says where the continuation starts."""
    from ropelab.cli import main

    argv = ["generate", str(loadable), "--max-new-tokens", "3"]
    assert main([*argv, "--prompt", "def f(x):"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def f(x):")
    continuation = out[len("def f(x):") :]
    assert main([*argv, "--prompt", "def f(x):", "--no-echo"]) == 0
    assert capsys.readouterr().out == continuation
    prompt = tmp_path / "prompt.py"
    prompt.write_text("def f(x):")
    assert main([*argv, "--prompt-file", str(prompt)]) == 0
    captured = capsys.readouterr()
    assert captured.out == continuation and "prompt tokens; the continuation follows]" in captured.err
