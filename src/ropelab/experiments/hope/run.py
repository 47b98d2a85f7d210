"""``ropelab experiment hope``: the HoPE paper's from-scratch comparison (Section 4.2), at CPU scale.

The same model (``hope-cpu`` by default) is trained with each position encoding under identical
settings -- same data, data order, seed, steps, batch and schedule -- then every model is
evaluated with :func:`ropelab.eval.runner.evaluate` on ``ppl``, ``copy``, ``fewshot`` and
``passkey`` at 0.5x .. 4x its train length (RoPE-family models also with ``+pi`` and ``+yarn`` at
inference), and one report puts the results side by side: the paper's Table 1 (copy), Table 2
(few-shot following) and Figure 5 (perplexity vs length), copy accuracy over training, and a
seed study of the headline pair.

The recipe (docs/training.md, "The recipe"): 75% of the training sequences are synthetic record
sequences (:mod:`ropelab.data.synthetic`), so that in-context copying -- what copy, few-shot and
passkey measure -- is learnable by a 1.4M-parameter model in :data:`RECIPE_STEPS` steps; the rest
is natural stdlib code. ``rope`` and ``hope`` (``seed_pes``) are trained with ``seeds`` seeds,
the other encodings with one. :data:`RECIPE_SAMPLES` samples per evaluation cell.

``budget_minutes`` (optional) sizes the steps and samples to a wall-time budget instead: a short
calibration comes first; ``train_fraction`` of what is left trains the models (all get the same
number of steps -- the bias methods are slower per step; equal steps, not equal time, is the
paper's protocol) and the rest evaluates them. Preparing the data (training the tokenizer,
tokenizing the corpus) happens once and is cached. Each model has a hard time limit of twice its
expected training time, so a disturbed machine cannot run it far past its plan (the report says
when a model stopped early).

Held-out evaluation text: with the default corpus every stdlib file the evaluation reads goes to
the validation split (:func:`eval_holdout`), so no model is trained on it, and the synthetic
records are spans of the training split only.

The experiment directory holds ``experiment.json`` (the settings and the plan), ``models/<pe>/``
and ``models/<pe>.seed<N>/`` (one training run each, with ``copy_curve.json``), ``eval/<name>/``
(one evaluation run each), ``report.md``, ``summary.json`` and PNG plots. Models are trained and
evaluated ``jobs`` at a time (worker processes); run the same command again to resume.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch

from ropelab.analysis.pipeline import AnalyzeConfig, analyze
from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_write_text
from ropelab.core.lengths import parse_length
from ropelab.core.log import log
from ropelab.data import ChunkSampler
from ropelab.data.corpus import stdlib_root
from ropelab.eval import get_task
from ropelab.eval.base import Outputs
from ropelab.eval.documents import long_code, recorded_reads, stdlib_python_files
from ropelab.eval.runner import evaluate
from ropelab.eval.stats import wilson
from ropelab.eval.tasks.copy import Copy
from ropelab.experiments.hope import tuning
from ropelab.experiments.hope.config import (
    ABLATIONS,
    ANALYSIS_DIR,
    CURVE_FILE,
    CURVE_SAMPLES,
    DEFAULT_PES,
    HOLDOUT_FILES,
    MAX_SAMPLES,
    RECIPE_SAMPLES,
    RECIPE_STEPS,
    ExperimentConfig,
    Run,
    run_dir_name,
    runs,
)
from ropelab.experiments.hope.report import write_experiment_report
from ropelab.experiments.saved import saved_experiment
from ropelab.model.checkpoint import CHECKPOINTS, list_checkpoints
from ropelab.pretrained.registry import load_model
from ropelab.reporting.analysis import write_outputs
from ropelab.reporting.eval import write_report
from ropelab.train import distributed
from ropelab.train.config import TrainConfig
from ropelab.train.state import latest_checkpoint
from ropelab.train.trainer import build_model, calibrate_step_seconds, describe_result, load_data, train


def eval_holdout(config: ExperimentConfig | None = None) -> list[str]:
    """The stdlib files the evaluation reads, which no model may train on: the
    :data:`HOLDOUT_FILES` largest non-test files (copy windows and few-shot functions come from
    the first few dozen of them) plus every file of the ppl / passkey documents of the
    ``samples`` (at most :data:`MAX_SAMPLES`) evaluation samples at the longest length."""

    config = config or ExperimentConfig()
    documents = "ppl" in config.tasks or "passkey" in config.tasks
    longest = max(parse_length(x, config.train_len) for x in config.lengths)
    return list(_holdout(longest if documents else 0, config.samples or MAX_SAMPLES, config.seed))


@lru_cache(maxsize=8)
def _holdout(longest: int, samples: int, seed: int) -> tuple[str, ...]:
    """:func:`eval_holdout`'s files (``longest`` 0: no ppl / passkey documents); cached, since
    every model's training config asks and reading the documents takes seconds."""

    files = [str(p) for p in stdlib_python_files()[:HOLDOUT_FILES]]
    if longest:
        for index in range(samples):
            # the files from each sample's own start (a late sample whose start holds too little text
            # reads an earlier sample's document instead, whose files are listed too)
            files += [str(stdlib_root() / name) for name in long_code(longest * 6, 3 * index + seed % 7)[1]]
    return tuple(dict.fromkeys(files))


