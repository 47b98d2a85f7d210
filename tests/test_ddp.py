"""Distributed data parallel: 2 CPU processes (gloo) under torchrun end with the weights of one
process training on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from ropelab.train import TrainConfig, read_log, train

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

TEXT = "".join(
    f"class Node{k}:\n    def visit(self, tree):\n        return tree.walk({k}) + {k % 5}\n\n" for k in range(300)
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("ROPELAB_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"f{i}.py").write_text(TEXT[i * 1500 :] + TEXT[: i * 1500])
    # kerple-log: learned position parameters must be reduced too; 4 sequences a step, 2 micro-batches each
    settings = dict(
        pe="kerple-log",
        model_config="tiny",
        train_len=32,
        data=[str(corpus)],
        tokenizer="bpe-300",
        steps=3,
        batch_size=4,
        micro_batch_size=1,
        log_every=1,
        val_sequences=4,
        seed=1,
    )
    single = train(TrainConfig(**settings), tmp_path / "single", progress=False)
    assert single.complete

    args = ["--pe", "kerple-log", "--model-config", "tiny", "--train-len", "32", "--data", str(corpus), "--tokenizer"]
    args += ["bpe-300", "--steps", "3", "--batch-size", "4", "--micro-batch-size", "1", "--log-every", "1"]
    args += ["--val-sequences", "4", "--seed", "1", "--out", str(tmp_path / "ddp"), "--no-progress", "--threads", "1"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "ropelab", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    config = (tmp_path / "ddp" / "train_config.json").read_text()
    assert '"world_size": 2' in config and '"grad_accumulation": 2' in config
    a = load_file(str(tmp_path / "single/checkpoints/step-000003/model.safetensors"))
    b = load_file(str(tmp_path / "ddp/checkpoints/step-000003/model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("pe.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    first = load_file(str(tmp_path / "single/checkpoints/step-000001/model.safetensors"))
    assert not torch.equal(first["embed_tokens.weight"], a["embed_tokens.weight"])  # the weights did move
    single_log, ddp_log = read_log(tmp_path / "single"), read_log(tmp_path / "ddp")
    assert [r["step"] for r in ddp_log] == [1, 2, 3]
    for x, y in zip(single_log, ddp_log):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
