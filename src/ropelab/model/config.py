"""Model configuration and the named-config registry (``ModelConfig.from_name("tiny")``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ropelab.core.errors import RopelabError
from ropelab.pe.base import LAYOUTS


@dataclass
class ModelConfig:
    """A Llama-family decoder: RMSNorm, SwiGLU, grouped-query attention.

    ``train_len`` is the length the weights were trained at; position methods read it (HoPE's
    cutoff, YaRN's ramp), it is never taken from the current input. ``pe`` is the position
    method spec (see :mod:`ropelab.pe`). ``rope_layout`` says where a frequency's channel pair
    lives in q/k: ``half`` (HF) or ``interleaved`` (Meta/GGUF).
    """

    vocab_size: int = 8192
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int | None = None
    head_dim: int | None = None
    hidden_dim: int | None = None
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    train_len: int = 512
    qkv_bias: bool = False
    tie_embeddings: bool = True
    rope_layout: str = "half"
    pe: str = "rope"
    init_std: float = 0.02
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise RopelabError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}), or give head_dim")
            self.head_dim = self.dim // self.n_heads
        if self.hidden_dim is None:  # Llama's rule: 2/3 of 4*dim, rounded up to a multiple of 64
            hidden = int(2 * (4 * self.dim) / 3)
            self.hidden_dim = 64 * ((hidden + 63) // 64)
        self.validate()

    def validate(self) -> None:
        positive = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim", "train_len")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise RopelabError(f"model config: {key} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise RopelabError(
                f"model config: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise RopelabError(f"model config: head_dim must be even for rotary encodings, got {self.head_dim}")
        if self.rope_layout not in LAYOUTS:
            raise RopelabError(
                f"model config: rope_layout must be one of {', '.join(LAYOUTS)}, got {self.rope_layout!r}"
            )
        if not self.rope_base > 1:
            raise RopelabError(f"model config: rope_base must be > 1, got {self.rope_base!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise RopelabError(
                f"model config: unknown keys {', '.join(unknown)}; known keys: {', '.join(sorted(fields))}"
            )
        return cls(**data)

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        if name not in CONFIGS:
            raise RopelabError(f"unknown model config {name!r}; known configs: {', '.join(CONFIGS)}")
        data = {**CONFIGS[name], "name": name, **{k: v for k, v in overrides.items() if v is not None}}
        return cls.from_dict(data)


#: Named configurations. ``tiny`` trains in seconds (tests); ``small`` (~5M parameters with an 8K
#: vocabulary) is the CPU demo size; ``hope-cpu`` (~1.4M parameters, head_dim 64 as in the paper,
#: 4K vocabulary) is what ``ropelab experiment hope`` trains; ``short-code`` (~5M, train length 128,
#: RoPE base 256) is what ``ropelab experiment hirope`` trains; ``hope-125m`` is the HoPE paper's
#: 125M Llama (Section 3.1).
CONFIGS: dict[str, dict] = {
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, train_len=256),
    "small": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, train_len=512),
    "medium": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, train_len=512),
    "hope-cpu": dict(dim=128, n_layers=4, n_heads=2, n_kv_heads=2, train_len=256, vocab_size=4096),
    # ``ropelab experiment hirope`` (the HiRoPE paper's ShortLLM study): train length 128, head_dim 32
    # and RoPE base 256, so that HiRoPE's token level (split 0.5) reads only frequencies with a
    # period below 128 (reliable split log_256(128 / 2pi) = 0.54; see ropelab.experiments.hirope.run)
    "short-code": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, train_len=128, rope_base=256.0),
    "hope-125m": dict(
        dim=768, n_layers=12, n_heads=12, n_kv_heads=12, train_len=512, vocab_size=32000, tie_embeddings=False
    ),
}