def check_reads(name: str, read: set[str], holdout: list[str]) -> None:
    """Raise when the evaluation of model ``name`` read a file (``read``: resolved paths, from
    :func:`ropelab.eval.documents.recorded_reads`) that is not held out of its training."""
    held = {str(Path(p).resolve()) for p in holdout}
    outside = sorted(read - held)
    if outside:
        raise RopelabError(
            f"{name}: the evaluation read {len(outside)} file(s) the model may have trained on (not in the "
            f"holdout), e.g. {outside[0]}; its results would not be held out"
        )


def train_config(config: ExperimentConfig, pe: str, steps: int, seed: int | None = None, lr: float | None = None):

    return TrainConfig(
        pe=pe,
        model_config=config.model_config,
        train_len=config.train_len,
        data=list(config.data),
        holdout=eval_holdout(config) if config.holdout_eval and config.data == ["stdlib"] else [],
        tokenizer=config.tokenizer,
        synthetic=config.synthetic,
        synthetic_repeat=config.synthetic_repeat,
        seed=config.seed if seed is None else seed,
        split_seed=config.seed,  # every seed trains on the same files with the same tokenizer
        steps=steps,
        batch_size=config.batch_size,
        lr=config.lr if lr is None else lr,
        log_every=max(1, min(10, steps // 20)),
        val_sequences=32,
    )


# -- planning ------------------------------------------------------------------------------------
def _forward_seconds(model, length: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, length))
    times = []
    with torch.no_grad():
        for _ in range(3):  # the first pass at a new length pays one-time allocation costs
            start = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - start)
    return min(times[1:])


