"""Lengths as users write them: ``2x`` (times the train length), ``12k`` (x 1024), ``4096``."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal

from ropelab.core.errors import RopelabError

#: the longest input ropelab reads (2**24 tokens, the model configs' limit on a train length): a
#: longer one is a typo, refused at once rather than after tokenising a corpus
MAX_LENGTH = 1 << 24


def parse_length(text: str, train_len: int) -> int:
    """``2x`` (times the train length), ``12k`` (x1024), ``4096``; exact decimal arithmetic (no float
    rounding), at most :data:`MAX_LENGTH` tokens."""
    raw = str(text).strip().lower()
    match = re.fullmatch(r"(\d{1,12}(?:\.\d{1,12})?)\s*(x|k)?", raw)
    if not match:
        raise RopelabError(
            f"length {text!r} is not understood; write e.g. 0.5x, 2x (train length multiples), 4k or 4096"
        )
    value, unit = Decimal(match.group(1)), match.group(2)
    if unit is None and value != value.to_integral_value():
        raise RopelabError(f"length {text!r}: a token count must be a whole number")
    exact = value * train_len if unit == "x" else value * 1024 if unit == "k" else value
    tokens = int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))
    if tokens <= 0:
        raise RopelabError(f"length {text!r} must be positive")
    if tokens > MAX_LENGTH:
        raise RopelabError(f"length {text!r} is {tokens:,} tokens; ropelab reads at most {MAX_LENGTH:,} (2^24)")
    return tokens
