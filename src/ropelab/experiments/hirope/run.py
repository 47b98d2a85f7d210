"""``ropelab experiment hirope``: the HiRoPE paper's "ShortLLM" study (Zhang et al. 2024, Section 6.2,
Appendix A) at CPU scale -- can a training-free method keep a model's in-length loss far beyond its
train length, up to about ``L^2`` (the paper's claim for HiRoPE with two levels)?

The paper shrinks pretrained models to ``L_short = 128``; on a CPU the same question is asked of a
small RoPE code model trained from scratch at ``L = 128`` on Python (the stdlib) and Java (JDK
``java.base`` sources), with the evaluation files held out of training. Every method is then
applied to that one model at inference, and the next-token loss is measured by position up to
``L^2`` = 16K tokens on held-out long code documents (Python and Java), with log-spaced buckets so
the in-length region and the first buckets beyond ``L`` are seen at fine resolution.

The model shape serves the paper's theory (Sec. 6.1): HiRoPE's token level must carry only
frequencies whose period is below ``L`` (the "reliable" ones, ``r* = log_base(L / 2 pi)``). With
head_dim 32 and RoPE base 10000 only 5 of 16 frequencies are reliable at ``L = 128`` (r* = 0.33), so
the default ``split = 0.5`` would put unreliable frequencies on the token level; the ``short-code``
config uses base 256 (r* = 0.54: frequencies 0..8 have periods 6-100 tokens). The segment level
must also stay within ``L``: ``L^2`` assumes about ``L`` segments of about ``L`` tokens, while 16K
tokens of code hold several hundred functions -- so HiRoPE is measured with tree-sitter function
segments (the paper's method) *and* with fixed 128-token segments (the paper's prose rule, which
its segmentation ablation found about as good: 1.920 vs 1.912).

Methods (windows scaled to ``L`` as the paper's 512 is to 2048): ``rope``; ``ntk`` and ``yarn``
with factor ``length / L``; ``rerope`` with window ``L/2`` (with and without log-n); ``self-extend``
with neighbour window ``L/4`` and the group its reference rule gives for the length,
``(L - W) G + W >= length``; ``hirope`` with window ``L/4`` (function segments), its
``split=auto`` and ``token_index=segment`` variants and the fixed-chunk variant; and the
``window`` reference (attention limited to ``L`` plus 4 sinks, :mod:`ropelab.pe.sliding`).

The experiment directory holds ``experiment.json``, ``model/`` (the training run; resumable),
``results.jsonl`` (one record per method x document, appended as measured; resumable),
``summary.json``, ``report.md`` and ``loss_by_position.png``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_write_text, ropelab_home
from ropelab.core.log import log
from ropelab.data.corpus import stdlib_root
from ropelab.eval.base import Sample
from ropelab.eval.documents import first_tokens, jdk_sources, long_code, long_java, stdlib_python_files
from ropelab.eval.runner import WINDOW, Evaluator, read_results, window_prefill
from ropelab.eval.stats import block_means
from ropelab.experiments.hirope.config import HOLDOUT, JDK_PACKAGES, ShortConfig, _methods, block_size
from ropelab.experiments.hirope.report import write_report
from ropelab.experiments.saved import saved_experiment
from ropelab.model.checkpoint import CHECKPOINTS
from ropelab.pe.sliding import SlidingWindow
from ropelab.pretrained.registry import load_model
from ropelab.train import distributed
from ropelab.train.config import TrainConfig
from ropelab.train.state import latest_checkpoint
from ropelab.train.trainer import describe_result, load_data, train


# -- data ------------------------------------------------------------------------------------------
def python_holdout() -> list[Path]:

    return list(stdlib_python_files()[:HOLDOUT])


def java_holdout() -> list[str]:
    """Archive names of the largest ``java.util`` files (what :func:`ropelab.eval.documents.long_java` reads first)."""

    archive = jdk_sources()
    if archive is None:
        return []
    with zipfile.ZipFile(archive) as zf:
        entries = [
            i for i in zf.infolist() if i.filename.startswith("java.base/java/util/") and i.filename.endswith(".java")
        ]
    entries.sort(key=lambda i: (-i.file_size, i.filename))
    return [i.filename for i in entries[:HOLDOUT]]


def java_training_dir() -> Path | None:
    """The JDK's ``java.base`` sources of :data:`JDK_PACKAGES` minus the held-out files, extracted
    once under ``$ROPELAB_HOME/data/jdk-train`` (a plain directory ``ropelab train`` can read)."""

    archive = jdk_sources()
    if archive is None:
        return None
    held = set(java_holdout())
    target = ropelab_home() / "data" / "jdk-train"
    done = target / ".complete"
    if done.is_file():
        return target
    prefixes = tuple(f"java.base/java/{p}/" for p in JDK_PACKAGES)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.startswith(prefixes) and name.endswith(".java") and name not in held:
                path = target / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(zf.read(info))
    done.write_text("extracted\n")
    return target


def documents(config: ShortConfig, tokenizer, indices: Sequence[int] | None = None) -> list[dict]:
    """Held-out evaluation documents: ``config.documents`` per language of ``config.length`` tokens,
    each a run of whole held-out files (largest first), never a file the model trained on.
    ``indices`` picks other documents (document ``i`` starts at the ``3 i``-th held-out file):
    the sensitivity sweep chooses settings on documents the study does not report."""

    held_py = {str(p.relative_to(stdlib_root())) for p in python_holdout()}
    held_java = set(java_holdout())
    out = []
    for language in config.languages:
        for index in range(config.documents) if indices is None else indices:
            skip = 3 * index
            if language == "python":
                text, files = long_code(min_chars=config.length * 8, skip=skip)
                held = held_py
            else:
                source = long_java(min_chars=config.length * 8, skip=skip)
                if source is None:
                    raise RopelabError("the Java documents need the JDK sources (apt install openjdk-17-source)")
                text, files = source
                held = held_java
            outside = [f for f in files if f not in held]
            if outside:
                raise RopelabError(f"evaluation document {language}:{index} reads training files: {outside[:3]}")
            ids = first_tokens(tokenizer, text, config.length)
            if len(ids) < config.length:
                raise RopelabError(f"{language} document {index} has fewer than {config.length} tokens")
            out.append({"language": language, "index": index, "files": files, "text": text, "ids": ids})
    return out


# -- the experiment ----------------------------------------------------------------------------------
def train_config(config: ShortConfig, minutes: float | None):

    if config.data is not None:
        data = list(config.data)
    else:
        data = ["stdlib"]
        java = java_training_dir() if "java" in config.languages else None
        if java is not None:
            data.append(str(java))
    return TrainConfig(
        pe="rope",
        model_config=config.model_config,
        train_len=config.train_len,
        data=data,
        holdout=[str(p) for p in python_holdout()],
        tokenizer=config.tokenizer,
        seed=config.seed,
        steps=config.steps,
        minutes=None if config.steps is not None else minutes,
        batch_size=config.batch_size,
        lr=config.lr,
        log_every=20,
        val_sequences=64,
    )


def evaluate_document(model, tokenizer, doc: dict, label: str, spec: str, structure: bool, block: int) -> dict:
    """Next-token losses of one document under one method, as ``block``-token means."""

    own = model.pe.spec
    model.with_method(own if spec == WINDOW else spec)
    try:
        evaluator = Evaluator(model, tokenizer, spec)
        sample = Sample("loss", len(doc["ids"]), doc["index"], 0, doc["text"], doc["ids"], "",
                        language=doc["language"] if structure else None)  # fmt: skip
        start = time.perf_counter()
        with torch.no_grad():
            if spec == WINDOW:
                sliding = SlidingWindow(model.pe, model.config.train_len)
                hidden = window_prefill(model, model.pe, sliding, doc["ids"], model.new_cache())
                note = None
            else:
                positions, note = evaluator.positions(sample, doc["ids"])
                hidden = model.hidden_states(torch.tensor([doc["ids"]]), positions)[0]
            losses = model.losses_from_hidden(hidden[None, :-1], torch.tensor([doc["ids"][1:]]))[0].tolist()
        record = {
            "method": label,
            "spec": spec,
            "language": doc["language"],
            "document": doc["index"],
            "files": doc["files"][:5],
            "blocks": [round(v, 4) for v in block_means(losses, 0, len(losses), block)],
            "seconds": round(time.perf_counter() - start, 2),
        }
        if note:
            record["hierarchy"] = note
        return record
    finally:
        model.with_method(own)


def unigram_loss(data, documents: list[dict], vocab_size: int) -> float:
    """Cross-entropy of the evaluation tokens under the training tokens' unigram distribution
    (add-one smoothed): the loss of a model that ignores context."""
    import numpy as np

    counts = np.bincount(np.asarray(data.train, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    tokens = np.concatenate([np.asarray(d["ids"][1:]) for d in documents])
    return float(-logp[tokens].mean())


def run_experiment(config: ShortConfig, out: str | os.PathLike, progress: bool = True) -> Path:

    start = time.perf_counter()
    config.validate()
    out = Path(out)
    if saved_experiment(out, config.to_dict()) is None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "experiment.json", json.dumps({"config": config.to_dict(), "name": "hirope"}, indent=2))
    minutes = config.budget_minutes * config.train_fraction
    tconfig = train_config(config, minutes)
    result = train(tconfig, out / "model", progress=progress)
    log(f"model: {describe_result(result)}")
    checkpoint = latest_checkpoint(out / "model" / CHECKPOINTS)
    if checkpoint is None:
        raise RopelabError("training left no checkpoint")
    model, tokenizer = load_model(checkpoint)
    model.eval()
    docs = documents(config, tokenizer)
    methods = [*_methods(config), (WINDOW, WINDOW, False)]
    results_path = out / "results.jsonl"
    done = set()
    if results_path.exists():
        done = {(r["method"], r["language"], r["document"]) for r in read_results(results_path)}
    from tqdm.auto import tqdm

    units = [(m, d) for m in methods for d in docs]
    bar = tqdm(total=len(units), disable=not progress, desc="evaluating", unit="pass", file=sys.stderr)
    with open(results_path, "a") as handle:
        for (label, spec, structure), doc in units:
            bar.update(1)
            if (label, doc["language"], doc["index"]) in done:
                continue
            bar.set_postfix_str(f"{label} {doc['language']}:{doc['index']}", refresh=False)
            record = evaluate_document(model, tokenizer, doc, label, spec, structure, block_size(config.train_len))
            handle.write(json.dumps(record) + "\n")
            handle.flush()
    bar.close()
    data = load_data(tconfig, distributed.Dist(), progress=False)
    extra = {
        "unigram_loss": unigram_loss(data, docs, model.config.vocab_size),
        "training": json.loads((out / "model" / "train_config.json").read_text()),
        "train_status": {"status": result.status, "step": result.step, "val_loss": result.val_loss},
        "seconds_this_session": round(time.perf_counter() - start, 1),
    }

    report = write_report(out, extra)
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min (this session); report: {report}")
    return report
