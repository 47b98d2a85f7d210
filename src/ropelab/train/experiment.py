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

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from ropelab.core.io import atomic_write_text
from ropelab.core.log import log
from ropelab.errors import RopelabError

DEFAULT_PES = ("rope", "hope", "nope", "alibi", "kerple-log", "fire")
ABLATIONS = ("hope-ab1", "hope-ab2", "hope-ab3")
DEFAULT_TASKS = ("ppl", "copy", "fewshot", "passkey")
DEFAULT_LENGTHS = ("0.5x", "1x", "2x", "4x")
#: the encodings that get the extra training seeds of ``--seeds`` (the headline comparison)
SEED_PES = ("rope", "hope")
#: the number of largest stdlib files held out of training (the evaluation tasks read from them)
HOLDOUT_FILES = 160
#: at most this many samples per cell when they are sized from a budget (the ppl / passkey
#: documents of this many samples are held out of training, see :func:`eval_holdout`)
MAX_SAMPLES = 200
#: the recipe's samples per evaluation cell (the accuracy tasks need about 200 for a +/- 3-point
#: standard error) and steps per model (chosen by measurement, see docs/training.md)
RECIPE_SAMPLES = 200
RECIPE_STEPS = 3000
#: the paper's row order in Tables 1-2 (anything else follows)
PAPER_ORDER = ("alibi", "kerple-log", "kerple-power", "fire", "nope", "rope", "hope", *ABLATIONS)


ANALYSIS_DIR = "analysis"


