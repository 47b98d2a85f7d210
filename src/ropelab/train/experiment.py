"""``ropelab experiment hope``: the HoPE paper's from-scratch comparison (Section 4.2), at CPU scale.

The same model (``hope-cpu`` by default) is trained with each position encoding under identical
settings -- same data, data order, seed, steps, batch and schedule -- then every model is
evaluated with :func:`ropelab.eval.runner.evaluate` on ``ppl``, ``copy``, ``fewshot`` and
``passkey`` at 0.5x .. 4x its train length (RoPE-family models also with ``+pi`` and ``+yarn`` at
inference), and one report puts the results side by side: the paper's Table 1 (copy), Table 2
(few-shot following) and Figure 5 (perplexity vs length).

Time budget (``budget_minutes``): a short calibration comes first; ``train_fraction`` of what is
left trains the models and the rest evaluates them. Preparing the data (training the tokenizer,
tokenizing the corpus: about a minute on 2 cores for the stdlib) happens once before and is not
counted: it is cached for every later run. Steps are calibrated so that *all* models get the
same number of steps (the bias methods are slower per step than RoPE; equal steps, not equal
time, is the paper's protocol); the samples per evaluation cell are sized from measured forward
times. Each model also gets a hard time limit of twice its expected time, so a disturbed machine
cannot run the experiment far past its budget (the report says when a model stopped early).

Held-out evaluation text: the evaluation tasks read the largest files of the stdlib (``ppl``,
``passkey``, ``copy``, ``fewshot``'s functions), so with the default corpus those files
(:data:`HOLDOUT_FILES` of them, see :func:`eval_holdout`) go to the validation split and no model
is trained on them.

The experiment directory holds ``experiment.json`` (the settings and the plan), ``models/<pe>/``
(one training run each), ``eval/<pe>/`` (one evaluation run each), ``report.md``,
``summary.json`` and PNG plots. Run the same command again to resume an interrupted experiment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ropelab.errors import RopelabError
from ropelab.model.checkpoint import atomic_write_text

DEFAULT_PES = ("rope", "hope", "nope", "alibi", "kerple-log", "fire")
ABLATIONS = ("hope-ab1", "hope-ab2", "hope-ab3")
DEFAULT_TASKS = ("ppl", "copy", "fewshot", "passkey")
DEFAULT_LENGTHS = ("0.5x", "1x", "2x", "4x")
#: the number of largest stdlib files held out of training (the evaluation tasks read from them)
HOLDOUT_FILES = 160
#: at most this many samples per cell by default: with 50, ppl reads stdlib files up to about
#: the 150th (sample i starts 3 i files in), copy the first ~40, fewshot ~13 (measured), so all
#: of the evaluation's text lies in the held-out files
MAX_SAMPLES = 50
#: the paper's row order in Tables 1-2 (anything else follows)
PAPER_ORDER = ("alibi", "kerple-log", "kerple-power", "fire", "nope", "rope", "hope", *ABLATIONS)


ANALYSIS_DIR = "analysis"


def _log(message: str) -> None:
    print(f"ropelab: {message}", file=sys.stderr, flush=True)


@dataclass
class ExperimentConfig:
    pes: list[str] = field(default_factory=lambda: list(DEFAULT_PES))
    budget_minutes: float = 60.0
    model_config: str = "hope-cpu"
    train_len: int = 256
    data: list[str] = field(default_factory=lambda: ["stdlib"])
    holdout_eval: bool = True  # hold the stdlib files the evaluation reads out of training
    tokenizer: str = "bpe-4k"
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    lengths: list[str] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    samples: int | None = None  # per task x length x method; default: sized from the budget
    scale_factor: float | None = None  # +pi / +yarn factor; default: longest length / train length
    train_fraction: float = 0.75
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    window: bool = False  # also the truncated-context reference row of every model
    steps: int | None = None  # fix the steps instead of calibrating them from the budget

    def validate(self) -> None:
        from ropelab.eval import get_task
        from ropelab.eval.runner import parse_length
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
        if not self.budget_minutes > 0:
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
        if self.scale_factor is not None and not self.scale_factor >= 1:
            raise RopelabError(f"scale factor must be >= 1, got {self.scale_factor}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def factor(self) -> float:
        from ropelab.eval.runner import parse_length

        if self.scale_factor is not None:
            return self.scale_factor
        return max(1.0, max(parse_length(x, self.train_len) for x in self.lengths) / self.train_len)

    def task_lengths(self) -> dict[str, list[str]]:
        """Per task, the lengths it can be built at (``ppl`` needs > 256 tokens, ``fewshot`` 256)."""
        from ropelab.eval import get_task
        from ropelab.eval.runner import parse_length

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


def run_dir_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


def eval_holdout(count: int = HOLDOUT_FILES) -> list[str]:
    """The largest non-test stdlib files, in the evaluation corpus' order (what ppl, passkey, copy
    and fewshot read first)."""
    from ropelab.eval.corpus import stdlib_python_files

    return [str(p) for p in stdlib_python_files()[:count]]


def train_config(config: ExperimentConfig, pe: str, steps: int):
    from ropelab.train.config import TrainConfig

    return TrainConfig(
        pe=pe,
        model_config=config.model_config,
        train_len=config.train_len,
        data=list(config.data),
        holdout=eval_holdout() if config.holdout_eval and config.data == ["stdlib"] else [],
        tokenizer=config.tokenizer,
        seed=config.seed,
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
    from ropelab.data import ChunkSampler
    from ropelab.eval.runner import parse_length
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
        for task, lengths in task_lengths.items():
            if task == "ppl":  # one pass of the longest length serves all of a sample's lengths
                per_sample += forward[max(lengths)]
            elif task == "fewshot":  # prefill + up to 8 cached decoding steps
                per_sample += sum(forward[n] * 1.5 for n in lengths)
            else:
                per_sample += sum(forward[n] for n in lengths)
        rows = len(config.methods(pe)) + (1 if config.window else 0)
        eval_seconds[pe] = per_sample * rows * 1.3  # tokenization, scoring, records
    budget = config.budget_minutes * 60 - elapsed - (time.perf_counter() - start)
    if budget <= 0:
        raise RopelabError(f"a {config.budget_minutes:g}-minute budget is used up by calibration; give more time")
    train_budget, eval_budget = budget * config.train_fraction, budget * (1 - config.train_fraction)
    overhead = 1.08  # validation loss, logging, checkpoints
    steps = config.steps or max(1, int(train_budget / (overhead * sum(step_seconds.values()))))
    # every evaluation run builds its samples again (ppl tokenizes whole stdlib files): time one
    build_start = time.perf_counter()
    buildable_lengths(config, data.tokenizer, 1)
    build_per_sample = time.perf_counter() - build_start
    per_sample = {pe: seconds + build_per_sample for pe, seconds in eval_seconds.items()}
    samples = config.samples or max(1, min(MAX_SAMPLES, int(eval_budget / sum(per_sample.values()))))
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
    from ropelab.eval import get_task
    from ropelab.eval.runner import parse_length

    usable, dropped = {}, {}
    for name in config.tasks:
        task = get_task(name)
        for label in config.lengths:
            # only few-shot prompts differ in size from sample to sample; one sample tells for the rest
            count = samples if name == "fewshot" else 1
            try:
                task.build(tokenizer, parse_length(label, config.train_len), count, config.seed, config.train_len)
            except RopelabError as error:
                dropped.setdefault(name, {})[label] = str(error)
                continue
            usable.setdefault(name, []).append(label)
        if name not in usable:
            raise RopelabError(f"{name}: no sample can be built at any of the lengths {', '.join(config.lengths)}")
    return usable, dropped


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
        return analyze(config, log=_log)
    except RopelabError as error:
        _log(f"analysis skipped: {error}")
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


def run_experiment(
    config: ExperimentConfig, out: str | os.PathLike, progress: bool = True, analysis: bool = True
) -> Path:
    """Train, evaluate, analyse (unless ``analysis=False``) and report; resumes when ``out``
    holds the same experiment."""
    from ropelab.eval.runner import evaluate
    from ropelab.model.pretrained import load_model
    from ropelab.train.state import latest_checkpoint
    from ropelab.train.trainer import CHECKPOINTS, describe_result, train

    start = time.perf_counter()
    config.validate()
    out = Path(out)
    record_path = out / "experiment.json"
    saved = saved_experiment(out, config.to_dict())
    if saved is not None:
        the_plan = saved["plan"]
        _log(f"resuming the experiment in {out}: {the_plan['steps']} steps per model")
    else:
        the_plan = plan(config, time.perf_counter() - start, progress)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_path, json.dumps({"config": config.to_dict(), "plan": the_plan}, indent=2))
        _log(
            f"plan: {len(config.pes)} models x {the_plan['steps']} steps ({the_plan['tokens_per_model']:,} tokens each), "
            f"{the_plan['samples']} samples per evaluation cell"
        )
    steps, samples = the_plan["steps"], the_plan["samples"]
    results = {}
    for pe in config.pes:
        run = out / "models" / run_dir_name(pe)
        limit = 2.0 * the_plan["expected_train_seconds"][pe] + 30
        result = train(train_config(config, pe, steps), run, progress=progress, max_seconds=limit)
        _log(f"{pe}: {describe_result(result)}")
        results[pe] = {"status": result.status, "step": result.step, "seconds": result.seconds}
    for pe in config.pes:
        checkpoint = latest_checkpoint(out / "models" / run_dir_name(pe) / CHECKPOINTS)
        if checkpoint is None:
            raise RopelabError(f"{pe}: training left no checkpoint")
        model, tokenizer = load_model(checkpoint)
        evaluate(
            model,
            tokenizer,
            pe,
            config.methods(pe),
            list(the_plan["task_lengths"]),
            config.lengths,
            samples,
            out / "eval" / run_dir_name(pe),
            seed=config.seed,
            include_window=config.window,
            progress=progress,
            task_lengths=the_plan["task_lengths"],
        )
    if analysis:
        analyze_experiment(out)
    from ropelab.train.report import write_experiment_report

    report = write_experiment_report(out)
    _log(f"experiment done in {(time.perf_counter() - start) / 60:.1f} min (this session); report: {report}")
    return report


__all__ = [
    "ABLATIONS",
    "DEFAULT_PES",
    "ExperimentConfig",
    "analyze_experiment",
    "eval_holdout",
    "plan",
    "run_experiment",
]