def plan(config: ExperimentConfig, elapsed: float, progress: bool) -> dict:
    """Steps per model (equal for all) and samples per cell from the budget, by measurement."""

    probe = train_config(config, config.pes[0], 1)
    probe.validate()
    data = load_data(probe, distributed.Dist(), progress)  # cached after the first run: not budgeted
    start = time.perf_counter()
    sampler = ChunkSampler(data.train, config.train_len, config.seed)
    step_seconds, eval_seconds = {}, {}
    task_lengths = {t: [parse_length(x, config.train_len) for x in xs] for t, xs in config.task_lengths().items()}
    for pe in config.pes:
        model = build_model(train_config(config, pe, 1), data.tokenizer.vocab_size, torch.device("cpu"))
        step_seconds[pe] = calibrate_step_seconds(model, sampler, config.batch_size, 1, torch.device("cpu"))
        model.eval()
        forward = {n: _forward_seconds(model, n) for n in sorted({n for xs in task_lengths.values() for n in xs})}
        per_sample = 0.0
        for name, lengths in task_lengths.items():
            mode = get_task(name).mode
            if mode == "loss":  # one pass of the longest length serves all of a sample's lengths
                per_sample += forward[max(lengths)]
            elif mode == "generate":  # prefill + a few cached decoding steps
                per_sample += sum(forward[n] * 1.5 for n in lengths)
            else:
                per_sample += sum(forward[n] for n in lengths)
        rows = len(config.methods(pe)) + (1 if config.window else 0)
        eval_seconds[pe] = per_sample * rows * 1.3  # tokenization, scoring, records
    overhead = 1.08  # validation loss, logging, checkpoints
    models = runs(config)
    # every evaluation run builds its samples again (ppl tokenizes whole stdlib files): time one
    build_start = time.perf_counter()
    buildable_lengths(config, data.tokenizer, 1)
    build_per_sample = time.perf_counter() - build_start
    per_sample = {pe: seconds + build_per_sample for pe, seconds in eval_seconds.items()}
    if config.budget_minutes is None:  # the recipe's fixed steps and samples
        steps, samples = config.steps or RECIPE_STEPS, config.samples or RECIPE_SAMPLES
    else:  # what fits the budget (for what is not given)
        budget = config.budget_minutes * 60 - elapsed - (time.perf_counter() - start)
        if budget <= 0:
            raise RopelabError(f"a {config.budget_minutes:g}-minute budget is used up by calibration; give more time")
        train_budget, eval_budget = budget * config.train_fraction, budget * (1 - config.train_fraction)
        steps = config.steps or max(1, int(train_budget / (overhead * sum(step_seconds[r.pe] for r in models))))
        fit = int(eval_budget / sum(per_sample[r.pe] for r in models))
        samples = config.samples or max(1, min(MAX_SAMPLES, fit))
    expected = {pe: steps * step_seconds[pe] * overhead for pe in config.pes}
    lengths, dropped = buildable_lengths(config, data.tokenizer, samples)
    return {
        "steps": steps,
        "samples": samples,
        "task_lengths": lengths,
        "dropped_lengths": dropped,
        "tokens_per_model": steps * config.batch_size * config.train_len,
        "step_seconds": step_seconds,
        "expected_train_seconds": expected,
        "expected_eval_seconds": {pe: samples * s for pe, s in per_sample.items()},
        "data_dir": str(data.directory),
        "data": data.meta,
    }


def buildable_lengths(config: ExperimentConfig, tokenizer, samples: int) -> tuple[dict, dict]:
    """Per task, the lengths whose samples can be built with this tokenizer (a few-shot prompt
    of 5 examples may not fit in 256 tokens, ppl needs more than its 256 scored tokens), and the
    dropped ones with the reason."""

    usable, dropped = {}, {}
    for name in config.tasks:
        task = get_task(name)
        for label in config.lengths:
            # only few-shot prompts differ in size from sample to sample; one sample tells for the rest
            count = samples if task.variable_size else 1
            try:
                task.build(tokenizer, parse_length(label, config.train_len), count, config.seed, config.train_len)
            except RopelabError as error:
                dropped.setdefault(name, {})[label] = str(error)
                continue
            usable.setdefault(name, []).append(label)
        if name not in usable:
            raise RopelabError(f"{name}: no sample can be built at any of the lengths {', '.join(config.lengths)}")
    return usable, dropped


# -- when copying appears --------------------------------------------------------------------------


@torch.no_grad()
def copy_curve(run: Path, samples: int = CURVE_SAMPLES, seed: int = 0) -> list[dict]:
    """Copy exact match at the train length for every checkpoint of a training run: when the
    ability appears. Written to ``run/copy_curve.json`` (computed once; recomputed when the run
    has new checkpoints). Scored teacher-forced like the copy task: all four answer tokens must
    be the argmax."""

    path = run / CURVE_FILE
    checkpoints = list_checkpoints(run / CHECKPOINTS)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if [p["checkpoint"] for p in saved] == [c.name for c in checkpoints]:
                return saved
        except (OSError, ValueError, TypeError, KeyError):
            pass  # damaged: computed again
    points, task, built = [], Copy(), None
    for checkpoint in checkpoints:
        model, tokenizer = load_model(checkpoint)
        model.eval()
        length = model.config.train_len
        if built is None:
            built = task.build(tokenizer, length, samples, seed, length)
        hits = 0
        for sample in built:
            ids = torch.tensor([sample.prompt_ids + sample.answer_ids])
            answer = len(sample.answer_ids)
            predicted = model(ids)[0, -answer - 1 : -1].argmax(-1).tolist()
            hits += int(task.score(sample, Outputs(answer_argmax=predicted))["exact_match"])
        step = int(checkpoint.name.rsplit("-", 1)[1])  # step-000100
        low, high = wilson(hits, len(built))
        points.append(
            {
                "checkpoint": checkpoint.name,
                "step": step,
                "length": length,
                "n": len(built),
                "exact_match": hits / len(built),
                "interval": [low, high],
            }
        )
    atomic_write_text(path, json.dumps(points, indent=2))
    return points


