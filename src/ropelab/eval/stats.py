"""The statistics behind every verdict of the reports: intervals, paired differences, Holm, detectable effects.

Rules (project policy):

* The independent unit is the **document** (for trained models compared across training runs: the training
  seed). Blocks of tokens of one document are correlated (they share its topic, style and difficulty), so
  they are never the units of an interval or a test. Values arrive per unit, already aggregated (a
  document's mean loss), or as a mapping unit -> value; ``unit_means`` aggregates (unit, value) pairs.
* A method is compared with a reference by the **paired difference** per unit (method - reference on the
  same units, matched by unit key; units missing, None or nan on either side are dropped and counted in
  ``Interval.dropped``). The default interval is the Student **t interval with n - 1 degrees of freedom**;
  its p value is two-sided against 0. Alternatives a caller can choose with ``method=``:
  ``"sign-flip"``, the sign-flip permutation test over units (exact enumeration of all 2^n sign vectors for
  n <= 16, else 20,000 Monte Carlo draws from numpy's Generator with a fixed seed), whose interval is the set
  of shifts the test does not reject (test inversion; unbounded when n is too small for the test ever to
  reject: n <= 5 at 95 %); and ``"bootstrap"``, the paired bootstrap percentile interval over units (Efron &
  Tibshirani 1993, ch. 13; 10,000 resamples, fixed seed), whose p value is twice the smaller bootstrap tail
  at 0 (it is narrower than the t interval at small n: about 92 % coverage at n = 12). ``Interval.method``
  records which one produced the interval.
* The comparisons of one table (every method x length x metric against its reference) are one **family**:
  their p values are adjusted by Holm's step-down procedure (Holm 1979), which controls the family-wise error
  rate; a call uses the **adjusted p < alpha** (0.05). Beside a call the report shows the *unadjusted* 95 %
  interval (the size of the effect) and the Holm-adjusted p (which decides): an interval that excludes 0 can
  therefore sit beside "within noise". Comparisons with fewer than ``MIN_UNITS`` units are not in the family.
* ``call`` says "identical" (checked first) when every per-unit difference is within ``atol`` (given by the
  caller, default 0: a difference at numerical precision is never better or worse), "n too small" below ``MIN_UNITS`` = 3
  units (no call is made then), otherwise "better" / "worse" (respecting ``lower_is_better``) when the
  adjusted p < alpha, else "within noise".
* The **smallest detectable effect** of a paired design with n units and per-unit sd is approximated by
  (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n) (the usual approximation: the noncentral t of the
  alternative is replaced by a shifted central t).
* **0/1 outcomes** (needles, multiple-choice items) inside documents are aggregated per document to a rate
  (fraction correct) first, then compared by the paired test over documents as above. ``wilson`` (the Wilson
  1927 score interval) shows a pooled rate k/N; the exact McNemar test (``mcnemar``) is only for the case
  where each sample *is* its own independent document.
* ``BLOCK`` / ``block_means`` (128-token blocks) are for plotting curves only.

Kept for modules not yet migrated (block-level, superseded): ``Estimate``, ``estimate``, ``verdict`` (a
difference beyond 2 standard errors), ``paired_blocks`` (the old ``paired``), ``rate_verdict``. The new
``paired`` also accepts two sequences (paired by position) and its ``Interval`` has an ``se`` property, so
old callers keep their numbers until they move to the rules above.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import stats as _st

BLOCK = 128  # tokens per block: per-token losses are averaged in blocks for plotting curves
MIN_UNITS = 3  # no call is made on fewer units than this
METHODS = ("t", "sign-flip", "bootstrap")
EXACT_MAX, DRAWS = 16, 20_000  # sign-flip: exact up to EXACT_MAX units, else DRAWS Monte Carlo sign vectors
RESAMPLES = 10_000  # bootstrap resamples

K = TypeVar("K", bound=Hashable)
Values = Mapping[Hashable, float | None] | Sequence[float | None]


def _finite(v: float | None) -> bool:
    return v is not None and not math.isnan(v)


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` independent units with its interval [lo, hi] and two-sided p value against 0."""

    mean: float
    lo: float
    hi: float
    n: int
    df: int | None  # n - 1 for the t interval, else None
    p: float | None  # None when n < 2
    sd: float | None  # sample sd of the unit values (n - 1 denominator); None when n < 2
    method: str  # "t", "sign-flip" or "bootstrap"
    dropped: int = 0  # units present on one side only (or None/nan), left out of a paired difference

    @property
    def se(self) -> float | None:
        """Standard error sd / sqrt(n) (what the old ``Estimate`` carried); None when n < 2."""
        return None if self.sd is None or self.n < 2 else self.sd / math.sqrt(self.n)

    def text(self, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
        if self.n == 0:
            return "-"
        body = f"{scale * self.mean:.{digits}f}{unit}"
        if self.n < 2 or math.isnan(self.lo) or math.isnan(self.hi):
            return body
        lo, hi = sorted((scale * self.lo, scale * self.hi))
        return f"{body} [{lo:.{digits}f}, {hi:.{digits}f}]"


def interval(values: Iterable[float | None], *, confidence: float = 0.95, method: str = "t", seed: int = 0) -> Interval:
    """One-sample interval and two-sided p value against 0 of ``values`` (one per unit; None/nan dropped)."""
    return _interval(np.asarray([float(v) for v in values if _finite(v)], dtype=float), confidence, method, seed, 0)


def differences(a: Values, b: Values) -> tuple[list[float], int]:
    """Per-unit ``a - b`` over the units both have (in ``a``'s order), and how many units were dropped.
    Mappings are matched by key, sequences by position."""
    a, b = _as_mapping(a), _as_mapping(b)
    out, dropped = [], 0
    for key, x in a.items():
        y = b.get(key)
        if key in b and _finite(x) and _finite(y):
            out.append(float(x) - float(y))
        else:
            dropped += 1
    return out, dropped + sum(1 for key in b if key not in a)


def paired(a: Values, b: Values, *, confidence: float = 0.95, method: str = "t", seed: int = 0) -> Interval:
    """Interval of the paired difference ``a - b`` over the units both have (see ``differences``)."""
    d, dropped = differences(a, b)
    return _interval(np.asarray(d, dtype=float), confidence, method, seed, dropped)


def unit_means(items: Iterable[tuple[K, float | None]]) -> dict[K, float]:
    """Mean value per unit from (unit, value) pairs, e.g. a document's fraction of needles found from
    (document, 0/1) pairs; None/nan values are skipped and a unit left with none is left out."""
    sums: dict[K, list[float]] = {}
    for key, v in items:
        if _finite(v):
            sums.setdefault(key, []).append(float(v))
    return {key: sum(vs) / len(vs) for key, vs in sums.items()}


def _as_mapping(x: Values) -> Mapping:
    return x if isinstance(x, Mapping) else dict(enumerate(x))


def _interval(d: np.ndarray, confidence: float, method: str, seed: int, dropped: int) -> Interval:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}")
    n = len(d)
    if n < 2:
        mean = float(d[0]) if n else math.nan
        return Interval(mean, math.nan, math.nan, n, None, None, None, method, dropped)
    constant = bool(np.all(d == d[0]))
    mean = float(d[0]) if constant else float(d.mean())
    sd = 0.0 if constant else float(d.std(ddof=1))
    if method == "t":
        lo, hi, p = _t(mean, sd, n, confidence)
        return Interval(mean, lo, hi, n, n - 1, p, sd, "t", dropped)
    lo, hi, p = _sign_flip(d, confidence, seed) if method == "sign-flip" else _bootstrap(d, confidence, seed)
    return Interval(mean, lo, hi, n, None, p, sd, method, dropped)


