"""lm-evaluation-harness bridge: a ``ropelab.integrations.hf.patch``-ed transformers model evaluated by
``lm_eval`` through ``HFLM(pretrained=model)`` on a tiny local task gives the log-likelihoods of
ropelab's own model with the same method."""

from __future__ import annotations

import json

import pytest
import torch

from ropelab.integrations import hf
from ropelab.model.transformer import Transformer
from ropelab.pretrained.hf_dir import hf_config_to_ropelab

lm_eval = pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

VOCAB = 97
CONTEXT = 60  # longer than max_position_embeddings (32): the method matters


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lm_eval.models.huggingface import HFLM
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.set_num_threads(1)
    # words w3..w96 are token ids 3..96; special tokens must not look like words (HF matches them first)
    vocab = {"<unk>": 0, "</s>": 1, "<pad>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    data = tmp_path_factory.mktemp("task") / "data.jsonl"
    docs = [
        {"text": " ".join(f"w{(i * 7 + j) % 90 + 5}" for j in range(CONTEXT)), "choices": ["w3", "w4"], "label": i % 2}
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    task = {
        "task": "ropelab_tiny_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{text}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=128, batch_size=1)
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False)  # do not index lm-eval's thousands of built-in tasks
    return model, (lm, manager), task, docs


def _loglikelihoods(lm, task) -> list[list[float]]:
    lm, manager = lm
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], log_samples=True, bootstrap_iters=0, task_manager=manager)
    samples = sorted(results["samples"][task["task"]], key=lambda s: s["doc_id"])
    return [[float(resp[0][0]) for resp in sample["resps"]] for sample in samples]


def _ropelab_loglikelihoods(hf_model, spec: str, docs) -> list[list[float]]:
    config = hf_config_to_ropelab(hf_model.config.to_dict())
    config.pe = spec
    model = Transformer(config).eval()
    model.load_state_dict({k.removeprefix("model."): v for k, v in hf_model.state_dict().items()})
    out = []
    for doc in docs:
        ids = torch.tensor([[int(word[1:]) for word in doc["text"].split()]])
        with torch.no_grad():
            logprobs = model(ids)[0, -1].log_softmax(-1)
        out.append([float(logprobs[int(choice[1:])]) for choice in doc["choices"]])
    return out


@pytest.mark.parametrize("spec", ["yarn:factor=2", "hirope:window=16,chunk=8"])
def test_patched_model_through_lm_eval_matches_ropelab(setup, spec):
    model, lm, task, docs = setup
    plain = _loglikelihoods(lm, task)
    hf.patch(model, spec)
    try:
        patched = _loglikelihoods(lm, task)
    finally:
        hf.unpatch(model)
    expected = _ropelab_loglikelihoods(model, spec, docs)
    torch.testing.assert_close(torch.tensor(patched), torch.tensor(expected), atol=1e-4, rtol=0)
    assert (torch.tensor(patched) - torch.tensor(plain)).abs().max() > 1e-3  # the method was in effect
    torch.testing.assert_close(torch.tensor(_loglikelihoods(lm, task)), torch.tensor(plain))  # unpatched again


# -- the ``ropelab`` lm-eval model (ropelab.integrations.lm_eval_plugin) -------------------------


@pytest.fixture(scope="module")
def saved(setup, tmp_path_factory):
    """The tiny model and its tokenizer as a Hugging Face directory (unpatched), and the task as a
    YAML file for lm-eval's command line."""
    model, (lm, _), task, _ = setup
    directory = tmp_path_factory.mktemp("tiny-hf")
    model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    task_file = tmp_path_factory.mktemp("tasks") / "ropelab_tiny_mc.yaml"
    task_file.write_text(json.dumps(task))  # JSON is YAML
    return directory, task_file


def _plugin_loglikelihoods(model_args, task, manager) -> list[list[float]]:
    import ropelab.integrations.lm_eval_plugin  # noqa: F401  (registers --model ropelab)

    results = lm_eval.simple_evaluate(
        model="ropelab", model_args=model_args, tasks=[task], log_samples=True, bootstrap_iters=0, task_manager=manager
    )
    samples = sorted(results["samples"][task["task"]], key=lambda s: s["doc_id"])
    return [[float(resp[0][0]) for resp in sample["resps"]] for sample in samples]


