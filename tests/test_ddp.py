"""Several processes: 2 CPU processes (gloo) under torchrun, with DistributedDataParallel or FSDP2
(``--parallel fsdp``), end with the weights of one process training on the same global batch, and
an FSDP run interrupted and resumed (under FSDP, or in one process) ends with those weights too."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from ropelab.train import TrainConfig, read_log, train
from tests.helpers import torchrun

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

TEXT = "".join(
    f"class Node{k}:\n    def visit(self, tree):\n        return tree.walk({k}) + {k % 5}\n\n" for k in range(300)
)


# kerple-log: learned position parameters (in the root's FSDP group, used inside every block) must be
# reduced too; tied embeddings; 4 sequences a step, 2 micro-batches per process
SETTINGS = dict(
    pe="kerple-log",
    model_config="tiny",
    train_len=32,
    tokenizer="bpe-300",
    steps=3,
    batch_size=4,
    micro_batch_size=1,
    log_every=1,
    val_sequences=4,
    seed=1,
)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("ROPELAB_HOME", str(tmp_path / "home"))
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(4):
        (root / f"f{i}.py").write_text(TEXT[i * 1500 :] + TEXT[: i * 1500])
    return root


def _cli_args(settings: dict, corpus, out) -> list[str]:
    args = ["--data", str(corpus), "--out", str(out), "--no-progress", "--threads", "1"]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _weights(run, step) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


def _assert_same_run(single, other, step: int) -> None:
    """Weights at ``step`` equal to 1e-6 (float summation order aside) and the logged losses to 1e-5."""
    a, b = _weights(single, step), _weights(other, step)
    assert a.keys() == b.keys() and any(k.startswith("pe.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    single_log, other_log = read_log(single), read_log(other)
    assert [r["step"] for r in other_log] == list(range(1, step + 1))
    for x, y in zip(single_log, other_log, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y.get("val_loss") == pytest.approx(x.get("val_loss"), rel=1e-5)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(corpus, tmp_path, parallel):
    single = train(TrainConfig(**SETTINGS, data=[str(corpus)]), tmp_path / "single", progress=False)
    assert single.complete

    torchrun("-m", "ropelab", "train", *_cli_args(SETTINGS, corpus, tmp_path / parallel), "--parallel", parallel)

    config = json.loads((tmp_path / parallel / "train_config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and config["resolved"]["grad_accumulation"] == 2
    assert config["resolved"]["parallel"] == parallel
    _assert_same_run(tmp_path / "single", tmp_path / parallel, 3)
    first = _weights(tmp_path / "single", 1)
    assert not torch.equal(first["embed_tokens.weight"], _weights(tmp_path / "single", 3)["embed_tokens.weight"])
    if parallel == "fsdp":  # the optimizer state was gathered whole too: the checkpoint is an ordinary one
        a = load_file(str(tmp_path / "single/checkpoints/step-000003/optimizer.safetensors"))
        b = load_file(str(tmp_path / "fsdp/checkpoints/step-000003/optimizer.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7)


INTERRUPTED = """
import signal, sys
from ropelab.train import TrainConfig, train

def stop(step, record):
    if step == 2:  # every process gets the signal: a checkpoint at step 2, then the run stops
        signal.raise_signal(signal.SIGINT)

result = train(TrainConfig(**{settings!r}), {out!r}, progress=False, on_step=stop)
sys.exit(0 if result.status == "interrupted" and result.step == 2 else 1)
"""


def test_an_interrupted_fsdp_run_resumes_under_fsdp_or_in_one_process(corpus, tmp_path):
    settings = {**SETTINGS, "steps": 4, "data": [str(corpus)], "parallel": "fsdp", "threads": 1}
    train(TrainConfig(**settings), tmp_path / "single", progress=False)  # in one process fsdp changes nothing
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(INTERRUPTED.format(settings=settings, out=str(tmp_path / "fsdp"))))
    torchrun(str(script))
    latest = json.loads((tmp_path / "fsdp/checkpoints/latest.json").read_text())
    assert latest["checkpoint"] == "step-000002"
    shutil.copytree(tmp_path / "fsdp", tmp_path / "one")

    cli = {k: v for k, v in settings.items() if k not in ("data", "threads")}
    torchrun("-m", "ropelab", "train", *_cli_args(cli, corpus, tmp_path / "fsdp"))  # resumed under FSDP
    _assert_same_run(tmp_path / "single", tmp_path / "fsdp", 4)
    assert train(TrainConfig(**settings), tmp_path / "one", progress=False).complete  # resumed in one process
    _assert_same_run(tmp_path / "single", tmp_path / "one", 4)


def test_fsdp_refuses_a_model_with_scalar_parameters_in_one_clear_error():
    """FSDP2 shards along dim 0: FIRE's scalar parameters cannot be sharded (every other encoding can)."""
    from ropelab import ModelConfig, Transformer
    from ropelab.core.errors import RopelabError
    from ropelab.train.distributed import unshardable_parameters
    from ropelab.train.parallel import check_shardable as _check_shardable

    for pe in ("rope", "hope", "learned", "alibi", "kerple-power"):
        assert unshardable_parameters(Transformer(ModelConfig.from_name("tiny", vocab_size=50, pe=pe))) == []
    fire = Transformer(ModelConfig.from_name("tiny", vocab_size=50, pe="fire"))
    assert "pe.functions.0.c" in unshardable_parameters(fire)
    with pytest.raises(RopelabError, match=r"does not shard scalar parameters .* use --parallel ddp"):
        _check_shardable(fire, TrainConfig(pe="fire", steps=1, parallel="fsdp"))
