"""Written files get the permissions ``open(path, "w")`` would give (0o666 & ~umask), directories
``mkdir``'s (0o777 & ~umask): atomic writes must not leave ``tempfile.mkstemp``'s 0o600 behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from ropelab import ModelConfig, Transformer, save_checkpoint
from ropelab.core.io import atomic_path, atomic_write_text, current_umask
from ropelab.model.checkpoint import CONFIG, WEIGHTS
from tests.helpers import RUN_CONFIG

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_plain_modes(root: Path, mask: int) -> None:
    """Every file under ``root`` as ``open()`` makes it, every directory as ``mkdir`` makes it."""
    paths = [root, *root.rglob("*")]
    assert len(paths) > 1
    for path in paths:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert mode(path) == expected, f"{path.relative_to(root.parent)}: {oct(mode(path))} != {oct(expected)}"


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask  # still the same: reading it did not reset it


def test_atomic_writes_get_open_modes(tmp_path, umask):
    reference = tmp_path / "reference.txt"
    with open(reference, "w") as handle:
        handle.write("x")
    atomic_write_text(tmp_path / "out" / "report.md", "# report\n")
    with atomic_path(tmp_path / "out" / "data.bin") as tmp, open(tmp, "wb") as handle:
        handle.write(b"\0")
    for name in ("report.md", "data.bin"):
        assert mode(tmp_path / "out" / name) == mode(reference) == 0o666 & ~umask
    assert_plain_modes(tmp_path / "out", umask)


def test_save_checkpoint_gets_open_modes(tmp_path, umask):
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=50))
    directory = save_checkpoint(tmp_path / "ckpt", model, tokenizer="bpe-8k")
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG, WEIGHTS]
    assert_plain_modes(directory, umask)


def test_training_checkpoint_directory_gets_open_modes(tmp_path, umask):
    from ropelab.model.checkpoint import LATEST
    from ropelab.train.state import write_checkpoint

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=50))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 50, (1, 8))).sum().backward()
    optimizer.step()
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    root = tmp_path / "run" / "checkpoints"
    final = write_checkpoint(root, 1, model, optimizer, [tokenizer], {"step": 1, "tokens": 8}, {"step": 1})
    assert (root / LATEST).is_file() and (final / "tokenizer.json").is_file() and (final / WEIGHTS).is_file()
    assert_plain_modes(tmp_path / "run", umask)


def test_eval_report_gets_open_modes(tmp_path, umask):
    from ropelab.reporting.eval import write_report

    run = tmp_path / "eval-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(RUN_CONFIG))
    record = {"task": "ppl", "method": "rope", "length": 256, "metrics": {"loss": 2.0}, "seconds": 0.1}
    (run / "results.jsonl").write_text(json.dumps(record) + "\n")
    report = write_report(run)
    assert report.is_file() and (run / "summary.json").is_file()
    assert_plain_modes(run, umask)
