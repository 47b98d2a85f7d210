"""The command line: listing, describing, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from ropelab.cli import main
from tests.helpers import CANONICAL


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_methods_lists_every_canonical_name(capsys):
    code, out, _ = run(capsys, "methods", "--format", "json")
    assert code == 0
    data = json.loads(out)["methods"]
    assert {m["name"] for m in data} >= set(CANONICAL)
    yarn = next(m for m in data if m["name"] == "yarn")
    assert yarn["family"] == "scaling" and "2309.00071" in yarn["paper"]
    assert {p["name"] for p in yarn["parameters"]} >= {
        "factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "attention_factor",
    }
    code, text, _ = run(capsys, "methods")
    assert code == 0 and all(name in text for name in CANONICAL)


def test_describe_hope_reports_16_of_32(capsys):
    code, out, _ = run(capsys, "describe", "hope", "--head-dim", "64", "--train-len", "512", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["rotated_frequencies"] == 16 and len(data["frequencies"]) == 32
    assert data["attention_factor"] == 1.0
    first, last = data["frequencies"][0], data["frequencies"][-1]
    assert first == {"index": 0, "theta": 1.0, "period": pytest.approx(2 * math.pi), "role": "rotated"}
    assert last["theta"] == 0 and last["period"] is None and last["role"] == "position-independent"
    # the last kept frequency has a period within the train length, the first dropped one beyond
    assert data["frequencies"][15]["period"] <= 512 < 2 * math.pi / (10000 ** (-2 * 16 / 64))


def test_describe_yarn_attention_factor_and_text(capsys):
    code, out, _ = run(
        capsys, "describe", "yarn:factor=4", "--head-dim", "64", "--train-len", "512", "--format", "json"
    )
    assert json.loads(out)["attention_factor"] == pytest.approx(0.1 * math.log(4) + 1)
    code, out, _ = run(capsys, "describe", "hope", "--head-dim", "128", "--train-len", "8192", "--base", "500000")
    assert code == 0 and "rotated frequencies: 35 of 64" in out


def test_describe_dynamic_ntk_uses_length(capsys):
    _, at_l, _ = run(
        capsys, "describe", "dynamic-ntk:factor=2", "--head-dim", "64", "--train-len", "512", "--format", "json"
    )
    _, beyond, _ = run(
        capsys,
        "describe",
        "dynamic-ntk:factor=2",
        "--head-dim",
        "64",
        "--train-len",
        "512",
        "--length",
        "2048",
        "--format",
        "json",
    )
    assert json.loads(at_l)["frequencies"][-1]["theta"] > json.loads(beyond)["frequencies"][-1]["theta"]


def test_describe_non_rotary_method(capsys):
    code, out, _ = run(capsys, "describe", "alibi", "--head-dim", "64", "--train-len", "512", "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["rotated_frequencies"] == 0 and data["frequencies"] == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["describe", "rop", "--head-dim", "64", "--train-len", "512"], "unknown position method 'rop'"),
        (["describe", "yarn:factor=0", "--head-dim", "64", "--train-len", "512"], "factor must be a number >= 1"),
        (["describe", "rope", "--head-dim", "63", "--train-len", "512"], "head_dim must be a positive even number"),
    ],
)
def test_bad_input_prints_one_error_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "ropelab", "describe", "nope-typo", "--head-dim", "8", "--train-len", "8"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr


def _fake_eval(monkeypatch, tmp_path):
    """`ropelab eval`/`compare` without a model: record the methods `evaluate` is given."""
    import types

    import ropelab.cli.evaluate

    seen = {}

    def fake_load_model(name, *args, **kwargs):
        seen["model"] = name
        return types.SimpleNamespace(config=types.SimpleNamespace(train_len=256)), object()

    def fake_evaluate(*args, **kwargs):
        seen["methods"] = kwargs["methods"] if "methods" in kwargs else args[3]
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        (run / "report.md").write_text("report\n")
        return run

    monkeypatch.setattr(ropelab.cli.evaluate, "load_model", fake_load_model)
    monkeypatch.setattr(ropelab.cli.evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(ropelab.cli.evaluate, "write_report", lambda run: run / "report.md")
    return seen


@pytest.mark.parametrize("command", [["eval", "some-model"], ["compare"]])
def test_eval_methods_keep_multi_parameter_specs(monkeypatch, tmp_path, capsys, command):
    seen = _fake_eval(monkeypatch, tmp_path)
    argv = [*command, "--methods", "hirope:split=0.5,window=256,rope", "--tasks", "ppl", "--out", str(tmp_path / "o")]
    code, out, err = run(capsys, *argv)
    assert code == 0 and "report" in out, err
    assert seen["methods"] == ["hirope:split=0.5,window=256", "rope"]


def test_eval_bad_methods_list_is_one_error_line_before_the_model_loads(monkeypatch, tmp_path, capsys):
    seen = _fake_eval(monkeypatch, tmp_path)
    code, out, err = run(capsys, "eval", "some-model", "--methods", "window=256,rope", "--tasks", "ppl")
    assert code == 2 and out == "" and "model" not in seen
    assert err.count("\n") == 1 and "parameter 'window=256' comes before any method" in err


#: every command that runs a model (the options they share)
MODEL_COMMANDS = (
    ["eval", "m"],
    ["compare"],
    ["analyze", "m"],
    ["generate", "m", "--prompt", "x"],
    ["train", "--steps", "1", "--out", "o"],
)


@pytest.mark.parametrize("argv", [*MODEL_COMMANDS, ["experiment", "hope"]])
def test_every_long_command_takes_no_progress(argv):
    """A script or CI log can pass --no-progress to every command that runs a model."""
    from ropelab.cli import build_parser

    assert build_parser().parse_args([*argv, "--no-progress"]).no_progress is True


# -- one name per concept ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "model"),
    [
        (["compare"], "smollm2-135m"),
        (["compare", "my-model"], "my-model"),
        (["compare", "--model", "my-model"], "my-model"),
        (["eval", "m"], "m"),
        (["eval", "--model", "m"], "m"),
        (["analyze", "--model", "m"], "m"),
        (["generate", "m", "--prompt", "x"], "m"),
        (["export", "m", "--out", "o"], "m"),
        (["task-sample", "passkey", "--length", "1k", "--model", "m"], "m"),
        (["describe", "hope", "--model", "m"], "m"),
    ],
)
def test_the_model_is_the_first_argument_or_model_everywhere(argv, model):
    from ropelab.cli import build_parser

    assert build_parser().parse_args(argv).model == model


@pytest.mark.parametrize("command", [["eval"], ["generate", "--prompt", "x"], ["analyze"], ["export", "--out", "o"]])
def test_a_command_about_a_model_without_one_is_a_usage_error(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2 and "give a model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "m", "--methods", "rope,hope"],
        ["eval", "m", "--method", "rope,hope"],
        ["analyze", "m", "--methods", "rope,hope"],
        ["analyze", "m", "--method", "rope,hope"],
        ["generate", "m", "--prompt", "x", "--methods", "rope,hope"],
        ["export", "m", "--out", "o", "--method", "rope,hope"],
    ],
)
def test_methods_is_one_option_everywhere(argv):
    from ropelab.cli import build_parser

    assert build_parser().parse_args(argv).methods == "rope,hope"


def test_train_takes_methods_and_the_old_pe_with_a_warning(capsys):
    from ropelab.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--methods", "hope", "--steps", "1", "--out", "o"]).pe == "hope"
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["train", "--pe", "alibi", "--steps", "1", "--out", "o"]).pe == "alibi"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: --pe is renamed --methods")


@pytest.mark.parametrize("command", [["generate", "m", "--prompt", "x"], ["train", "--steps", "1", "--out", "o"]])
def test_a_one_method_command_refuses_two(capsys, command):
    code, _out, err = run(capsys, *command, "--methods", "rope,hope")
    assert code == 2 and err.count("\n") == 1 and "runs one method; --methods gave 2: rope, hope" in err


@pytest.mark.parametrize("argv", MODEL_COMMANDS)
def test_every_device_option_has_the_same_default_and_choices(argv):
    from ropelab.cli import build_parser

    assert build_parser().parse_args(argv).device == "cpu"
    assert build_parser().parse_args([*argv, "--device", "cuda:1"]).device == "cuda:1"


def test_train_device_names_are_checked_before_work(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--steps", "1", "--out", str(tmp_path / "o"), "--device", "tpu")
    assert code == 2 and "device must be one of cpu, cuda, cuda:N, mps, auto" in err
    assert not (tmp_path / "o").exists()


def test_describe_reads_a_models_shape(tmp_path, capsys):
    from tests.helpers import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "ckpt", pe="hope")
    code, out, err = run(capsys, "describe", "--model", str(checkpoint))
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("hope: head_dim ") and "train length" in first
    code, out, _ = run(capsys, "describe", "rope", "--model", str(checkpoint), "--train-len", "64")
    assert code == 0 and out.startswith("rope: head_dim ") and "train length 64" in out


def test_each_experiment_has_its_own_options_with_its_configs_defaults(capsys):
    from ropelab.cli import build_parser
    from ropelab.experiments.hirope.config import ShortConfig
    from ropelab.experiments.hope.config import ExperimentConfig

    parser = build_parser()
    hirope = parser.parse_args(["experiment", "hirope"])
    short = ShortConfig()
    assert (hirope.steps, hirope.length, hirope.documents, hirope.dev_documents) == (
        short.steps, short.length, short.documents, short.dev_documents,
    )  # fmt: skip
    hope = parser.parse_args(["experiment", "hope"])
    recipe = ExperimentConfig()
    assert (hope.lr, hope.batch_size, hope.train_len) == (recipe.lr, recipe.batch_size, recipe.train_len)
    with pytest.raises(SystemExit):  # an option of the other experiment is refused
        parser.parse_args(["experiment", "hirope", "--budget-minutes", "3"])
    assert "unrecognized arguments: --budget-minutes" in capsys.readouterr().err
    old = parser.parse_args(["experiment", "hirope", "--documents", "3"])
    assert old.documents == 3 and "--documents is renamed --test-projects" in capsys.readouterr().err
    assert parser.parse_args(["experiment", "hope", "--window"]).window is True
