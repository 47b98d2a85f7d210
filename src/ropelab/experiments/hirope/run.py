"""``ropelab experiment hirope``: the HiRoPE paper's "ShortLLM" study (Zhang et al. 2024, Section 6.2,
Appendix A) at CPU scale -- can a training-free method keep a model's in-length loss far beyond its
train length, up to about ``L^2`` (the paper's claim for HiRoPE with two levels)?

The paper shrinks pretrained models to ``L_short = 128``; on a CPU the same question is asked of a
small RoPE code model trained from scratch at ``L = 128`` on Python (the stdlib) and Java (JDK
``java.base`` sources), **with several training seeds** (same data, same split, same steps), and
with every project of ropelab's evaluation corpus held out of training (:mod:`.data`). Every
method is applied to each trained model at inference and scored on ``L^2`` = 16K-token documents:

1. **Development** (:mod:`.selection`): HiRoPE's ``split x window`` grid on the corpus' ``dev``
   projects; the pre-stated rule picks one setting (``selection.json``, written once).
2. **Test**: the baselines (``rope``, ``ntk``, ``yarn``, ``rerope``, ``self-extend``), HiRoPE's
   library default and the chosen setting, the chosen setting's ablations (one design choice changed
   at a time: the far-pair shift, split, token index, granularity) and the ``window`` reference
   (attention limited to ``L`` plus 4 sinks) on the ``test`` projects.

Per document and method a record holds the loss beyond ``L``, the loss on *far-dependent tokens*
(identifiers whose earlier occurrences all lie beyond the window, :func:`ropelab.eval.far.far_tokens`;
the window reference is blind to them), the loss in 64-token blocks (the plot) and, for HiRoPE,
the share of far pairs whose segment distance exceeds any distance seen in training.

The model shape serves the paper's theory (Sec. 6.1): HiRoPE's token level must carry only
frequencies whose period is below ``L`` (``r* = log_base(L / 2 pi)``); with head_dim 32 the
``short-code`` config uses RoPE base 256 (``r* = 0.54``).

The experiment directory holds ``experiment.json``, ``seed-<s>/model/`` (each training run;
resumable), ``dev.jsonl`` and ``results.jsonl`` (one record per seed x method x document, appended
as measured; resumable), ``selection.json``, ``summary.json``, ``report.md`` and
``loss_by_position.png``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_write_text
from ropelab.core.log import log
from ropelab.eval.base import Sample
from ropelab.eval.far import far_tokens
from ropelab.eval.runner import REFERENCE, Evaluator, read_results, window_prefill
from ropelab.eval.stats import block_means
from ropelab.experiments.hirope import data, selection
from ropelab.experiments.hirope.config import ShortConfig, block_size, resolved_methods
from ropelab.experiments.hirope.report import write_report
from ropelab.experiments.saved import saved_experiment
from ropelab.model.checkpoint import CHECKPOINTS
from ropelab.pe.hirope import far_out_of_range_share
from ropelab.pe.sliding import DEFAULT_SINKS, SlidingWindow
from ropelab.pretrained.registry import load_model
from ropelab.train import distributed
from ropelab.train.config import TrainConfig
from ropelab.train.state import latest_checkpoint
from ropelab.train.trainer import describe_result, load_data, train


def train_config(config: ShortConfig, seed: int) -> TrainConfig:
    """Seed ``seed``'s training run: every seed reads the same files with the same split (split seed 0)."""
    return TrainConfig(
        pe="rope",
        model_config=config.model_config,
        train_len=config.train_len,
        data=data.training_sources(config.languages, config.data),
        holdout=[str(p) for p in data.python_holdout()],
        tokenizer=config.tokenizer,
        seed=seed,
        split_seed=0,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        log_every=20,
        val_sequences=64,
    )


# -- measuring ---------------------------------------------------------------------------------------
def far_targets(doc: dict, tokenizer, train_len: int) -> list[int]:
    """Far-dependent target tokens of ``doc`` (indices into its ids), cached on the document: the
    window reference (``train_len`` tokens plus the sinks) sees no mention of their names."""
    if "far" not in doc:
        text = tokenizer.decode(doc["ids"])
        encoding = tokenizer.encode_with_offsets(text)
        if encoding.ids != list(doc["ids"]):
            doc["far"] = []  # the offsets would not describe the ids: no far tokens rather than wrong ones
        else:
            texts, start = [], 0
            for chars in doc["file_chars"]:
                if start >= len(text):
                    break
                texts.append(text[start : start + chars])
                start += chars
            doc["far"] = far_tokens(texts, encoding.offsets, train_len, doc["language"], sinks=DEFAULT_SINKS)
    return doc["far"]


