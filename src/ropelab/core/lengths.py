"""Lengths as users write them: ``2x`` (times the train length), ``12k`` (x 1024), ``4096``."""

from __future__ import annotations

import re

from ropelab.core.errors import RopelabError


def parse_length(text: str, train_len: int) -> int:
    """``2x`` (times the train length), ``12k`` (x1024), ``4096``."""
    raw = str(text).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(x|k)?", raw)
    if not match:
        raise RopelabError(
            f"length {text!r} is not understood; write e.g. 0.5x, 2x (train length multiples), 4k or 4096"
        )
    value, unit = float(match.group(1)), match.group(2)
    tokens = value * train_len if unit == "x" else value * 1024 if unit == "k" else value
    if unit is None and not value.is_integer():
        raise RopelabError(f"length {text!r}: a token count must be a whole number")
    tokens = round(tokens)
    if tokens <= 0:
        raise RopelabError(f"length {text!r} must be positive")
    return tokens