# -- the experiment --------------------------------------------------------------------------------
def analyze_experiment(out: Path) -> Path | None:
    """The HoPE paper's analyses of every trained model, side by side, in ``out/analysis``: the
    attention-pattern probe within and beyond the train length, per-frequency VAF (over every
    checkpoint) and the first-layer OOD score. Cheap next to training (small models, probe inputs).
    Returns the analysis index, or ``None`` (with the reason logged) if it could not run."""

    target = out / ANALYSIS_DIR
    if (target / "analysis.json").is_file():
        return target / "analysis.md"
    config = AnalyzeConfig(path=str(out), out=str(target), analyses=["pattern", "vaf", "ood"], checkpoints="all")
    try:
        return write_outputs(target, analyze(config, log=log), log)
    except RopelabError as error:
        log(f"analysis skipped: {error}")
        return None


def run_model(
    config: ExperimentConfig, the_plan: dict, run: Run, out: Path, progress: bool, threads: int | None = None
) -> str:
    """Train (or resume), evaluate and trace copying for one model of the experiment; returns a
    one-line account. Runs in a worker process when the experiment has several jobs."""

    if threads:
        torch.set_num_threads(threads)
    limit = 2.0 * the_plan["expected_train_seconds"][run.pe] + 30
    result = train(
        train_config(config, run.pe, the_plan["steps"], run.seed, the_plan.get("lr", {}).get(run.pe)),
        out / "models" / run.name,
        progress=progress,
        max_seconds=limit,
    )
    if result.status == "interrupted":  # a half-trained model is never evaluated: its records would stay
        raise RopelabError(f"{run.name}: training was interrupted at step {result.step}; run again to resume")
    checkpoint = latest_checkpoint(out / "models" / run.name / CHECKPOINTS)
    if checkpoint is None:
        raise RopelabError(f"{run.name}: training left no checkpoint")
    model, tokenizer = load_model(checkpoint)
    with recorded_reads() as read:
        evaluate(
            model,
            tokenizer,
            run.pe,
            config.methods(run.pe),
            list(the_plan["task_lengths"]),
            config.lengths,
            the_plan["samples"],
            out / "eval" / run.name,
            seed=config.seed,
            include_window=config.window,
            progress=progress,
            task_lengths=the_plan["task_lengths"],
        )
        if "copy" in config.tasks:
            copy_curve(out / "models" / run.name, seed=config.seed)
    if config.holdout_eval and config.data == ["stdlib"]:
        check_reads(run.name, read, eval_holdout(config))
    write_report(out / "eval" / run.name)
    return f"{run.name}: {describe_result(result)}"


def tune_one(config: ExperimentConfig, pe: str, lr: float, out: Path, threads: int | None = None) -> tuple:
    """One tuning run (trained or resumed) and its development loss: ``(pe, lr, loss)``."""
    if threads:
        torch.set_num_threads(threads)
    steps = config.tune_steps or tuning.TUNE_STEPS
    directory = out / "tuning" / tuning.run_name(run_dir_name(pe), lr)
    result = train(train_config(config, pe, steps, config.seed, lr), directory, progress=False)
    if result.status == "interrupted":
        raise RopelabError(f"tuning {pe} at lr {lr:g} was interrupted at step {result.step}; run again to resume")
    model, tokenizer = load_model(latest_checkpoint(directory / CHECKPOINTS))
    holdout = eval_holdout(config) if config.holdout_eval and config.data == ["stdlib"] else []
    files = tuning.development_files(list(config.data), 0.05, config.seed, holdout)
    windows = tuning.development_windows(files, tokenizer, config.train_len)
    return pe, lr, tuning.development_loss(model, windows), len(files)


