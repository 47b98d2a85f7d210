"""Model configuration and the named-config registry (``ModelConfig.from_name("tiny")``).

Every source of a model config -- a ropelab checkpoint's ``config.json``, a Hugging Face
``config.json`` (:mod:`ropelab.pretrained.hf_dir`), a GGUF file's metadata
(:mod:`ropelab.pretrained.gguf`), the named configs and ``ropelab train`` -- ends in
:class:`ModelConfig`, whose :meth:`ModelConfig.validate` is the one place its fields are checked:
types, ranges (:data:`LIMITS`) and the memory the parameters need
(:meth:`ModelConfig.parameter_count` in float32 against the machine's RAM). A corrupt or hostile
config is one :class:`RopelabError` before anything is allocated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ropelab.core.checks import is_finite, is_int
from ropelab.core.errors import RopelabError
from ropelab.core.machine import physical_memory
from ropelab.pe.base import LAYOUTS

#: upper bounds of the integer fields, far above any real Llama-family model (the largest have
#: vocabularies of ~256K, widths of 16K, 126 layers, head_dim 256, context windows of ~1M): a larger
#: value is a corrupt or hostile config, refused before anything is allocated -- a config of a few
#: bytes with a million layers would otherwise build modules until memory runs out
LIMITS: dict[str, int] = {
    "vocab_size": 1 << 22,
    "dim": 1 << 16,
    "n_layers": 1024,
    "n_heads": 1024,
    "n_kv_heads": 1024,
    "head_dim": 4096,
    "hidden_dim": 1 << 20,
    "train_len": 1 << 24,
}
_INTS = tuple(LIMITS)
_OPTIONAL = ("n_kv_heads", "head_dim", "hidden_dim")  # None: derived from the others
_BOOLS = ("qkv_bias", "qk_norm", "tie_embeddings")
_STRINGS = ("rope_layout", "pe", "name")
#: bytes of one parameter as ropelab builds a model: float32, whatever dtype it is cast to later
PARAMETER_BYTES = 4


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message quotes a bad value, never megabytes of it."""
    text = (
        repr(value) if not is_int(value) or value.bit_length() < 4000 else f"<an integer of {value.bit_length()} bits>"
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class ModelConfig:
    """A Llama-family decoder: RMSNorm, SwiGLU, grouped-query attention.

    ``train_len`` is the length the weights were trained at; position methods read it (HoPE's
    cutoff, YaRN's ramp), it is never taken from the current input. ``pe`` is the position
    method spec (see :mod:`ropelab.pe`). ``rope_layout`` says where a frequency's channel pair
    lives in q/k: ``half`` (HF) or ``interleaved`` (Meta/GGUF).

    Construction validates every field (:meth:`validate`); a bad value is one
    :class:`RopelabError` naming the field.
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
    qk_norm: bool = False  # RMSNorm over each head's query and key before the rotation (Qwen3, OLMo-2 style)
    tie_embeddings: bool = True
    rope_layout: str = "half"
    pe: str = "rope"
    init_std: float = 0.02
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        self._check_types()  # before the defaults below compute with the values
        for key in ("norm_eps", "rope_base", "init_std"):  # JSON's 1 for 1.0
            setattr(self, key, float(getattr(self, key)))
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

    def _check_types(self) -> None:
        for key in _INTS:
            value = getattr(self, key)
            if value is None and key in _OPTIONAL:
                continue
            if not is_int(value) or value <= 0:
                raise RopelabError(f"model config: {key} must be a positive integer, got {shown(value)}")
            if value > LIMITS[key]:
                raise RopelabError(f"model config: {key}={shown(value)} is out of range (1 to {LIMITS[key]})")
        for key in _BOOLS:
            value = getattr(self, key)
            if not isinstance(value, bool):
                raise RopelabError(f"model config: {key} must be true or false, got {shown(value)}")
        for key in _STRINGS:
            value = getattr(self, key)
            if not isinstance(value, str) or (key != "name" and not value):
                raise RopelabError(f"model config: {key} must be a non-empty string, got {shown(value)}")
        if not is_finite(self.norm_eps) or not 0 < self.norm_eps < 1:
            raise RopelabError(f"model config: norm_eps must be a number in (0, 1), got {shown(self.norm_eps)}")
        if not is_finite(self.rope_base) or not self.rope_base > 1:
            raise RopelabError(f"model config: rope_base must be a finite number > 1, got {shown(self.rope_base)}")
        if not is_finite(self.init_std) or self.init_std < 0:
            raise RopelabError(f"model config: init_std must be a finite number >= 0, got {shown(self.init_std)}")

    def validate(self) -> None:
        """Check every field (types, :data:`LIMITS`, the head arithmetic) and that the parameters
        fit in this machine's memory; one :class:`RopelabError` naming the problem otherwise."""
        self._check_types()
        for key in _OPTIONAL:
            if getattr(self, key) is None:
                raise RopelabError(f"model config: {key} must be a positive integer, got None")
        if self.n_heads % self.n_kv_heads:
            raise RopelabError(
                f"model config: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise RopelabError(f"model config: head_dim must be even for rotary encodings, got {self.head_dim}")
        if self.rope_layout not in LAYOUTS:
            raise RopelabError(
                f"model config: rope_layout must be one of {', '.join(LAYOUTS)}, got {shown(self.rope_layout)}"
            )
        self.check_memory()

    def parameter_count(self) -> int:
        """The number of weights of the model (without a position method's own, e.g. a learned table)."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        attention = self.dim * (q + 2 * kv) + q * self.dim + (q + 2 * kv if self.qkv_bias else 0)
        attention += 2 * self.head_dim if self.qk_norm else 0
        layer = attention + 3 * self.dim * self.hidden_dim + 2 * self.dim
        embeddings = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return self.n_layers * layer + embeddings + self.dim

    def check_memory(self, memory: int | None = None) -> None:
        """Refuse a config whose float32 parameters alone exceed ``memory`` bytes (default: this
        machine's RAM, :func:`physical_memory`): building it could only end in the out-of-memory killer."""
        memory = physical_memory() if memory is None else memory
        if memory is None:
            return
        needed = self.parameter_count() * PARAMETER_BYTES
        if needed > memory:
            raise RopelabError(
                f"model config: {self.parameter_count():,} parameters need {needed / 2**30:.1f} GiB in float32, "
                f"more than this machine's memory ({memory / 2**30:.1f} GiB, the limit); "
                "the config is corrupt or the model too large for this machine"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if not isinstance(data, dict):
            raise RopelabError(f"model config: expected a JSON object, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in set(data) - fields)
        if unknown:
            raise RopelabError(
                f"model config: unknown keys {', '.join(unknown)[:200]}; known keys: {', '.join(sorted(fields))}"
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