def _t(mean: float, sd: float, n: int, confidence: float) -> tuple[float, float, float]:
    if sd == 0:  # every unit the same value: no spread, the interval is that value
        return mean, mean, 1.0 if mean == 0 else 0.0
    se = sd / math.sqrt(n)
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return mean - half, mean + half, float(min(1.0, 2 * _st.t.sf(abs(mean) / se, n - 1)))


def _sign_flip(d: np.ndarray, confidence: float, seed: int) -> tuple[float, float, float]:
    """Sign-flip test of mean 0 (statistic: the sum) and its inversion into an interval for the mean.
    With the sign vectors fixed, the statistic at shift mu is A - mu * S (A = signs @ d, S = signs.sum)."""
    n = len(d)
    if n <= EXACT_MAX:
        signs = 1 - 2 * ((np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n)) & 1)
        A, S, extra = signs @ d, signs.sum(axis=1).astype(float), 0
    else:  # Monte Carlo; the observed sign vector is counted once more (p never 0)
        rng, parts = np.random.default_rng(seed), []
        chunk = max(1, 4_000_000 // n)
        for start in range(0, DRAWS, chunk):
            s = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, DRAWS - start), n))
            parts.append((s @ d, s.sum(axis=1)))
        A, S, extra = np.concatenate([a for a, _ in parts]), np.concatenate([s for _, s in parts]), 1
    total, scale = float(d.sum()), float(np.abs(d).sum())

    def p_at(mu: float) -> float:
        observed = abs(total - n * mu)
        tol = 1e-10 * (scale + n * abs(mu))
        return (np.count_nonzero(np.abs(A - mu * S) >= observed - tol) + extra) / (len(A) + extra)

    alpha, mean = 1 - confidence, total / n
    spread = float(d.max() - d.min()) + abs(mean) + 1e-12

    def bound(direction: int) -> float:
        inner, step = mean, spread
        for _ in range(64):  # find a rejected shift
            outer = mean + direction * step
            if p_at(outer) < alpha:
                break
            inner, step = outer, 2 * step
        else:
            return direction * math.inf
        while abs(outer - inner) > 1e-10 * spread:  # bisect to the last shift not rejected
            mid = (inner + outer) / 2
            if p_at(mid) < alpha:
                outer = mid
            else:
                inner = mid
        return inner

    if n <= EXACT_MAX and 2 / 2**n >= alpha:  # the test can never reject
        return -math.inf, math.inf, float(p_at(0.0))
    return bound(-1), bound(1), float(p_at(0.0))


