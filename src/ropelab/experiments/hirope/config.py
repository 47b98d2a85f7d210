"""The HiRoPE ShortLLM study's settings and method list (what :mod:`~ropelab.experiments.hirope.run`
measures and :mod:`~ropelab.experiments.hirope.report` reads)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ropelab.core.errors import RopelabError
from ropelab.eval.documents import jdk_sources
from ropelab.model.config import CONFIGS
from ropelab.pe import canonical_spec

#: JDK packages the model trains on (held-out evaluation files excluded)
JDK_PACKAGES = ("util", "lang", "io", "time", "text", "math", "net", "nio")
#: the largest evaluation files held out of training, per language
HOLDOUT = 24
BLOCK = 64  # tokens per loss block (the unit of the standard errors), at most half the train length


def block_size(train_len: int) -> int:
    return max(1, min(BLOCK, train_len // 2))


@dataclass(kw_only=True)
class ShortConfig:
    budget_minutes: float = 60.0
    train_fraction: float = 0.6  # of the budget, for training; the rest evaluates
    model_config: str = "short-code"
    train_len: int = 128
    length: int = 16384  # evaluation document length (L^2 by default)
    documents: int = 3  # per language
    languages: list[str] = field(default_factory=lambda: ["python", "java"])
    tokenizer: str = "bpe-8k"
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    steps: int | None = None  # fix the training steps instead of the budget
    methods: list[str] | None = None  # default: :func:`default_methods`
    data: list[str] | None = None  # training sources; default: the stdlib and the JDK's java.base packages

    def validate(self) -> None:

        if self.model_config not in CONFIGS:
            raise RopelabError(f"unknown model config {self.model_config!r}; known configs: {', '.join(CONFIGS)}")
        if not self.budget_minutes > 0 or not 0 < self.train_fraction < 1:
            raise RopelabError("the budget must be positive and the train fraction in (0, 1)")
        if self.train_len < 8 or self.length <= self.train_len:
            raise RopelabError(f"need 8 <= train length < length, got {self.train_len} and {self.length}")
        if self.documents < 1 or self.batch_size < 1 or not self.lr > 0:
            raise RopelabError("documents, batch size and lr must be positive")
        for language in self.languages:
            if language not in ("python", "java"):
                raise RopelabError(f"language {language!r}: the study reads python and java")

        if "java" in self.languages and jdk_sources() is None:  # before training, not after it
            raise RopelabError(
                "the Java documents need the JDK sources (apt install openjdk-17-source); or --languages python"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_methods(train_len: int, length: int) -> list[tuple[str, str, bool]]:
    """(label, spec, reads code structure) of every method of the study."""
    window = max(1, train_len // 4)
    factor = max(1, length // train_len)
    group = math.ceil((length - window) / max(1, train_len - window))
    return [
        ("rope", "rope", False),
        (f"ntk:factor={factor}", f"ntk:factor={factor}", False),
        (f"yarn:factor={factor}", f"yarn:factor={factor}", False),
        (f"rerope:window={train_len // 2}", f"rerope:window={train_len // 2}", False),
        (f"rerope:window={train_len // 2},logn=true", f"rerope:window={train_len // 2},logn=true", False),
        (f"self-extend:group={group},window={window}", f"self-extend:group={group},window={window}", False),
        (f"hirope:window={window}", f"hirope:window={window}", True),
        (f"hirope:window={window},split=auto", f"hirope:window={window},split=auto", True),
        (f"hirope:window={window},token_index=segment", f"hirope:window={window},token_index=segment", True),
        (f"hirope:window={window},chunk={train_len} (fixed segments)", f"hirope:window={window},chunk={train_len}", False),
    ]  # fmt: skip


def _methods(config: ShortConfig) -> list[tuple[str, str, bool]]:
    if config.methods is None:
        return default_methods(config.train_len, config.length)

    return [(spec, canonical_spec(spec), True) for spec in config.methods]
