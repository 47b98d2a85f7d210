"""Type checks for values that come from outside: JSON and config files, GGUF metadata, command
lines and the Python API. ``True`` is an ``int`` to Python; here a bool is never a number, and an
integer too large for a float is not a finite number."""

from __future__ import annotations

import math


def is_int(value: object) -> bool:
    """An ``int`` that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """An ``int`` or ``float`` that is not a bool (NaN and infinities included)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite(value: object) -> bool:
    """A finite ``int`` or ``float`` that is not a bool; an int too large for a float is not one."""
    if not is_real(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def int_between(value: object, low: int, high: int) -> bool:
    """An ``int`` (not a bool) with ``low <= value <= high``."""
    return is_int(value) and low <= value <= high
