"""Bad model metadata, validated before it is trusted: HF configs, GGUF metadata, checkpoint configs, and
the memory a model would need.

Each case is one clear error (or a documented fallback) in bounded work."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ropelab.core.errors import CheckpointError, RopelabError
from tests.helpers import (
    GOOD_HF,
    one_error_line,
    run_cli,
    write_resumable_checkpoint,
    write_tiny_gguf,
)

# -- model metadata is validated before it is trusted -------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({k: v for k, v in GOOD_HF.items() if k == "model_type"}, "is missing"),
        ({"vocab_size": "32000"}, "vocab_size must be an integer"),
        ({"vocab_size": 1.5}, "vocab_size must be an integer"),
        ({"rope_scaling": "yarn"}, "rope_scaling must be a JSON object"),
        ({"num_attention_heads": 0}, "num_attention_heads=0 is out of range"),
        ({"num_hidden_layers": 1_000_000}, "num_hidden_layers=1000000 is out of range"),
        ({"hidden_size": 30}, "not a multiple of num_attention_heads"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
        ({"rms_norm_eps": "x"}, "rms_norm_eps must be a positive number"),
        ({"rope_theta": float("nan")}, "rope_theta must be a positive number"),
        ({"rope_parameters": {"rope_type": 7}}, "rope_type must be a string"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": "abc"}}, "factor"),
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ],
)
def test_a_bad_hf_config_is_one_error_before_anything_is_built(tmp_path, change, message):
    from ropelab.pretrained import load_model

    config = (
        change
        if "model_type" in change and len(change) == 1 and change != {"model_type": "gpt2"}
        else {**GOOD_HF, **change}
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(RopelabError, match=message):
        load_model(tmp_path)
    assert time.perf_counter() - start < 5


# -- 2. model metadata: GGUF, checkpoint config.json, trainer_state.json ------------------------
@pytest.mark.parametrize(
    ("drop", "meta", "message"),
    [
        (("block_count",), {}, "GGUF metadata llama.block_count is missing"),
        (("embedding_length",), {}, "GGUF metadata llama.embedding_length is missing"),
        (("attention.head_count",), {}, "GGUF metadata llama.attention.head_count is missing"),
        (("feed_forward_length",), {}, "GGUF metadata llama.feed_forward_length is missing"),
        (("context_length",), {}, "GGUF metadata llama.context_length is missing"),
        ((), {"block_count": "two"}, "llama.block_count must be an integer"),
        ((), {"attention.head_count": 0}, "n_heads must be a positive integer"),
        ((), {"attention.head_count": 3}, "divisible by n_heads"),
        ((), {"rope.freq_base": float("nan")}, "llama.rope.freq_base must be a finite number"),
        ((), {"attention.layer_norm_rms_epsilon": "x"}, "layer_norm_rms_epsilon must be a finite number"),
        ((), {"block_count": 1_000_000}, "n_layers=1000000 is out of range"),
        ((), {"context_length": [1, 2]}, "llama.context_length must be an integer"),
        ((), {"general.architecture": "gpt2"}, "architecture 'gpt2' is not supported"),
        ((), {"tokenizer.ggml.bos_token_id": 10**9}, "is not a token id"),
    ],
)
def test_bad_gguf_metadata_is_one_error_naming_the_key(tmp_path, capsys, home, drop, meta, message):
    from ropelab.pretrained.gguf import read_gguf

    path = tmp_path / "bad.gguf"
    write_tiny_gguf(path, meta=meta, drop=drop)
    start = time.perf_counter()
    with pytest.raises(RopelabError, match=message):
        read_gguf(path)
    code, err = run_cli(capsys, "generate", str(path), "--prompt", "hello")
    assert code == 2 and message.split(" must")[0].split(" is ")[0] in one_error_line(err), err
    assert time.perf_counter() - start < 10
    assert not list((home / "models").glob("*")) or all(p.name.endswith(".lock") for p in (home / "models").iterdir())


def _damage_config(directory: Path, change) -> None:
    path = directory / "config.json"
    if isinstance(change, bytes | str):
        path.write_bytes(change if isinstance(change, bytes) else change.encode())
        return
    config = json.loads(path.read_text())
    config.pop("weights_sha256", None)
    config["model"].update(change)
    if "pe" in change:
        config["pe"] = change["pe"]
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dim": "abc"}, "dim must be a positive integer, got 'abc'"),
        ({"norm_eps": "x"}, "norm_eps must be a number"),
        ({"norm_eps": float("nan")}, "norm_eps must be a number"),
        ({"n_layers": 0}, "n_layers must be a positive integer"),
        ({"vocab_size": -5}, "vocab_size must be a positive integer"),
        ({"hidden_dim": 0}, "hidden_dim must be a positive integer"),
        ({"n_layers": 1_000_000}, "n_layers=1000000 is out of range"),
        ({"train_len": 10**30}, "train_len=1000000000000000000000000000000 is out of range"),
        ({"rope_base": 10**400}, "rope_base must be a finite number"),
        ({"qkv_bias": "no"}, "qkv_bias must be true or false"),
        ({"pe": "learned:max_len=1e11"}, "max_len='1e11' is out of range"),
        ({"pe": "fire:width=1e9"}, "width='1e9' is out of range"),
        ({"pe": 7}, "pe must be"),
        ({"n_layers": 1024, "dim": 65536, "n_heads": 64}, "more than this machine's memory"),
        ('{"format": "ropelab-checkpoint", "version": 1, "model": ' + "[" * 200_000, "not valid JSON"),
        ('{"format": "ropelab-checkpoint", "version": 1, "model": {"dim": ' + "9" * 5000 + "}}", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        ('{"format": "ropelab-checkpoint", "version": 1, "model": {}, "extra": []}', "extra must be a JSON object"),
        ('{"format": "ropelab-checkpoint", "version": 1, "model": {}, "weights_sha256": 5}', "weights_sha256 must be"),
    ],
)
def test_a_bad_checkpoint_config_is_one_error_before_anything_is_allocated(
    tmp_path, capsys, loadable, monkeypatch, change, message
):
    from ropelab.model import config as config_module
    from ropelab.model import load_checkpoint

    monkeypatch.setattr(config_module, "physical_memory", lambda: 8 << 30)  # the same on every machine
    _damage_config(loadable, change)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(loadable)
    code, err = run_cli(capsys, "generate", str(loadable), "--prompt", "def")
    assert code == 2 and "config.json" in one_error_line(err), err
    assert time.perf_counter() - start < 5


def test_the_memory_estimate_names_the_limit(monkeypatch):
    from ropelab import ModelConfig
    from ropelab.model import config as config_module

    monkeypatch.setattr(config_module, "physical_memory", lambda: 1 << 30)
    with pytest.raises(RopelabError, match=r"need 1\.\d GiB in float32, more than this machine's memory \(1\.0 GiB"):
        ModelConfig(vocab_size=32000, dim=1024, n_layers=24, n_heads=16)
    small = ModelConfig.from_name("tiny")
    assert small.parameter_count() == sum(p.numel() for p in __import__("ropelab").Transformer(small).parameters())
    monkeypatch.setattr(config_module, "physical_memory", lambda: None)  # unknown: no check
    ModelConfig(vocab_size=32000, dim=1024, n_layers=24, n_heads=16)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"step": "x"}, "step must be a non-negative integer, got 'x'"),
        ({"step": -1}, "step must be a non-negative integer"),
        ({"step": 7}, "step 7 is not the step of its checkpoint step-000001"),
        ({"tokens": 1.5}, "tokens must be a non-negative integer"),
        ({"elapsed_s": float("inf")}, "elapsed_s must be a finite number"),
        ({"optimizer": []}, "optimizer must be"),
        ("[1]", "expected a JSON object"),
        ("{", "not valid JSON"),
        ("[" * 200_000, "nested too deeply"),
    ],
)
def test_a_bad_trainer_state_is_one_error(tmp_path, change, message):
    from ropelab.train import state

    directory = write_resumable_checkpoint(tmp_path / "checkpoints")
    path = directory / state.STATE
    if isinstance(change, str):
        path.write_text(change)
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(CheckpointError, match=message):
        state.read_resume_state(directory)
