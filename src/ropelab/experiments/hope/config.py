"""The HoPE experiment's settings and its list of models (what :mod:`~ropelab.experiments.hope.run`
trains and :mod:`~ropelab.experiments.hope.report` reads)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ropelab.core.checks import bound, check_fields, int_between
from ropelab.core.errors import RopelabError
from ropelab.core.lengths import parse_length
from ropelab.eval import get_task
from ropelab.model.config import CONFIGS
from ropelab.pe import canonical_spec, format_value, parse_spec

DEFAULT_PES = ("rope", "hope", "nope", "alibi", "kerple-log", "fire")
ABLATIONS = ("hope-ab1", "hope-ab2", "hope-ab3")
DEFAULT_TASKS = ("ppl", "copy", "fewshot", "passkey")
DEFAULT_LENGTHS = ("0.5x", "1x", "2x", "4x")
#: the encodings that get the extra training seeds of ``--seeds`` (the headline pair) and of
#: ``--other-seeds`` (HoPE's primary alternatives that are trained, not applied at inference)
SEED_PES = ("rope", "hope")
OTHER_SEED_PES = ("kerple-log", "fire")
#: the number of largest stdlib files held out of training (the evaluation tasks read from them)
HOLDOUT_FILES = 160
#: at most this many samples per cell when they are sized from a budget (the ppl / passkey
#: documents of this many samples are held out of training, see :func:`eval_holdout`)
MAX_SAMPLES = 200
#: the recipe's samples per evaluation cell (the accuracy tasks need about 200 for a +/- 3-point
#: standard error) and steps per model (chosen by measurement, see docs/training.md)
RECIPE_SAMPLES = 200
RECIPE_STEPS = 5000
#: the paper's row order in Tables 1-2 (anything else follows)
PAPER_ORDER = ("alibi", "kerple-log", "kerple-power", "fire", "nope", "rope", "hope", *ABLATIONS)


#: where the analyses of every model go, inside the experiment directory
ANALYSIS_DIR = "analysis"
#: copy accuracy over training: the file in each model's run directory and its samples per checkpoint
CURVE_FILE = "copy_curve.json"
CURVE_SAMPLES = 100


#: the declared ranges of the experiment's fields (:func:`ropelab.core.checks.check_fields`)
POSITIVE = bound(int, "a positive integer", low=1)
POSITIVE_OR_NONE = bound(int, "a positive integer", low=1, optional=True)


@dataclass(kw_only=True)
class ExperimentConfig:
    pes: list[str] = field(default_factory=lambda: list(DEFAULT_PES))
    #: None: the recipe's steps and samples; else sized to fit
    budget_minutes: float | None = field(
        default=None, metadata=bound(float, "positive", low=0, open_low=True, optional=True)
    )
    model_config: str = "hope-cpu"
    train_len: int = field(default=256, metadata=POSITIVE)
    data: list[str] = field(default_factory=lambda: ["stdlib"])
    holdout_eval: bool = True  # hold the stdlib files the evaluation reads out of training
    tokenizer: str = "bpe-4k"
    synthetic: float = 0.75  # share of training sequences that are record sequences (ropelab.data.synthetic)
    synthetic_repeat: float = 0.6
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    lengths: list[str] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    #: per task x length x method; default: RECIPE_SAMPLES (or sized from the budget)
    samples: int | None = field(default=None, metadata=POSITIVE_OR_NONE)
    #: +yarn factor; default: longest length / train length (+pi: per length)
    scale_factor: float | None = field(default=None, metadata=bound(float, ">= 1", low=1, optional=True))
    train_fraction: float = field(
        default=0.75, metadata=bound(float, "in (0, 1)", low=0, high=1, open_low=True, open_high=True)
    )
    batch_size: int = field(default=8, metadata=POSITIVE)
    lr: float = field(default=3e-3, metadata=bound(float, "positive", low=0, open_low=True))
    seed: int = 0
    window: bool = False  # also the truncated-context reference row of every model
    steps: int | None = field(default=None, metadata=POSITIVE_OR_NONE)  # default: RECIPE_STEPS (or from the budget)
    #: models per encoding of ``seed_pes``, trained with seeds seed, seed + 1, ...
    seeds: int = field(default=5, metadata=POSITIVE)
    seed_pes: list[str] = field(default_factory=lambda: list(SEED_PES))
    other_seeds: int = field(default=3, metadata=POSITIVE)  # models per encoding of ``other_seed_pes``
    tune_lr: bool = True  # each encoding's learning rate from a short sweep on development files (tuning.py)
    tune_steps: int | None = field(default=None, metadata=POSITIVE_OR_NONE)  # default: tuning.TUNE_STEPS
    other_seed_pes: list[str] = field(default_factory=lambda: list(OTHER_SEED_PES))

    def __post_init__(self) -> None:
        # specs in canonical form from the start (a bad one is one error here), so validate() only checks;
        # the alternatives get their seeds where they are trained (a run of fewer encodings drops them)
        self.pes = [canonical_spec(p) for p in self.pes]
        self.seed_pes = [canonical_spec(p) for p in self.seed_pes]
        self.other_seed_pes = [p for p in map(canonical_spec, self.other_seed_pes) if p in self.pes]

    def validate(self) -> None:
        """Check every setting (one :class:`RopelabError` naming the first bad one); changes nothing."""
        if not self.pes:
            raise RopelabError("no position encodings to compare")
        for pe in self.pes:
            if len(parse_spec(pe)) > 1:
                raise RopelabError(f"{pe!r}: train with a base encoding; +pi / +yarn are applied at inference")
        if len(set(self.pes)) != len(self.pes):
            raise RopelabError("a position encoding is listed twice")
        if self.model_config not in CONFIGS:
            raise RopelabError(f"unknown model config {self.model_config!r}; known configs: {', '.join(CONFIGS)}")
        check_fields(self, RopelabError, lambda name: name.replace("_", " "))
        for name in self.tasks:
            get_task(name)
        for length in self.lengths:
            parse_length(length, self.train_len)
        if not int_between(self.seed, 0, 2**63 - 1 - max(self.seeds, self.other_seeds)):
            raise RopelabError(f"seed must be an integer from 0 to 2**63 - 1 - seeds, got {self.seed!r}")
        missing = [p for p in self.seed_pes if p not in self.pes]
        if self.seeds > 1 and missing:
            raise RopelabError(f"--seed-pes names encodings that are not trained: {', '.join(missing)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def factor(self) -> float:

        if self.scale_factor is not None:
            return self.scale_factor
        return max(1.0, max(parse_length(x, self.train_len) for x in self.lengths) / self.train_len)

    def task_lengths(self) -> dict[str, list[str]]:
        """Per task, the lengths it can be built at (``ppl`` needs > 256 tokens, ``fewshot`` 256)."""

        result = {}
        for name in self.tasks:
            task = get_task(name)
            usable = [x for x in self.lengths if parse_length(x, self.train_len) >= task.min_length]
            if not usable:
                raise RopelabError(f"{name}: none of the lengths {', '.join(self.lengths)} is long enough for it")
            result[name] = usable
        return result

    def methods(self, pe: str) -> list[str]:
        """The model's own spec, plus ``+pi`` / ``+yarn`` for a RoPE-family model: PI as users apply it,
        with factor ``max(1, n / L)`` at each input length (``pi:factor=auto``), YaRN with the
        fixed factor of the longest length (it keeps the high frequencies, so shorter inputs lose
        little)."""

        if parse_spec(pe)[0].info.kind != "rotary":
            return [pe]
        factor = format_value(float(f"{self.factor:g}"))  # 6 digits, and never "1e+06": a "+" splits a spec
        return [pe, f"{pe}+pi:factor=auto", f"{pe}+yarn:factor={factor}"]


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


def seed_counts(config: ExperimentConfig) -> dict[str, int]:
    """Models per encoding: ``seeds`` for ``seed_pes``, ``other_seeds`` for ``other_seed_pes``, else 1."""
    counts = {pe: 1 for pe in config.pes}
    counts.update({pe: config.other_seeds for pe in config.other_seed_pes if pe in counts})
    counts.update({pe: config.seeds for pe in config.seed_pes if pe in counts})
    return counts


def runs(config: ExperimentConfig) -> list[Run]:
    """Every model to train: each encoding with the base seed, then the extra seeds (seed + 1, ...)
    of the encodings that get them (:func:`seed_counts`), seed by seed."""
    counts = seed_counts(config)
    out = [Run(pe, config.seed, run_dir_name(pe)) for pe in config.pes]
    for extra in range(1, max(counts.values())):
        seed = config.seed + extra
        out += [Run(pe, seed, run_dir_name(pe, seed)) for pe in config.pes if counts[pe] > extra]
    return out
