"""Type checks for values that come from outside: JSON and config files, GGUF metadata, command
lines and the Python API. ``True`` is an ``int`` to Python; here a bool is never a number, and an
integer too large for a float is not a finite number. Config dataclasses declare each field's type
and range once (:func:`bound`) and check them all with :func:`check_fields`."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


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


@dataclass(frozen=True)
class Bound:
    """A config field's declared type and range, checked by :func:`check_fields` (the same pattern
    as a method's declared ``Param``s in :mod:`ropelab.pe`): ``kind`` int or float (a bool is
    neither), ``low`` / ``high`` inclusive unless ``open_low`` / ``open_high``, ``choices`` for a
    closed set, ``optional``: None allowed. ``says`` is what the error calls a valid value."""

    kind: type
    says: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    optional: bool = False

    def holds(self, value: object) -> bool:
        if value is None:
            return self.optional
        if self.choices:
            return value in self.choices
        if not (is_int(value) if self.kind is int else is_finite(value)):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)


def bound(kind: type, says: str, **limits) -> dict:
    """Field metadata: ``field(default=..., metadata=bound(int, "a positive integer", low=1))``."""
    return {"bound": Bound(kind, says, **limits)}


def check_fields(config, error: type[Exception], name=lambda field: field) -> None:
    """Check every field of the dataclass ``config`` that declares a :class:`Bound`; the first that
    does not hold is one ``error`` ``"<name> must be <says>, got <value>"`` (``name`` spells the
    field as its users write it, e.g. the command line's ``--batch-size``)."""
    for item in fields(config):
        rule = item.metadata.get("bound")
        value = getattr(config, item.name)
        if rule is not None and not rule.holds(value):
            raise error(f"{name(item.name)} must be {rule.says}, got {value!r}")