@pytest.mark.parametrize("spec", ["yarn:factor=2", "hirope:window=16,chunk=8"])
def test_ropelab_lm_eval_model_matches_ropelab(setup, saved, spec):
    """``lm_eval.simple_evaluate(model="ropelab", model_args=...)`` loads the directory through
    ``hf.load``, patches it with ``method`` and scores what ropelab's own model scores."""
    model, (_, manager), task, docs = setup
    directory, _ = saved
    if "," in spec:  # a multi-parameter spec: model_args as a dict (the string form splits on commas)
        model_args = {"pretrained": str(directory), "method": spec, "device": "cpu", "max_length": 128}
    else:  # the command line's form
        model_args = f"pretrained={directory},method={spec},device=cpu,max_length=128"
    got = _plugin_loglikelihoods(model_args, task, manager)
    expected = _ropelab_loglikelihoods(model, spec, docs)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-4, rtol=0)
    plain = _ropelab_loglikelihoods(model, "rope", docs)
    assert (torch.tensor(got) - torch.tensor(plain)).abs().max() > 1e-3  # the method was in effect


def test_ropelab_lm_eval_model_is_registered_and_refuses_bad_args(saved):
    from lm_eval.api.registry import get_model

    from ropelab.core.errors import RopelabError
    from ropelab.integrations.lm_eval_plugin import RopelabLM

    assert get_model("ropelab") is RopelabLM
    directory, _ = saved
    with pytest.raises(RopelabError, match="parallelize"):
        RopelabLM(pretrained=str(directory), parallelize=True)
    with pytest.raises(RopelabError, match="unknown model_args no_such_arg"):
        RopelabLM(pretrained=str(directory), device="cpu", no_such_arg=1)


def test_pyproject_declares_the_plugin_and_the_wrapper_command():
    """``lm_eval.models`` entry point (lm-eval versions with plugin discovery) and the
    ``ropelab-lm-eval`` command (lm-eval 0.4.x, which has none) both name real objects."""
    import importlib
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    targets = [project["entry-points"]["lm_eval.models"]["ropelab"], project["scripts"]["ropelab-lm-eval"]]
    module, _, name = targets[0].partition(":")
    from ropelab.integrations.lm_eval_cli import main
    from ropelab.integrations.lm_eval_plugin import RopelabLM

    assert getattr(importlib.import_module(module), name) is RopelabLM
    module, _, name = targets[1].partition(":")
    assert getattr(importlib.import_module(module), name) is main  # checks for lm-eval, then runs the plugin


@pytest.mark.slow
def test_lm_eval_command_line_runs_the_ropelab_model(setup, saved, tmp_path):
    """The command line, in a subprocess: ``python -m ropelab.integrations.lm_eval_plugin`` (what
    the ``ropelab-lm-eval`` script runs) with lm-eval's own arguments."""
    import subprocess
    import sys

    model, _, _, docs = setup
    directory, task_file = saved
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "ropelab.integrations.lm_eval_plugin",
        "--model",
        "ropelab",
        "--model_args",
        f"pretrained={directory},method=yarn:factor=2,max_length=128",
        "--tasks",
        str(task_file),
        "--device",
        "cpu",
        "--batch_size",
        "1",
        "--log_samples",
        "--output_path",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [json.loads(line) for path in out.rglob("samples_ropelab_tiny_mc_*.jsonl") for line in path.open()]
    got = [[float(resp[0][0]) for resp in s["resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]
    expected = _ropelab_loglikelihoods(model, "yarn:factor=2", docs)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-4, rtol=0)


def test_ropelab_lm_eval_without_lm_eval_is_one_error_line(monkeypatch, capsys):
    import importlib.util

    from ropelab.integrations import lm_eval_cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(SystemExit) as exit_:
        lm_eval_cli.main(["--help"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "pip install 'ropelab[lm-eval]'" in err[0]