def _sample(doc: dict, structure: bool) -> Sample:
    return Sample("loss", len(doc["ids"]), 0, 0, "", doc["ids"], "", language=doc["language"] if structure else None,
                  extra={"file_chars": doc["file_chars"]})  # fmt: skip


def evaluate_document(model, tokenizer, doc: dict, spec: str, seed: int) -> dict:
    """One method on one document: loss beyond ``L``, on far-dependent tokens, in blocks, and
    (HiRoPE) the out-of-range share of far-pair segment distances."""
    own = model.pe.spec
    train_len = model.config.train_len
    model.with_method(own if spec == REFERENCE else spec)
    try:
        start = time.perf_counter()
        record = {"seed": seed, "method": spec, "document": doc["name"], "language": doc["language"], "era": doc["era"]}
        with torch.no_grad():
            if spec == REFERENCE:
                sliding = SlidingWindow(model.pe, train_len)
                hidden = window_prefill(model, model.pe, sliding, doc["ids"], model.new_cache())
            else:
                positions, note = Evaluator(model, tokenizer, spec).positions(_sample(doc, True), doc["ids"])
                if note:
                    record["hierarchy"] = note
                if getattr(model.pe, "uses_hierarchy", False):
                    if positions is None:  # fixed chunks
                        segments = [i // model.pe.chunk for i in range(len(doc["ids"]))]
                    else:
                        segments = positions[0, :, 1].tolist()
                    shift = model.pe.far_shift(segments)
                    record["far_shift"] = float(np.mean(shift))
                    record["out_of_range"] = far_out_of_range_share(segments, model.pe.window, shift, train_len - 1)
                hidden = model.hidden_states(torch.tensor([doc["ids"]]), positions)[0]
            losses = model.losses_from_hidden(hidden[None, :-1], torch.tensor([doc["ids"][1:]]))[0].tolist()
        far = [t - 1 for t in far_targets(doc, tokenizer, train_len) if t >= train_len]
        record.update(
            beyond=sum(losses[train_len:]) / max(1, len(losses) - train_len),
            far=sum(losses[i] for i in far) / len(far) if far else None,
            n_far=len(far),
            blocks=[round(v, 4) for v in block_means(losses, 0, len(losses), block_size(train_len))],
            seconds=round(time.perf_counter() - start, 2),
        )
        return record
    finally:
        model.with_method(own)


def measure(path: Path, units: list[tuple], models: dict, tokenizer, progress: bool, desc: str) -> list[dict]:
    """Evaluate ``(seed, spec, doc)`` units not yet in ``path`` (one record per line, appended as
    measured, so an interrupted run resumes) and return every record of the file."""
    from tqdm.auto import tqdm

    done = {(r["seed"], r["method"], r["document"]) for r in read_results(path)} if path.exists() else set()
    # each (seed, method, document) once: a setting can be both the default and an ablation
    todo = list({(u[0], u[1], u[2]["name"]): u for u in units if (u[0], u[1], u[2]["name"]) not in done}.values())
    with open(path, "a") as handle:
        for seed, spec, doc in tqdm(todo, disable=not progress, desc=desc, unit="pass", file=sys.stderr):
            record = evaluate_document(models[seed], tokenizer, doc, spec, seed)
            handle.write(json.dumps(record) + "\n")
            handle.flush()
    return read_results(path)


# -- the experiment ----------------------------------------------------------------------------------
def _train_seeds(config: ShortConfig, out: Path, progress: bool) -> dict[int, dict]:
    trained = {}
    for seed in config.seeds:
        tconfig = train_config(config, seed)
        result = train(tconfig, out / f"seed-{seed}" / "model", progress=progress)
        log(f"seed {seed}: {describe_result(result)}")
        if result.status == "interrupted":
            raise RopelabError(f"seed {seed}: training interrupted; the same command resumes it")
        if latest_checkpoint(out / f"seed-{seed}" / "model" / CHECKPOINTS) is None:
            raise RopelabError(f"seed {seed}: training left no checkpoint")
        status = out / f"seed-{seed}" / "train_status.json"
        found = {"status": result.status, "step": result.step, "val_loss": result.val_loss}
        if result.val_loss is None and status.is_file():  # resumed a finished run: its own numbers stand
            found = json.loads(status.read_text())
        else:
            atomic_write_text(status, json.dumps(found))
        trained[seed] = found
    return trained


def _load_models(config: ShortConfig, out: Path) -> tuple[dict, object]:
    models, tokenizer = {}, None
    for seed in config.seeds:
        model, tokenizer = load_model(latest_checkpoint(out / f"seed-{seed}" / "model" / CHECKPOINTS))
        model.eval()
        models[seed] = model
    return models, tokenizer


def run_experiment(
    config: ShortConfig, out: str | os.PathLike, progress: bool = True, train_only: bool = False
) -> Path:
    """Train every seed, choose HiRoPE's setting on the development projects, evaluate every
    method on the test projects and write the report; ``train_only``: stop after training
    (a later call resumes from there). Returns the report's path (the model folder's when
    ``train_only``)."""
    start = time.perf_counter()
    config.validate()
    out = Path(out)
    if saved_experiment(out, config.to_dict()) is None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "experiment.json", json.dumps({"config": config.to_dict(), "name": "hirope"}, indent=2))
    trained = _train_seeds(config, out, progress)
    if train_only:
        return out / f"seed-{config.seeds[-1]}" / "model"
    models, tokenizer = _load_models(config, out)
    L = config.train_len
    dev_docs = data.documents("dev", config.languages, config.dev_documents, tokenizer, config.length)
    test_docs = data.documents("test", config.languages, config.documents, tokenizer, config.length)
    selection.check_disjoint([d["name"] for d in dev_docs], [d["name"] for d in test_docs], "projects")
    sources = data.training_sources(config.languages, config.data)
    data.check_held_out(dev_docs + test_docs, sources)

    grid = selection.grid(L)
    units = [(s, spec, d) for s in config.seeds for d in dev_docs for spec in [*grid, REFERENCE]]
    dev_records = measure(out / "dev.jsonl", units, models, tokenizer, progress, "development")
    names = [d["name"] for d in dev_docs]
    chosen = selection.choose(out / "selection.json", dev_records, names, grid, L, config.seeds)
    settings = [chosen["chosen"]] + ([chosen["smaller_window"]] if chosen["smaller_window"] else [])
    methods = [*resolved_methods(config, settings), REFERENCE]
    units = [(s, spec, d) for s in config.seeds for d in test_docs for spec in methods]
    measure(out / "results.jsonl", units, models, tokenizer, progress, "test")

    first = config.seeds[0]
    tdata = load_data(train_config(config, first), distributed.Dist(), progress=False)
    extra = {
        "methods": methods,
        "selection": chosen,
        "unigram_loss": unigram_loss(tdata, test_docs, models[first].config.vocab_size),
        "training": json.loads((out / f"seed-{first}" / "model" / "train_config.json").read_text()),
        "train_status": {str(s): v for s, v in trained.items()},
        "seconds_this_session": round(time.perf_counter() - start, 1),
    }
    report = write_report(out, extra)
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min (this session); report: {report}")
    return report


def unigram_loss(tdata, documents: list[dict], vocab_size: int) -> float:
    """Cross-entropy of the evaluation tokens under the training tokens' unigram distribution
    (add-one smoothed): the loss of a model that ignores context."""
    import numpy as np

    counts = np.bincount(np.asarray(tdata.train, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    tokens = np.concatenate([np.asarray(d["ids"][1:]) for d in documents])
    return float(-logp[tokens].mean())


def rerender(out: str | os.PathLike) -> Path:
    """Write the report of a finished experiment directory again (from its records and summary)."""
    out = Path(out)
    try:
        saved = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        raise RopelabError(f"{out}: no finished hirope experiment (summary.json) to re-render") from None
    keys = ("methods", "selection", "unigram_loss", "training", "train_status", "seconds_this_session")
    return write_report(out, {k: saved[k] for k in keys if k in saved})