@dataclass
class ExperimentConfig:
    pes: list[str] = field(default_factory=lambda: list(DEFAULT_PES))
    budget_minutes: float | None = None  # None: the recipe's steps and samples; else sized to fit
    model_config: str = "hope-cpu"
    train_len: int = 256
    data: list[str] = field(default_factory=lambda: ["stdlib"])
    holdout_eval: bool = True  # hold the stdlib files the evaluation reads out of training
    tokenizer: str = "bpe-4k"
    synthetic: float = 0.75  # share of training sequences that are record sequences (ropelab.data.synthetic)
    synthetic_repeat: float = 0.6
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    lengths: list[str] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    samples: int | None = None  # per task x length x method; default: RECIPE_SAMPLES (or sized from the budget)
    scale_factor: float | None = None  # +pi / +yarn factor; default: longest length / train length
    train_fraction: float = 0.75
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0
    window: bool = False  # also the truncated-context reference row of every model
    steps: int | None = None  # default: RECIPE_STEPS (or sized from the budget)
    seeds: int = 3  # models per encoding of ``seed_pes``, trained with seeds seed, seed + 1, ...
    seed_pes: list[str] = field(default_factory=lambda: list(SEED_PES))

    def validate(self) -> None:
        from ropelab.core.lengths import parse_length
        from ropelab.eval import get_task
        from ropelab.model.config import CONFIGS
        from ropelab.pe import canonical_spec, parse_spec

        if not self.pes:
            raise RopelabError("no position encodings to compare")
        self.pes = [canonical_spec(p) for p in self.pes]
        for pe in self.pes:
            if len(parse_spec(pe)) > 1:
                raise RopelabError(f"{pe!r}: train with a base encoding; +pi / +yarn are applied at inference")
        if len(set(self.pes)) != len(self.pes):
            raise RopelabError("a position encoding is listed twice")
        if self.model_config not in CONFIGS:
            raise RopelabError(f"unknown model config {self.model_config!r}; known configs: {', '.join(CONFIGS)}")
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise RopelabError(f"the budget must be positive, got {self.budget_minutes} minutes")
        if not 0 < self.train_fraction < 1:
            raise RopelabError(f"train fraction must be in (0, 1), got {self.train_fraction}")
        if self.train_len <= 0 or self.batch_size <= 0 or not self.lr > 0:
            raise RopelabError("train length, batch size and lr must be positive")
        for name in self.tasks:
            get_task(name)
        for length in self.lengths:
            parse_length(length, self.train_len)
        for value, name in ((self.samples, "samples"), (self.steps, "steps")):
            if value is not None and value <= 0:
                raise RopelabError(f"{name} must be a positive integer, got {value}")
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 1:
            raise RopelabError(f"seeds must be a positive integer, got {self.seeds!r}")
        self.seed_pes = [canonical_spec(p) for p in self.seed_pes]
        missing = [p for p in self.seed_pes if p not in self.pes]
        if self.seeds > 1 and missing:
            raise RopelabError(f"--seed-pes names encodings that are not trained: {', '.join(missing)}")
        if self.scale_factor is not None and not self.scale_factor >= 1:
            raise RopelabError(f"scale factor must be >= 1, got {self.scale_factor}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def factor(self) -> float:
        from ropelab.core.lengths import parse_length

        if self.scale_factor is not None:
            return self.scale_factor
        return max(1.0, max(parse_length(x, self.train_len) for x in self.lengths) / self.train_len)

    def task_lengths(self) -> dict[str, list[str]]:
        """Per task, the lengths it can be built at (``ppl`` needs > 256 tokens, ``fewshot`` 256)."""
        from ropelab.core.lengths import parse_length
        from ropelab.eval import get_task

        result = {}
        for name in self.tasks:
            task = get_task(name)
            usable = [x for x in self.lengths if parse_length(x, self.train_len) >= task.min_length]
            if not usable:
                raise RopelabError(f"{name}: none of the lengths {', '.join(self.lengths)} is long enough for it")
            result[name] = usable
        return result

    def methods(self, pe: str) -> list[str]:
        """The model's own spec, plus ``+pi`` / ``+yarn`` for a RoPE-family model."""
        from ropelab.pe import parse_spec

        if parse_spec(pe)[0].info.kind != "rotary":
            return [pe]
        factor = f"{self.factor:g}"
        return [pe, f"{pe}+pi:factor={factor}", f"{pe}+yarn:factor={factor}"]


def run_dir_name(spec: str, seed: int | None = None) -> str:
    """The directory of one model under ``models/`` and ``eval/``: the spec made file-safe, plus
    ``.seed<N>`` for the extra seeds of ``--seeds`` (the base seed keeps the plain name)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)
    return name if seed is None else f"{name}.seed{seed}"


@dataclass(frozen=True)
class Run:
    """One trained model of the experiment: an encoding and a training seed."""

    pe: str
    seed: int
    name: str  # its directory under models/ and eval/


def runs(config: ExperimentConfig) -> list[Run]:
    """Every model to train: each encoding with the base seed, then the extra seeds of ``seed_pes``."""
    out = [Run(pe, config.seed, run_dir_name(pe)) for pe in config.pes]
    for seed in range(config.seed + 1, config.seed + config.seeds):
        out += [Run(pe, seed, run_dir_name(pe, seed)) for pe in config.seed_pes]
    return out


def eval_holdout(config: ExperimentConfig | None = None) -> list[str]:
    """The stdlib files the evaluation reads, which no model may train on: the
    :data:`HOLDOUT_FILES` largest non-test files (copy windows and few-shot functions come from
    the first few dozen of them) plus every file of the ppl / passkey documents of the
    ``samples`` (at most :data:`MAX_SAMPLES`) evaluation samples at the longest length."""
    from ropelab.core.lengths import parse_length

    config = config or ExperimentConfig()
    documents = "ppl" in config.tasks or "passkey" in config.tasks
    longest = max(parse_length(x, config.train_len) for x in config.lengths)
    return list(_holdout(longest if documents else 0, config.samples or MAX_SAMPLES, config.seed))


@lru_cache(maxsize=8)
def _holdout(longest: int, samples: int, seed: int) -> tuple[str, ...]:
    """:func:`eval_holdout`'s files (``longest`` 0: no ppl / passkey documents); cached, since
    every model's training config asks and reading the documents takes seconds."""
    from ropelab.data.corpus import stdlib_root
    from ropelab.eval.corpus import long_code, stdlib_python_files

    files = [str(p) for p in stdlib_python_files()[:HOLDOUT_FILES]]
    if longest:
        for index in range(samples):
            # the files from each sample's own start (a late sample whose start holds too little text
            # reads an earlier sample's document instead, whose files are listed too)
            files += [str(stdlib_root() / name) for name in long_code(longest * 6, 3 * index + seed % 7)[1]]
    return tuple(dict.fromkeys(files))


def train_config(config: ExperimentConfig, pe: str, steps: int, seed: int | None = None):
    from ropelab.train.config import TrainConfig

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
        lr=config.lr,
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
    from ropelab.core.lengths import parse_length
    from ropelab.data import ChunkSampler
    from ropelab.eval import get_task
    from ropelab.train import distributed
    from ropelab.train.trainer import build_model, calibrate_step_seconds, load_data

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
    from ropelab.core.lengths import parse_length
    from ropelab.eval import get_task

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
CURVE_FILE = "copy_curve.json"
CURVE_SAMPLES = 100


@torch.no_grad()
def copy_curve(run: Path, samples: int = CURVE_SAMPLES, seed: int = 0) -> list[dict]:
    """Copy exact match at the train length for every checkpoint of a training run: when the
    ability appears. Written to ``run/copy_curve.json`` (computed once; recomputed when the run
    has new checkpoints). Scored teacher-forced like the copy task: all four answer tokens must
    be the argmax."""
    from ropelab.eval.base import Outputs
    from ropelab.eval.copy import Copy
    from ropelab.eval.stats import wilson
    from ropelab.model.pretrained import load_model
    from ropelab.train.state import list_checkpoints
    from ropelab.train.trainer import CHECKPOINTS

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
    from ropelab.analysis.runner import AnalyzeConfig, analyze

    target = out / ANALYSIS_DIR
    if (target / "analysis.json").is_file():
        return target / "analysis.md"
    config = AnalyzeConfig(path=str(out), out=str(target), analyses=["pattern", "vaf", "ood"], checkpoints="all")
    try:
        return analyze(config, log=log)
    except RopelabError as error:
        log(f"analysis skipped: {error}")
        return None


def saved_experiment(out: Path, config: dict) -> dict | None:
    """The record in ``out/experiment.json`` when ``out`` holds this experiment (to resume), None
    when there is none; one clear error when it is unreadable or holds other settings."""
    record_path = out / "experiment.json"
    if not record_path.exists():
        return None
    try:
        saved = json.loads(record_path.read_text())
    except (OSError, ValueError):
        raise RopelabError(f"{record_path}: unreadable; choose another --out directory") from None
    if not isinstance(saved, dict) or saved.get("config") != config:
        raise RopelabError(f"{out} holds an experiment with other settings; choose another --out directory")
    return saved


def run_model(
    config: ExperimentConfig, the_plan: dict, run: Run, out: Path, progress: bool, threads: int | None = None
) -> str:
    """Train (or resume), evaluate and trace copying for one model of the experiment; returns a
    one-line account. Runs in a worker process when the experiment has several jobs."""
    from ropelab.eval.runner import evaluate
    from ropelab.model.pretrained import load_model
    from ropelab.train.state import latest_checkpoint
    from ropelab.train.trainer import CHECKPOINTS, describe_result, train

    if threads:
        torch.set_num_threads(threads)
    limit = 2.0 * the_plan["expected_train_seconds"][run.pe] + 30
    result = train(
        train_config(config, run.pe, the_plan["steps"], run.seed),
        out / "models" / run.name,
        progress=progress,
        max_seconds=limit,
    )
    checkpoint = latest_checkpoint(out / "models" / run.name / CHECKPOINTS)
    if checkpoint is None:
        raise RopelabError(f"{run.name}: training left no checkpoint")
    model, tokenizer = load_model(checkpoint)
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
    return f"{run.name}: {describe_result(result)}"


def _run_models(config: ExperimentConfig, the_plan: dict, out: Path, progress: bool, jobs: int) -> None:
    """Every model, one after another or ``jobs`` at a time in worker processes (spawned: a forked
    child of a process that has used OpenMP threads can hang), each with an equal share of the cores."""
    models = runs(config)
    if jobs <= 1 or len(models) == 1:
        for run in models:
            log(run_model(config, the_plan, run, out, progress))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"{len(models)} models, {jobs} at a time ({threads} thread(s) each); progress is logged per model")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(run_model, config, the_plan, run, out, False, threads): run for run in models}
        for future in as_completed(futures):
            log(future.result())


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
    _run_models(config, the_plan, out, progress, jobs)
    if analysis:
        analyze_experiment(out)
    from ropelab.train.report import write_experiment_report

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