def _bootstrap(d: np.ndarray, confidence: float, seed: int) -> tuple[float, float, float]:
    n, rng = len(d), np.random.default_rng(seed)
    means, chunk = np.empty(RESAMPLES), max(1, 2_000_000 // n)
    for start in range(0, RESAMPLES, chunk):
        stop = min(RESAMPLES, start + chunk)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    p = min(1.0, 2 * min(np.mean(means <= 0), np.mean(means >= 0)))
    return float(lo), float(hi), float(p)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm (1979) step-down adjusted p values, in the input's order: the k-th smallest of m p values is
    multiplied by m - k + 1, made monotone (running maximum) and capped at 1. None/nan entries are
    ignored (not counted in m) and returned in place unchanged."""
    tested = [i for i, p in enumerate(pvalues) if _finite(p)]
    if any(not 0 <= pvalues[i] <= 1 for i in tested):
        raise ValueError(f"p values must lie in [0, 1]: {pvalues}")
    out, m, running = list(pvalues), len(tested), 0.0
    for rank, i in enumerate(sorted(tested, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def _identical(diff: Interval, diffs: Sequence[float], atol: float) -> bool:
    values = [float(x) for x in diffs if _finite(x)]
    if values:
        return all(abs(x) <= atol for x in values)
    if diff.n == 0 or math.isnan(diff.mean):
        return False
    # without the per-unit values: the largest |d_i| is at most |mean| + sd (n - 1) / sqrt(n)
    return abs(diff.mean) + (diff.sd or 0.0) * (diff.n - 1) / math.sqrt(diff.n) <= atol


def call(diff: Interval, *, adjusted_p: float | None, lower_is_better: bool, atol: float = 0.0, alpha: float = 0.05,
         diffs: Sequence[float] = ()) -> str:  # fmt: skip
    """ "identical" (every per-unit difference |d| <= atol; pass ``diffs``, else a bound from mean and sd
    is used), "n too small" (fewer than MIN_UNITS units), else "better" / "worse" when the p value
    (``adjusted_p``, the Holm-adjusted one; ``diff.p`` when None, a family of one) is below ``alpha``,
    else "within noise". ``diff`` is method - reference."""
    if _identical(diff, diffs, atol):
        return "identical"
    if diff.n < MIN_UNITS:
        return "n too small"
    p = diff.p if adjusted_p is None else adjusted_p
    if p is None or math.isnan(p) or p >= alpha or diff.mean == 0:
        return "within noise"
    return "better" if (diff.mean < 0) == lower_is_better else "worse"


@dataclass(frozen=True)
class Verdict:
    """One comparison of a family: the unadjusted interval, the Holm-adjusted p and the call."""

    diff: Interval
    adjusted_p: float | None  # None when not in the family (n < MIN_UNITS or no p value)
    call: str

    def text(self, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
        p = "" if self.adjusted_p is None else f", Holm p = {self.adjusted_p:.2g}"
        return f"{self.diff.text(digits, scale, unit)} (n = {self.diff.n}{p}): {self.call}"


def family(diffs: Mapping[K, Interval], *, lower_is_better: bool | Mapping[K, bool], atol: float | Mapping[K, float] = 0.0,
           alpha: float = 0.05, unit_diffs: Mapping[K, Sequence[float]] | None = None) -> dict[K, Verdict]:  # fmt: skip
    """Calls for every comparison of one table (keys such as (method, length, metric)), Holm-adjusted
    over the comparisons with at least MIN_UNITS units. ``lower_is_better`` and ``atol`` are one value or
    one per key; ``unit_diffs`` (per key, optional) gives ``call`` the per-unit differences."""
    keys = list(diffs)
    pvalues = [diffs[k].p if diffs[k].n >= MIN_UNITS else None for k in keys]
    out = {}
    for key, adjusted in zip(keys, holm(pvalues)):
        lower = lower_is_better if isinstance(lower_is_better, bool) else lower_is_better[key]
        tol = atol[key] if isinstance(atol, Mapping) else atol
        p = math.nan if adjusted is None else adjusted  # not in the family: no fallback to the raw p
        units = (unit_diffs or {}).get(key, ())
        said = call(diffs[key], adjusted_p=p, lower_is_better=lower, atol=tol, alpha=alpha, diffs=units)
        out[key] = Verdict(diffs[key], adjusted, said)
    return out


def detectable(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true mean difference a paired t test on ``n`` units with per-unit sd ``sd`` detects with
    probability ``power`` at two-sided level ``alpha``: (t_{1-alpha/2,n-1} + t_{power,n-1}) sd / sqrt(n),
    the usual approximation (shifted central t for the noncentral t). None when n < 2."""
    if n < 2 or sd is None or math.isnan(sd):
        return None
    return float((_st.t.ppf(1 - alpha / 2, n - 1) + _st.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def detectable_from(diffs: Iterable[float | None], *, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """``detectable`` with the sd and n of observed per-unit differences (None/nan dropped)."""
    d = [float(x) for x in diffs if _finite(x)]
    return None if len(d) < 2 else detectable(float(np.std(d, ddof=1)), len(d), alpha=alpha, power=power)


# --- kept for callers not yet migrated (block-level; superseded by the rules above) ---------------------


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


def paired_blocks(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """The old ``paired``: mean and standard error of ``a - b`` over positions where both are present."""
    return estimate([x - y for x, y in zip(a, b) if x is not None and y is not None])


def verdict(difference: Estimate | Interval, lower_is_better: bool = True) -> str:
    """Old rule (superseded by ``call``): "better" / "worse" beyond 2 standard errors, else "within noise"."""
    if difference.n < 2 or difference.se is None:
        return "n < 2"
    if abs(difference.mean) <= 2 * difference.se:
        return "within noise"
    improved = difference.mean < 0 if lower_is_better else difference.mean > 0
    return "better" if improved else "worse"


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson (1927) score interval of a pooled proportion k/N (95 % by default)."""
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
    """Exact two-sided McNemar test of paired 0/1 outcomes (each pair its own independent document):
    (p value, a-only wins, b-only wins)."""
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
    """Mean of the scored (non-None) losses in each ``block`` of positions ``[start, stop)`` (for plotting
    curves only); a block with fewer than half its tokens scored is None (kept, so curves stay aligned)."""
    out = []
    for first in range(start, stop, block):
        part = [v for v in losses[first : min(stop, first + block)] if v is not None]
        out.append(sum(part) / len(part) if len(part) * 2 >= min(block, stop - first) else None)
    return out
