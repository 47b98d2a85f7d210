"""The HiRoPE ShortLLM study's settings and method lists (what :mod:`~ropelab.experiments.hirope.run`
measures and :mod:`~ropelab.experiments.hirope.report` reads)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ropelab.core.checks import bound, check_fields, is_int
from ropelab.core.errors import RopelabError
from ropelab.eval.documents import jdk_sources
from ropelab.model.config import CONFIGS
from ropelab.pe import canonical_spec

#: JDK packages the model trains on (java.base, recursively), minus every package of the project corpus
JDK_PACKAGES = ("util", "lang", "io", "time", "text", "math", "net", "nio")
BLOCK = 64  # tokens per stored loss block (for the loss-by-position plot), at most half the train length


def block_size(train_len: int) -> int:
    return max(1, min(BLOCK, train_len // 2))


#: a declared range of the study's fields (:func:`ropelab.core.checks.check_fields`)
POSITIVE = bound(int, "a positive integer", low=1)


@dataclass(kw_only=True)
class ShortConfig:
    model_config: str = "short-code"
    train_len: int = field(default=128, metadata=bound(int, "an integer >= 8", low=8))
    length: int = field(default=16384, metadata=POSITIVE)  # evaluation document length (L^2 by default)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # training seeds (same data, same split)
    #: training steps per seed (fixed, so every seed gets the same training)
    steps: int = field(default=2000, metadata=POSITIVE)
    #: development projects per language (the settings are chosen on them)
    dev_documents: int = field(default=5, metadata=POSITIVE)
    documents: int = field(default=14, metadata=POSITIVE)  # test projects per language (the verdicts)
    languages: list[str] = field(default_factory=lambda: ["python", "java"])
    tokenizer: str = "bpe-8k"
    batch_size: int = field(default=32, metadata=POSITIVE)
    lr: float = field(default=1e-3, metadata=bound(float, "positive", low=0, open_low=True))
    methods: list[str] | None = None  # default: :func:`baseline_methods`, the chosen HiRoPE setting, ablations
    data: list[str] | None = None  # training sources; default: the stdlib and the JDK's java.base packages

    def validate(self) -> None:
        if self.model_config not in CONFIGS:
            raise RopelabError(f"unknown model config {self.model_config!r}; known configs: {', '.join(CONFIGS)}")
        check_fields(self, RopelabError, lambda name: name.replace("_", " "))
        if self.length <= self.train_len:
            raise RopelabError(f"need train length < length, got {self.train_len} and {self.length}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(not is_int(s) or s < 0 for s in self.seeds):
            raise RopelabError(f"seeds must be distinct integers >= 0, got {self.seeds!r}")
        for language in self.languages:
            if language not in ("python", "java"):
                raise RopelabError(f"language {language!r}: the study reads python and java")
        if "java" in self.languages and jdk_sources() is None:  # before training, not after it
            raise RopelabError(
                "the Java documents need the JDK sources (apt install openjdk-17-source); or --languages python"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def baseline_methods(train_len: int, length: int) -> list[str]:
    """The training-free alternatives HiRoPE is compared with, and its library default (``hirope``).
    Windows scale with ``L`` as the paper's 512 does with 2048."""
    window = max(1, train_len // 4)
    factor = max(1, length // train_len)
    group = math.ceil((length - window) / max(1, train_len - window))
    return [
        "rope",
        f"ntk:factor={factor}",
        f"yarn:factor={factor}",
        f"rerope:window={train_len // 2}",
        f"rerope:window={train_len // 2},logn=true",
        f"self-extend:group={group},window={window}",
        "hirope",
    ]


#: one design choice of HiRoPE changed at a time, from the chosen setting (parameter -> values)
ABLATIONS = {
    "shift": ("window", "none", "segments"),
    "split": ("0.25", "0.5", "auto"),
    "token_index": ("global", "segment"),
    "granularity": ("function", "class", "chunk"),
}


def ablations(chosen: str) -> list[tuple[str, str, str]]:
    """``(parameter, value, spec)`` for every ablation of ``chosen``: the chosen setting with one
    parameter set to each other value of :data:`ABLATIONS` (the chosen setting itself excluded)."""
    from ropelab.pe import parse_spec

    part = parse_spec(chosen)[0]
    base = {k: v for k, v in part.params.items()}
    out = []
    for name, values in ABLATIONS.items():
        for value in values:
            spec = canonical_spec("hirope:" + ",".join(f"{k}={value if k == name else v}" for k, v in base.items()))
            if spec != canonical_spec(chosen):
                out.append((name, value, spec))
    return out


def resolved_methods(config: ShortConfig, chosen: list[str]) -> list[str]:
    """The test methods: ``config.methods`` when given, else the baselines, the chosen HiRoPE
    setting(s) and the ablations of the first, each once, canonical."""
    if config.methods is not None:
        specs = list(config.methods)
    else:
        specs = [*baseline_methods(config.train_len, config.length), *chosen]
        specs += [spec for _, _, spec in ablations(chosen[0])] if chosen else []
    return list(dict.fromkeys(canonical_spec(s) for s in specs))
