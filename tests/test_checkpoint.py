"""Checkpoints: bit-exact round trip, atomic writes, clear errors for damaged files."""

from __future__ import annotations

import json

import pytest
import torch

from ropelab import ModelConfig, Transformer, load_checkpoint, save_checkpoint
from ropelab.core.errors import CheckpointError
from ropelab.model.checkpoint import CONFIG, WEIGHTS, read_checkpoint_config


@pytest.mark.parametrize("spec", ["hope", "fire", "kerple-log", "learned", "hirope:window=8", "self-extend:window=8"])
@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_is_bit_exact(tmp_path, spec, tie):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", pe=spec, vocab_size=50, tie_embeddings=tie, qkv_bias=True))
    save_checkpoint(tmp_path / "ckpt", model, tokenizer="bpe-8k", extra={"step": 7})
    loaded = load_checkpoint(tmp_path / "ckpt")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert loaded.config == model.config and loaded.pe.spec == model.pe.spec
    assert (loaded.lm_head.weight is loaded.embed_tokens.weight) == tie
    config = read_checkpoint_config(tmp_path / "ckpt")
    assert config["tokenizer"] == "bpe-8k" and config["train_len"] == 256 and config["extra"] == {"step": 7}
    ids = torch.randint(0, 50, (1, 20))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), loaded.eval()(ids))


def test_no_temporary_files_left_and_overwrite_is_atomic(tmp_path):
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=50))
    save_checkpoint(tmp_path, model)
    save_checkpoint(tmp_path, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG, WEIGHTS]


def test_method_override_on_load(tmp_path):
    save_checkpoint(tmp_path, Transformer(ModelConfig.from_name("tiny", vocab_size=50, pe="hope")))
    assert load_checkpoint(tmp_path, method="hope+yarn:factor=2").pe.spec == "hope+yarn:factor=2"


@pytest.fixture
def saved(tmp_path):
    save_checkpoint(tmp_path, Transformer(ModelConfig.from_name("tiny", vocab_size=50)))
    return tmp_path


def test_truncated_weights_give_a_clear_error(saved):
    data = (saved / WEIGHTS).read_bytes()
    (saved / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(saved)


def test_truncated_weights_without_checksum_still_give_a_clear_error(saved):
    config = json.loads((saved / CONFIG).read_text())
    config.pop("weights_sha256")
    (saved / CONFIG).write_text(json.dumps(config))
    data = (saved / WEIGHTS).read_bytes()
    (saved / WEIGHTS).write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(saved)


def test_mismatched_config_names_the_tensors(saved):
    config = json.loads((saved / CONFIG).read_text())
    config.pop("weights_sha256")
    config["model"]["dim"] = 128
    config["model"]["hidden_dim"] = None
    config["model"]["head_dim"] = None
    (saved / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatch: embed_tokens\.weight"):
        load_checkpoint(saved)
    config["model"]["n_layers"] = 3
    config["model"]["dim"] = 64
    (saved / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing tensors: layers\.2\."):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / CONFIG).write_text("{not json"), "not valid JSON"),
        (lambda d: (d / CONFIG).unlink(), "not a ropelab checkpoint directory"),
        (lambda d: (d / WEIGHTS).unlink(), "model.safetensors: missing; a checkpoint stores its weights there"),
        (lambda d: ((d / WEIGHTS).unlink(), (d / WEIGHTS).mkdir()), "model.safetensors: not a regular file"),
        (lambda d: (d / CONFIG).write_text('{"format": "other"}'), "not a ropelab checkpoint config"),
    ],
)
def test_damaged_checkpoints(saved, damage, message):
    damage(saved)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_loading_never_unpickles(saved, tmp_path, monkeypatch):
    """Loading never runs pickle: with every unpickling entry point made to fail, a checkpoint and a
    training run's resume state load, and a pickle put where the weights belong is refused as damaged
    (it is never unpickled). The weights file is safetensors: a JSON header, then raw tensors."""
    import pickle

    from ropelab.train import state

    bomb = tmp_path / "bomb.pt"
    torch.save({"weights": torch.zeros(2)}, bomb)  # what an unpickling loader would happily read

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    load_checkpoint(saved)
    from tests.helpers import write_resumable_checkpoint

    directory = write_resumable_checkpoint(tmp_path / "run" / "checkpoints")
    state.read_resume_state(directory)
    (saved / WEIGHTS).write_bytes(bomb.read_bytes())
    with pytest.raises(CheckpointError):
        load_checkpoint(saved)
    raw = (directory / WEIGHTS).read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"}


def test_the_same_weights_give_the_same_bytes_in_every_process(tmp_path):
    """Identical training runs must be recognisable by their weights' sha256: safetensors orders a
    metadata map by a per-process random hash, so a checkpoint writes a single metadata key."""
    import subprocess
    import sys

    script = (
        "import sys, torch; from ropelab import ModelConfig, Transformer, save_checkpoint; "
        "torch.manual_seed(0); "
        "save_checkpoint(sys.argv[1], Transformer(ModelConfig.from_name('tiny', vocab_size=61)))"
    )
    # with the old two keys one process in three wrote the other order: ten agreed by chance 3 % of the time
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / str(i))]) for i in range(10)]
    assert all(run.wait(timeout=300) == 0 for run in runs)
    digests = {json.loads((tmp_path / str(i) / CONFIG).read_text())["weights_sha256"] for i in range(10)}
    assert len(digests) == 1
