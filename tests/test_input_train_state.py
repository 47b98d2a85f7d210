"""Bad training run state: trainer_state.json, optimizer settings and moments, latest.json, resume from
damaged state.

Each case is one clear error (or a documented fallback) in bounded work."""

from __future__ import annotations

import json

import pytest
import torch

from ropelab.core.errors import CheckpointError
from tests.helpers import (
    one_error_line,
    run_cli,
    write_resumable_checkpoint,
)


def test_a_bad_optimizer_setting_or_moment_is_one_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from ropelab import ModelConfig, Transformer
    from ropelab.train import state

    directory = write_resumable_checkpoint(tmp_path / "checkpoints")
    trainer_state, tensors, _ = state.read_resume_state(directory)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=50))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    names = state.parameter_names(model)
    groups = trainer_state["optimizer"]["param_groups"]
    with pytest.raises(CheckpointError, match="optimizer setting 'lr' must be like"):
        state.load_optimizer(optimizer, names, tensors, [{**groups[0], "lr": "fast"}])
    with pytest.raises(CheckpointError, match="optimizer setting 'betas'"):
        state.load_optimizer(optimizer, names, tensors, [{**groups[0], "betas": [0.9]}])
    key = next(k for k in tensors if k.endswith(".exp_avg"))
    bad = {**tensors, key: torch.zeros(3)}
    with pytest.raises(CheckpointError, match=rf"{key} has shape \(3,\)"):
        state.load_optimizer(optimizer, names, bad, groups)
    save_file({"something": torch.zeros(2)}, str(directory / state.RNG))
    with pytest.raises(CheckpointError, match="no torch_cpu generator state"):
        state.read_resume_state(directory)
    del load_file


# -- 7. latest.json: never followed out of the run, and a recovery that keeps the run -----------
@pytest.mark.parametrize(
    "pointer",
    [
        {"checkpoint": "../elsewhere/step-000001"},
        {"path": "{outside}/step-000001"},
        "..",
        {"checkpoint": "."},
        {"dir": "/"},
        {"checkpoint": "step-000009"},  # a symbolic link to a checkpoint elsewhere (made below)
    ],
)
def test_latest_json_naming_a_place_outside_the_run_is_not_followed(tmp_path, pointer):
    from ropelab.model.checkpoint import LATEST, find_latest_checkpoint
    from ropelab.train.state import latest_checkpoint

    run = tmp_path / "run" / "checkpoints"
    write_resumable_checkpoint(run)
    outside = write_resumable_checkpoint(tmp_path / "elsewhere")
    (run / "step-000009").symlink_to(outside, target_is_directory=True)
    text = json.dumps(pointer).replace("{outside}", str(tmp_path / "elsewhere"))
    (run / LATEST).write_text(text)
    for strict in (True, False):
        with pytest.raises(CheckpointError, match="outside the run's checkpoint folder") as caught:
            find_latest_checkpoint(run, strict=strict)
        assert "not followed" in str(caught.value)
    with pytest.raises(CheckpointError, match="outside"):
        latest_checkpoint(run)


def test_a_corrupt_latest_json_names_the_checkpoint_to_resume_from(tmp_path):
    from ropelab.model.checkpoint import LATEST, find_latest_checkpoint
    from ropelab.train.state import latest_checkpoint

    run = tmp_path / "checkpoints"
    first = write_resumable_checkpoint(run)
    (run / LATEST).write_text("{broken")
    with pytest.raises(CheckpointError) as caught:
        latest_checkpoint(run)
    message = str(caught.value)
    assert "delete" not in message.lower()
    assert f'write {{"checkpoint": "{first.name}", "step": 1}} into {run / LATEST}' in message
    assert find_latest_checkpoint(run, strict=False) == first  # reading a run: the newest, as documented
    (run / LATEST).write_text(json.dumps({"checkpoint": "step-000005"}))
    with pytest.raises(CheckpointError, match="missing or incomplete; the newest complete checkpoint is"):
        latest_checkpoint(run)
    (run / LATEST).write_text(json.dumps({"checkpoint": "step-" + "9" * 5000}))
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        latest_checkpoint(run)
    (run / LATEST).write_text(json.dumps("step-000001"))  # a plain name, as older runs wrote it
    assert latest_checkpoint(run) == first


def test_train_cli_resume_from_damaged_state_is_one_error_line(tmp_path, capsys, home):
    """Through ``ropelab train``: a damaged trainer_state.json, a latest.json leading out of the run."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def f(x):\n    return x + 1\n" * 400)
    out = tmp_path / "t"

    def argv(steps: str) -> list[str]:
        return ["train", "--methods", "rope", "--train-len", "32", "--steps", steps, "--batch-size", "2", "--data",
                str(corpus), "--tokenizer", "bpe-300", "--out", str(out), "--no-progress"]  # fmt: skip

    code, err = run_cli(capsys, *argv("2"))
    assert code == 0, err
    checkpoints = out / "checkpoints"
    latest = json.loads((checkpoints / "latest.json").read_text())["checkpoint"]
    state_file = checkpoints / latest / "trainer_state.json"
    good = state_file.read_text()
    state_file.write_text(json.dumps({**json.loads(good), "step": "x"}))
    code, err = run_cli(capsys, *argv("2"))
    assert code == 2 and "step must be a non-negative integer" in one_error_line(err)
    state_file.write_text(good)
    (checkpoints / "latest.json").write_text(json.dumps({"checkpoint": str(tmp_path / "step-000002")}))
    code, err = run_cli(capsys, *argv("2"))
    assert code == 2 and "outside the run's checkpoint folder" in one_error_line(err)
    (checkpoints / "latest.json").write_text("{")
    code, err = run_cli(capsys, *argv("2"))
    assert code == 2 and f'write {{"checkpoint": "{latest}"' in one_error_line(err) and "delete" not in err