def tune(config: ExperimentConfig, out: Path, jobs: int) -> dict[str, float]:
    """Each encoding's learning rate (:mod:`~ropelab.experiments.hope.tuning`), from ``tuning.json``
    when it is there, else measured and saved."""
    found = tuning.load(out)
    if found is None:
        units = [(pe, lr) for pe in config.pes for lr in tuning.LR_GRID]
        results = list(_parallel(tune_one, [(config, pe, lr, out) for pe, lr in units], jobs))
        scores: dict[str, dict[str, float]] = {}
        for pe, lr, loss, _ in results:
            scores.setdefault(pe, {})[f"{lr:g}"] = loss
        found = tuning.save(out, scores, config.tune_steps or tuning.TUNE_STEPS, results[0][3])
    log("learning rates: " + ", ".join(f"{pe} {lr:g}" for pe, lr in found["chosen"].items()))
    return found["chosen"]


def _serial(jobs: int, count: int) -> bool:
    return jobs <= 1 or count == 1


def _threads(jobs: int) -> int:
    """Torch threads of each of ``jobs`` worker processes: an equal share of the cores."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _parallel(function, arguments: list[tuple], jobs: int) -> Iterator:
    """``function(*args)`` for each of ``arguments``, in this process when :func:`_serial`, else
    ``function(*args, threads)`` ``jobs`` at a time in worker processes (spawned: a forked child of
    a process that has used OpenMP threads can hang); results as they complete."""
    if _serial(jobs, len(arguments)):
        for args in arguments:
            yield function(*args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = _threads(jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(function, *args, threads) for args in arguments]):
            yield future.result()


def _run_models(config: ExperimentConfig, the_plan: dict, out: Path, progress: bool, jobs: int) -> None:
    """Every model, one after another or ``jobs`` at a time in worker processes (:func:`_parallel`)."""
    models = runs(config)
    serial = _serial(jobs, len(models))
    if not serial:
        log(f"{len(models)} models, {jobs} at a time ({_threads(jobs)} thread(s) each); progress is logged per model")
    for line in _parallel(run_model, [(config, the_plan, run, out, progress and serial) for run in models], jobs):
        log(line)


def run_experiment(
    config: ExperimentConfig, out: str | os.PathLike, progress: bool = True, analysis: bool = True, jobs: int = 1
) -> Path:
    """Train, evaluate, analyse (unless ``analysis=False``) and report; resumes when ``out``
    holds the same experiment. ``jobs`` models are trained and evaluated at a time (results do not
    depend on it)."""
    start = time.perf_counter()
    config.validate()
    if jobs < 1:
        raise RopelabError(f"jobs must be a positive integer, got {jobs}")
    out = Path(out)
    record_path = out / "experiment.json"
    saved = saved_experiment(out, config.to_dict())
    if saved is not None:
        the_plan = saved["plan"]
        log(f"resuming the experiment in {out}: {the_plan['steps']} steps per model")
    else:
        the_plan = plan(config, time.perf_counter() - start, progress)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_path, json.dumps({"config": config.to_dict(), "plan": the_plan}, indent=2))
        log(
            f"plan: {len(runs(config))} models x {the_plan['steps']} steps ({the_plan['tokens_per_model']:,} tokens "
            f"each), {the_plan['samples']} samples per evaluation cell"
        )
    if config.tune_lr:
        the_plan["lr"] = tune(config, out, jobs)
    _run_models(config, the_plan, out, progress, jobs)
    if analysis:
        analyze_experiment(out)

    report = write_experiment_report(out)
    log(f"experiment done in {(time.perf_counter() - start) / 60:.1f} min (this session); report: {report}")
    return report


__all__ = [
    "ABLATIONS",
    "DEFAULT_PES",
    "ExperimentConfig",
    "analyze_experiment",
    "eval_holdout",
    "plan",
    "run_experiment",
    "run_model",
    "runs",
]
