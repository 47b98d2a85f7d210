"""What a training run is: every setting, validated, written to ``OUT/train_config.json``.

Defaults follow the HoPE paper's Appendix A where it says something (AdamW, betas 0.9/0.999,
learning rate 3e-4, 2,000 warm-up steps, gradient clipping 1.0, no dropout, bf16 on GPUs) and are
documented choices where it does not:

* warm-up: the paper's 2,000 steps of 50,000 (4%); a shorter run warms up for 4% of its steps
  (at least 1), a longer one for 2,000;
* schedule: cosine decay from the peak to ``min_lr_ratio`` (0.1) of it at the last step, or
  ``constant`` after the warm-up;
* weight decay 0.1 on matrices (embeddings included), none on norms, biases and scalars;
* synthetic data: none by default; ``synthetic`` replaces that share of the training sequences
  with record sequences (:mod:`ropelab.data.synthetic`), which make in-context copying learnable
  in minutes;
* batch: 16 sequences of ``train_len`` tokens per optimizer step (the paper: 512 x 512; a CPU
  cannot), split into micro-batches (gradient accumulation) and over processes (DDP, or FSDP2
  with ``parallel="fsdp"``: the same update, parameters and optimizer state sharded).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import torch

from ropelab.core.checks import bound, check_fields
from ropelab.core.errors import RopelabError
from ropelab.model.config import CONFIGS
from ropelab.model.device import DEVICES  # checked by name here; on the machine when the run starts
from ropelab.pe import canonical_spec

SCHEDULES = ("cosine", "constant")

#: how several processes under torchrun share the work: DistributedDataParallel (every process
#: holds the whole model) or FSDP2 ``fully_shard`` (parameters, gradients and AdamW state sharded)
PARALLEL = ("ddp", "fsdp")
PAPER_WARMUP = 2000
PAPER_STEPS = 50000

#: settings that do not change the weights a run produces: they may differ when resuming
RUNTIME_FIELDS = ("micro_batch_size", "keep", "log_every", "threads", "parallel")


#: the declared ranges of TrainConfig's fields (:func:`ropelab.core.checks.check_fields`)
POSITIVE = bound(int, "a positive integer", low=1)
POSITIVE_OR_NONE = bound(int, "a positive integer", low=1, optional=True)
NON_NEGATIVE = bound(float, ">= 0", low=0)
BETA = bound(float, "in [0, 1)", low=0, high=1, open_high=True)
#: numpy's and torch's generators take 0 .. 2**63 - 1
SEED = bound(int, "an integer from 0 to 2**63 - 1", low=0, high=2**63 - 1)
SEED_OR_NONE = bound(int, "an integer from 0 to 2**63 - 1", low=0, high=2**63 - 1, optional=True)


@dataclass
class TrainConfig:
    pe: str = "rope"
    model_config: str = "tiny"
    train_len: int | None = field(default=None, metadata=POSITIVE_OR_NONE)  # default: the named config's
    data: list[str] = field(default_factory=lambda: ["stdlib"])
    holdout: list[str] = field(default_factory=list)  # files always in validation
    tokenizer: str = "bpe-8k"
    val_fraction: float = field(default=0.05, metadata=bound(float, "in [0, 1)", low=0, high=1, open_high=True))
    #: share of training sequences replaced by record sequences (data/synthetic.py)
    synthetic: float = field(default=0.0, metadata=bound(float, "a share in [0, 1]", low=0, high=1))
    #: probability that a record repeats an earlier one
    synthetic_repeat: float = field(
        default=0.5, metadata=bound(float, "a probability in [0, 1)", low=0, high=1, open_high=True)
    )
    seed: int = field(default=0, metadata=SEED)
    #: seed of the train/val split by file (default: seed)
    split_seed: int | None = field(default=None, metadata=SEED_OR_NONE)
    steps: int | None = field(default=None, metadata=POSITIVE_OR_NONE)
    #: a time budget instead of steps (steps are then calibrated)
    minutes: float | None = field(default=None, metadata=bound(float, "positive", low=0, open_low=True, optional=True))
    batch_size: int = field(default=16, metadata=POSITIVE)  # sequences per optimizer step, over all processes
    #: sequences per forward (default: batch_size / processes)
    micro_batch_size: int | None = field(default=None, metadata=POSITIVE_OR_NONE)
    lr: float = field(default=3e-4, metadata=bound(float, "positive", low=0, open_low=True))
    schedule: str = field(default="cosine", metadata=bound(str, f"one of {', '.join(SCHEDULES)}", choices=SCHEDULES))
    min_lr_ratio: float = field(default=0.1, metadata=bound(float, "in [0, 1]", low=0, high=1))
    #: default: 4% of the steps, at most 2000 (the paper's ratio)
    warmup: int | None = field(default=None, metadata=POSITIVE_OR_NONE)
    beta1: float = field(default=0.9, metadata=BETA)
    beta2: float = field(default=0.999, metadata=BETA)
    eps: float = field(default=1e-8, metadata=bound(float, "> 0", low=0, open_low=True))
    weight_decay: float = field(default=0.1, metadata=NON_NEGATIVE)
    grad_clip: float = field(default=1.0, metadata=NON_NEGATIVE)  # 0: no clipping
    eval_every: int | None = field(default=None, metadata=POSITIVE_OR_NONE)  # default: with every checkpoint
    val_sequences: int = field(default=64, metadata=POSITIVE)  # validation loss over this many fixed sequences
    log_every: int = field(default=10, metadata=POSITIVE)
    #: default: steps // 10 (and always the last step)
    checkpoint_every: int | None = field(default=None, metadata=POSITIVE_OR_NONE)
    #: keep the newest N checkpoints (0: all -- analysis reads the whole series)
    keep: int = field(default=0, metadata=bound(int, ">= 0 (0 keeps every checkpoint)", low=0))
    device: str = "cpu"  # cpu, cuda, cuda:N, mps or auto (ropelab.model.device.resolve_device)
    threads: int | None = field(default=None, metadata=POSITIVE_OR_NONE)
    #: under torchrun: "ddp" or "fsdp" (the same update; checkpoints are the same files)
    parallel: str = field(default="ddp", metadata=bound(str, f"one of {', '.join(PARALLEL)}", choices=PARALLEL))

    def __post_init__(self) -> None:
        # the spec in its canonical form from the start (a bad one is one SpecError here), so
        # validate() only checks and two configs of the same run compare equal
        self.pe = canonical_spec(self.pe)

    def validate(self) -> None:
        """Check every setting (one :class:`RopelabError` naming the first bad one); changes nothing."""
        if self.model_config not in CONFIGS:
            raise RopelabError(f"unknown model config {self.model_config!r}; known configs: {', '.join(CONFIGS)}")
        if (self.steps is None) == (self.minutes is None):
            raise RopelabError("give exactly one of steps (--steps N) or a time budget (--minutes M)")
        check_fields(self, RopelabError, lambda name: name.replace("_", "-"))
        if self.warmup is not None and self.steps is not None and self.warmup > self.steps:
            raise RopelabError(f"warmup ({self.warmup}) is longer than the run ({self.steps} steps)")
        if not isinstance(self.device, str) or not re.fullmatch(
            r"cpu|cuda(:\d+)?|mps|auto", self.device.strip().lower()
        ):
            raise RopelabError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not self.data:
            raise RopelabError("no data sources given")

    # -- derived settings ------------------------------------------------------------------------
    def resolved_warmup(self, steps: int) -> int:
        if self.warmup is not None:
            return min(self.warmup, steps)
        return max(1, min(PAPER_WARMUP, round(steps * PAPER_WARMUP / PAPER_STEPS)))

    def resolved_checkpoint_every(self, steps: int) -> int:
        return self.checkpoint_every or max(1, math.ceil(steps / 10))

    def resolved_eval_every(self, steps: int) -> int:
        return self.eval_every or self.resolved_checkpoint_every(steps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RopelabError(f"train config: unknown keys {', '.join(unknown)}")
        return cls(**data)

    def semantic(self) -> dict:
        """The settings that decide the weights (what must match to resume)."""
        settings = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        if settings["split_seed"] is None:  # the default split seed is the seed: the same run
            settings["split_seed"] = self.seed
        return settings


def learning_rate(step: int, steps: int, config: TrainConfig) -> float:
    """LR for optimizer step ``step`` (0-based): linear warm-up to ``lr``, then cosine to
    ``min_lr_ratio * lr`` at the last step (or constant)."""
    warmup = config.resolved_warmup(steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant" or steps <= warmup:
        return config.lr
    progress = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    seen, decay, no_decay = set(), [], []
    for _, param in model.named_parameters():
        if id(param) in seen or not param.requires_grad:
            continue
        seen.add(id(param))
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
