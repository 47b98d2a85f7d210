"""Uncertainty for evaluation tables: standard errors, paired differences, intervals for rates.

Rules the reports follow (documented in docs/evaluation.md):

* a mean is shown with its standard error and ``n`` (the number of independent units it averages:
  samples, or blocks of tokens for per-token losses);
* a rate (exact match) is shown with its Wilson 95 % interval (Wilson 1927), which stays inside
  0-100 % and is not zero-width at 0 % or 100 %;
* "better" / "worse" is said only when the paired difference (same samples, same tokens) exceeds
  two standard errors of that difference; for 0/1 outcomes the paired test is the exact McNemar
  test (two-sided p < 0.05), since the standard error of a difference of 0/1 outcomes is zero
  when every pair agrees, however few pairs there are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: tokens per block: per-token losses are averaged in blocks, and blocks are the units of the standard error
BLOCK = 128


@dataclass(frozen=True)
class Estimate:
    mean: float
    se: float | None  # None when n < 2
    n: int

    def text(self, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
        if self.n == 0:
            return "-"
        body = f"{scale * self.mean:.{digits}f}{unit}"
        return body if self.se is None else f"{body} ± {scale * self.se:.{digits}f}"


def estimate(values: Sequence[float]) -> Estimate:
    values = [v for v in values if v is not None and not math.isnan(v)]
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), None, 0)
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean, None, n)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Estimate(mean, math.sqrt(var / n), n)


def paired(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """Mean and standard error of ``a - b`` over pairs where both are present."""
    return estimate([x - y for x, y in zip(a, b) if x is not None and y is not None])


def verdict(difference: Estimate, lower_is_better: bool = True) -> str:
    """ "better", "worse" or "within noise" for a paired difference (method - reference)."""
    if difference.n < 2 or difference.se is None:
        return "n < 2"
    if abs(difference.mean) <= 2 * difference.se:
        return "within noise"
    improved = difference.mean < 0 if lower_is_better else difference.mean > 0
    return "better" if improved else "worse"


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate_text(successes: int, n: int) -> str:
    if n == 0:
        return "-"
    lo, hi = wilson(successes, n)
    return f"{100 * successes / n:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"


def mcnemar(a: Sequence[int], b: Sequence[int]) -> tuple[float, int, int]:
    """Exact two-sided McNemar test of paired 0/1 outcomes: (p value, a-only wins, b-only wins)."""
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0, 0, 0
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1)) / 2**discordant
    return min(1.0, 2 * tail), only_a, only_b


def rate_verdict(method: Sequence[int], reference: Sequence[int]) -> str:
    p, only_m, only_r = mcnemar(method, reference)
    if p >= 0.05:
        return "within noise"
    return "better" if only_m > only_r else "worse"


def is_binary(values: Sequence[float]) -> bool:
    return bool(values) and all(v in (0, 1, 0.0, 1.0) for v in values)


def block_means(losses: Sequence[float | None], start: int, stop: int, block: int = BLOCK) -> list[float | None]:
    """Mean of the scored (non-None) losses in each ``block`` of positions ``[start, stop)``; a block
    with fewer than half its tokens scored is None (kept, so blocks of two methods stay paired)."""
    out = []
    for first in range(start, stop, block):
        part = [v for v in losses[first : min(stop, first + block)] if v is not None]
        out.append(sum(part) / len(part) if len(part) * 2 >= min(block, stop - first) else None)
    return out
