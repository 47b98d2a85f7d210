"""``torchrun --nproc_per_node 2 -m ropelab eval ...``: 2 CPU processes (gloo) share a run's units out
and rank 0 merges them into one ``results.jsonl`` holding exactly the records of one process (timing
aside), in its order, and writes the report once; an interrupted sharded run resumes with 1 or 2
processes, and an interrupted single-process run with 2."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
import torch.distributed as dist

from ropelab import ModelConfig, Transformer
from ropelab.cli import main
from ropelab.core.errors import RopelabError
from ropelab.eval.runner import PART, Shard
from tests.helpers import tiny_code_checkpoint, torchrun

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

TIMING = ("seconds",)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model (train length 512) with a 300-token BPE tokenizer, as a checkpoint."""
    return tiny_code_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _args(checkpoint, out) -> list[str]:
    """rope, yarn and the window reference; ppl on the passkey haystack (one pass serves both tasks, and
    the shorter ppl length is read from it); 3 samples: 9 groups of units, shared unevenly over 2
    processes. The window cuts the 600-token inputs and copies rope's record of the 300-token one."""
    argv = ["eval", str(checkpoint), "--methods", "rope,yarn:factor=2", "--tasks", "ppl,passkey"]
    argv += ["--lengths", "600", "--task-lengths", "ppl=300,600", "--ppl-document", "haystack"]
    return [*argv, "--samples", "3", "--threads", "1", "--out", str(out)]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    return torchrun("-m", "ropelab", *args, timeout=300)


def _records(run) -> list[dict]:
    lines = (run / "results.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.fixture(scope="module")
def single(checkpoint, tmp_path_factory):
    """The reference: the same run in one process."""
    out = tmp_path_factory.mktemp("runs") / "single"
    assert main(_args(checkpoint, out)) == 0
    return out


def test_two_processes_give_the_records_of_one_in_its_order(checkpoint, single, tmp_path):
    done = _torchrun(_args(checkpoint, tmp_path / "two"))
    reference, sharded = _records(single), _records(tmp_path / "two")
    assert len(reference) == 27 and {r["method"] for r in reference} == {"rope", "rope+yarn:factor=2", "window"}
    assert any(r.get("same_as") == "rope" for r in reference)  # window copies of rope's records
    assert any(r.get("shared_pass") for r in reference if r["length"] == 300)  # read from the longer pass
    assert sharded == reference  # every field but the timing, bit for bit, in the same order
    assert json.loads((tmp_path / "two/config.json").read_text()) == json.loads((single / "config.json").read_text())
    assert not list((tmp_path / "two").glob(PART.format(rank="*")))  # the part files were merged and removed
    assert (tmp_path / "two/report.md").is_file() and done.stdout.count("report: ") == 1  # written once, by rank 0


def _interrupted_sharded_run(reference, out) -> None:
    """What a 2-process run stopped midway leaves: config.json and each rank's first records (rank 1's
    last one half written), no results.jsonl."""
    out.mkdir()
    shutil.copy(reference / "config.json", out / "config.json")
    lines = (reference / "results.jsonl").read_text().splitlines(keepends=True)
    groups: dict[tuple, int] = {}
    for line in lines:
        record = json.loads(line)
        groups.setdefault((record["method"], record["index"]), len(groups))
    by_rank = {0: [], 1: []}
    for line in lines:
        record = json.loads(line)
        by_rank[groups[(record["method"], record["index"])] % 2].append(line)
    (out / PART.format(rank=0)).write_text("".join(by_rank[0][:4]))
    (out / PART.format(rank=1)).write_text("".join(by_rank[1][:2]) + by_rank[1][2][:25])


@pytest.mark.parametrize("processes", [1, 2])
def test_an_interrupted_sharded_run_resumes_with_one_or_two_processes(checkpoint, single, tmp_path, processes):
    out = tmp_path / "resumed"
    _interrupted_sharded_run(single, out)
    if processes == 1:
        assert main(_args(checkpoint, out)) == 0
    else:
        _torchrun(_args(checkpoint, out))
    assert _records(out) == _records(single)
    assert not list(out.glob(PART.format(rank="*")))


def test_an_interrupted_single_process_run_resumes_with_two_processes(checkpoint, single, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(single / "config.json", out / "config.json")
    lines = (single / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:5]) + lines[5][:30])
    _torchrun(_args(checkpoint, out))
    assert _records(out) == _records(single)


def test_a_shard_is_a_rank_of_its_world():
    assert not Shard().enabled and Shard(1, 2).enabled
    with pytest.raises(RopelabError, match=r"rank 2 is not in 0\.\.1"):
        Shard(2, 2)


def test_a_learned_encoding_keeps_its_trained_parameters(tmp_path, checkpoint):
    """The runner measures a model's own method with the model's own encoding object: a learned one
    (KERPLE here) is not re-initialised from the random state, so where the work runs cannot change it."""
    from ropelab.eval.runner import evaluate
    from ropelab.pretrained.registry import load_model

    _, tokenizer = load_model(checkpoint)
    torch.manual_seed(3)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, pe="kerple-log", train_len=512))
    trained = {k: v.clone() for k, v in model.pe.state_dict().items()}
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # the random state must not matter
        out = evaluate(model.eval(), tokenizer, "m", ["kerple-log"], ["ppl"], ["300"], 1, tmp_path / str(seed))
        runs.append(_records(out))
    assert runs[0] == runs[1]
    assert all(torch.equal(v, trained[k]) for k, v in model.pe.state_dict().items())
