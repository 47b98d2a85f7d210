"""Tests of ropelab.eval.stats: hand-worked values, calls, and coverage / family-wise error on simulations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ropelab.eval import stats
from ropelab.eval.stats import (
    MIN_UNITS,
    Interval,
    call,
    detectable,
    detectable_from,
    differences,
    family,
    holm,
    interval,
    paired,
    paired_blocks,
    unit_means,
    verdict,
)

# --- hand-worked values ---------------------------------------------------------------------------------


def test_t_interval_hand_worked():
    # values 1, 2, 3, 4, 6: mean 16 / 5 = 3.2; deviations -2.2 -1.2 -0.2 0.8 2.8, squares sum to
    # 4.84 + 1.44 + 0.04 + 0.64 + 7.84 = 14.8; var 14.8 / 4 = 3.7; sd 1.923538; se sd / sqrt(5) = 0.860233;
    # t_{0.975, 4} = 2.776445, half width 2.776445 * 0.860233 = 2.388389 -> [0.811612, 5.588389];
    # t = 3.2 / 0.860233 = 3.719924 on 4 df -> two-sided p = 0.020476 (tables: between 0.02 and 0.025)
    r = interval([1, 2, 3, 4, 6])
    assert (r.n, r.df, r.method) == (5, 4, "t")
    assert r.mean == pytest.approx(3.2)
    assert r.sd == pytest.approx(math.sqrt(3.7))
    assert r.se == pytest.approx(0.860233, abs=1e-6)
    assert r.lo == pytest.approx(0.811612, abs=1e-5)
    assert r.hi == pytest.approx(5.588389, abs=1e-5)
    assert r.p == pytest.approx(0.020476, abs=1e-6)
    # a 99 % interval is wider: t_{0.995, 4} = 4.604095
    wide = interval([1, 2, 3, 4, 6], confidence=0.99)
    assert wide.hi - wide.mean == pytest.approx(4.604095 * 0.860233, abs=1e-5)
    # None / nan are dropped; n < 2 has no interval and no p value
    assert interval([1, None, 2, float("nan"), 3, 4, 6]) == r
    one = interval([7.0])
    assert (one.n, one.p, one.sd, one.se) == (1, None, None, None) and math.isnan(one.lo)
    assert interval([]).n == 0 and math.isnan(interval([]).mean)


def test_text():
    assert Interval(-0.0104, -0.0181, -0.0023, 12, 11, 0.01, 0.01, "t").text() == "-0.010 [-0.018, -0.002]"
    assert Interval(0.5, 0.25, 0.75, 9, 8, 0.01, 0.3, "t").text(digits=1, scale=100, unit=" %") == "50.0 % [25.0, 75.0]"
    assert interval([]).text() == "-"
    assert interval([0.25]).text() == "0.250"


def test_paired_matches_units_by_key_and_counts_dropped():
    a = {"doc1": 3.0, "doc2": 2.0, "doc3": None, "doc4": 5.0, "doc5": 1.0}
    b = {"doc1": 2.5, "doc2": 1.0, "doc3": 9.0, "doc4": 3.0, "doc6": 4.0}
    # shared and present: doc1 (0.5), doc2 (1.0), doc4 (2.0); dropped: doc3 (None), doc5, doc6 (one side)
    assert differences(a, b) == ([0.5, 1.0, 2.0], 3)
    r = paired(a, b)
    assert (r.n, r.dropped, r.df) == (3, 3, 2)
    assert r.mean == pytest.approx(3.5 / 3)
    # key order does not matter, only keys
    assert paired(dict(reversed(list(a.items()))), b).mean == pytest.approx(r.mean)
    assert paired(a, b, method="bootstrap").method == "bootstrap"


def test_sign_flip_exact_hand_enumerated():
    # diffs 1, 2, 3: of the 8 sign vectors only +++ and --- reach |sum| >= 6 -> p = 2 / 8
    r = interval([1.0, 2.0, 3.0], method="sign-flip")
    assert r.p == pytest.approx(0.25) and r.method == "sign-flip" and r.df is None
    # n = 3 can never reach p < 0.05: the interval is unbounded (honest, not a t interval in disguise)
    assert (r.lo, r.hi) == (-math.inf, math.inf)
    # 1..6: only ++++++ and ------ reach |sum| = 21 -> p = 2 / 64
    assert interval([1, 2, 3, 4, 5, 6], method="sign-flip").p == pytest.approx(2 / 64)
    # 1, -2, 3, 4: sums of +-1, +-2, +-3, +-4 with |sum| >= 6: {1,2,3} or {4,2} or {1,4,3}, {1,2,4}..., counted:
    d = np.array([1.0, -2.0, 3.0, 4.0])
    signs = np.array([[1 - 2 * ((k >> i) & 1) for i in range(4)] for k in range(16)])
    expected = np.mean(np.abs(signs @ d) >= abs(d.sum()))
    assert interval(d, method="sign-flip").p == pytest.approx(expected)


def test_sign_flip_interval_is_the_inverted_test():
    d = np.random.default_rng(3).normal(0.4, 1.0, 10)
    r = interval(d, method="sign-flip")
    spread = d.max() - d.min()
    assert r.lo < r.mean < r.hi
    # at the bounds the shifted data are not rejected; just beyond them they are
    assert interval(d - r.lo, method="sign-flip").p >= 0.05
    assert interval(d - r.hi, method="sign-flip").p >= 0.05
    assert interval(d - (r.lo - 1e-6 * spread), method="sign-flip").p < 0.05
    assert interval(d - (r.hi + 1e-6 * spread), method="sign-flip").p < 0.05


def test_sign_flip_monte_carlo_agrees_with_exact(monkeypatch):
    d = np.random.default_rng(5).normal(0.3, 1.0, 12)
    exact = interval(d, method="sign-flip")
    monkeypatch.setattr(stats, "EXACT_MAX", 4)  # force the Monte Carlo branch
    mc = interval(d, method="sign-flip", seed=1)
    assert mc == interval(d, method="sign-flip", seed=1)  # fixed seed: reproducible
    assert mc.p == pytest.approx(exact.p, abs=4 * math.sqrt(exact.p * (1 - exact.p) / stats.DRAWS) + 1e-4)
    assert mc.lo == pytest.approx(exact.lo, abs=0.05) and mc.hi == pytest.approx(exact.hi, abs=0.05)


def test_bootstrap_reproducible_and_sensible():
    d = [0.2, 0.5, -0.1, 0.4, 0.3, 0.6, 0.1, 0.45]
    r = interval(d, method="bootstrap", seed=7)
    assert r == interval(d, method="bootstrap", seed=7)
    assert r.lo < r.mean < r.hi and r.method == "bootstrap"
    assert r.p < 0.05  # 7 of 8 positive, clearly away from 0
    # recomputed here: 2.5 % and 97.5 % percentiles of the resampled means; p = twice the smaller tail at 0
    means = np.asarray(d)[np.random.default_rng(7).integers(0, 8, size=(stats.RESAMPLES, 8))].mean(axis=1)
    assert (r.lo, r.hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert r.p == pytest.approx(2 * min(np.mean(means <= 0), np.mean(means >= 0)))
    # at small n the percentile interval is narrower than the t interval
    assert r.hi - r.lo < interval(d).hi - interval(d).lo
    zero = interval([0.0] * 5, method="bootstrap")
    assert (zero.lo, zero.hi, zero.p) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        interval(d, method="z")


def test_holm_hand_worked():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # None / nan are kept in place and not counted in m (m = 4 here too)
    out = holm([0.01, None, 0.04, float("nan"), 0.03, 0.005])
    assert out[1] is None and math.isnan(out[3])
    assert [out[i] for i in (0, 2, 4, 5)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1, monotone in the raw p values
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    raw = list(np.random.default_rng(0).uniform(0, 0.2, 15))
    adj = holm(raw)
    ordered = [adj[i] for i in np.argsort(raw)]
    assert all(x <= y for x, y in itertools.pairwise(ordered))
    assert all(a >= r for a, r in zip(adj, raw))
    assert holm([]) == [] and holm([None]) == [None] and holm([0.02]) == [0.02]


def test_detectable_hand_worked():
    # sd 1, n 10: t_{0.975, 9} = 2.262157, t_{0.8, 9} = 0.883404, sum 3.145561, / sqrt(10) = 0.994714
    assert detectable(1.0, 10) == pytest.approx(0.994714, abs=1e-6)
    assert detectable(2.0, 10) == pytest.approx(2 * 0.994714, abs=1e-6)
    assert detectable(1.0, 1) is None
    # from observed differences: sd of 1, 2, 3, 4, 6 is sqrt(3.7), n 5
    assert detectable_from([1, 2, 3, 4, 6, None]) == pytest.approx(detectable(math.sqrt(3.7), 5))
    # t_{0.975, 4} = 2.776445, t_{0.8, 4} = 0.940965 -> 3.717410 * 1.923538 / sqrt(5)
    assert detectable(math.sqrt(3.7), 5) == pytest.approx(3.717410 * 1.923538 / math.sqrt(5), abs=1e-5)


def test_calls():
    assert MIN_UNITS == 3
    # identical: -0.000 ± 0.000 is never better, whatever p says
    zeros = [0.0, -0.0, 0.0, -0.0, 0.0]
    d = interval(zeros)
    assert d.text() in ("0.000 [0.000, 0.000]", "-0.000 [-0.000, -0.000]")
    assert call(d, adjusted_p=None, lower_is_better=True, diffs=zeros) == "identical"
    assert call(d, adjusted_p=None, lower_is_better=True) == "identical"  # from mean and sd alone
    tiny = [-1e-9, -1.1e-9, -0.9e-9, -1e-9, -1.05e-9]
    t = interval(tiny)
    assert t.p < 1e-4 and t.text() == "-0.000 [-0.000, -0.000]"
    assert call(t, adjusted_p=t.p, lower_is_better=True, atol=1e-6, diffs=tiny) == "identical"
    assert call(t, adjusted_p=t.p, lower_is_better=True, atol=1e-6) == "identical"
    assert call(t, adjusted_p=t.p, lower_is_better=True, atol=0.0, diffs=tiny) == "better"  # no tolerance given
    # n too small: two units, huge effect, p = 0 given
    two = interval([-5.0, -5.1])
    assert call(two, adjusted_p=0.0, lower_is_better=True, diffs=[-5.0, -5.1]) == "n too small"
    # within noise
    noisy = interval([-1.0, 1.0, -0.5, 0.4])
    assert call(noisy, adjusted_p=None, lower_is_better=True) == "within noise"
    # better / worse respect the direction
    down = [-1.0, -1.1, -0.9, -1.05]
    clear = interval(down)
    assert call(clear, adjusted_p=None, lower_is_better=True, diffs=down) == "better"
    assert call(clear, adjusted_p=None, lower_is_better=False, diffs=down) == "worse"
    up = interval([-x for x in down])
    assert call(up, adjusted_p=None, lower_is_better=True) == "worse"
    assert call(up, adjusted_p=None, lower_is_better=False) == "better"
    # the adjusted p decides, not the unadjusted one (nor the interval)
    assert clear.p < 0.05 and clear.hi < 0
    assert call(clear, adjusted_p=0.2, lower_is_better=True) == "within noise"
    assert call(clear, adjusted_p=0.049, lower_is_better=True) == "better"
    assert call(clear, adjusted_p=0.05, lower_is_better=True) == "within noise"


def test_family_of_one_table():
    def iv(mean: float, p: float, n: int = 12) -> Interval:
        return Interval(mean, mean - 0.1, mean + 0.1, n, n - 1, p, 0.2, "t")

    diffs = {
        ("yarn", 4096, "loss"): iv(-0.3, 0.001),
        ("ntk", 4096, "loss"): iv(-0.1, 0.03),
        ("ntk", 4096, "accuracy"): iv(0.05, 0.04),
        ("pi", 8192, "accuracy"): iv(0.5, 0.0, n=2),  # not in the family
    }
    lower = {k: k[2] == "loss" for k in diffs}
    out = family(diffs, lower_is_better=lower)
    assert list(out) == list(diffs)
    # m = 3: 0.001 * 3 = 0.003, 0.03 * 2 = 0.06, 0.04 * 1 -> 0.06
    assert out[("yarn", 4096, "loss")].adjusted_p == pytest.approx(0.003)
    assert out[("ntk", 4096, "loss")].adjusted_p == pytest.approx(0.06)
    assert out[("ntk", 4096, "accuracy")].adjusted_p == pytest.approx(0.06)
    assert out[("pi", 8192, "accuracy")].adjusted_p is None
    assert [v.call for v in out.values()] == ["better", "within noise", "within noise", "n too small"]
    assert "Holm p = 0.003" in out[("yarn", 4096, "loss")].text()
    # a higher-is-better metric that went down is worse
    worse = family({"acc": iv(-0.2, 0.001)}, lower_is_better=False)
    assert worse["acc"].call == "worse"


def test_rates_aggregate_per_document_first():
    # needles: (document, found) pairs; per document a rate, then the paired test over documents
    method = unit_means([("d1", 1), ("d1", 1), ("d2", 1), ("d2", 0), ("d3", 1), ("d3", 1), ("d4", None)])
    reference = unit_means([("d1", 0), ("d1", 1), ("d2", 0), ("d2", 0), ("d3", 0), ("d3", 1), ("d4", 1)])
    assert method == {"d1": 1.0, "d2": 0.5, "d3": 1.0}
    r = paired(method, reference)
    assert (r.n, r.dropped) == (3, 1) and r.mean == pytest.approx(0.5)


def test_old_names_keep_working():
    a, b = [1.0, 2.0, None, 4.0], [0.5, 1.0, 7.0, 3.0]
    old, new = paired_blocks(a, b), paired(a, b)  # sequences pair by position
    assert (new.n, new.dropped) == (old.n, 1) == (3, 1)
    assert new.mean == pytest.approx(old.mean) and new.se == pytest.approx(old.se)
    assert verdict(new) == verdict(old)
    assert verdict(paired([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])) == "better"
    for name in ("BLOCK", "block_means", "wilson", "rate_text", "mcnemar", "is_binary", "rate_verdict", "estimate"):
        assert hasattr(stats, name)


# --- simulations ----------------------------------------------------------------------------------------

TRUTH = -0.05  # true mean difference (method - reference) per block


def _simulate(sims: int, docs: int = 12, blocks: int = 40, phi: float = 0.8, seed: int = 2024) -> np.ndarray:
    """Per-block paired differences, shape (sims, docs, blocks): TRUTH + a per-document random offset
    (sd 0.1) + stationary AR(1) block noise (phi 0.8, marginal sd 0.2)."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(0.0, 0.1, (sims, docs, 1))
    noise = np.empty((sims, docs, blocks))
    noise[..., 0] = rng.normal(0.0, 0.2, (sims, docs))
    innovations = rng.normal(0.0, 0.2 * math.sqrt(1 - phi**2), (sims, docs, blocks))
    for b in range(1, blocks):
        noise[..., b] = phi * noise[..., b - 1] + innovations[..., b]
    return TRUTH + offset + noise


def _coverage(intervals: list[Interval]) -> float:
    return float(np.mean([r.lo <= TRUTH <= r.hi for r in intervals]))


def test_document_level_t_interval_covers_and_block_level_does_not():
    data = _simulate(2000)
    per_doc = data.mean(axis=2)  # the unit: a document's mean
    doc_cov = _coverage([interval(row) for row in per_doc])
    # the old block-level rule: all D * B blocks pooled as if independent, mean ± 1.96 SE
    pooled = data.reshape(len(data), -1)
    n = pooled.shape[1]
    mean, se = pooled.mean(axis=1), pooled.std(axis=1, ddof=1) / math.sqrt(n)
    assert stats.estimate(list(pooled[0])).se == pytest.approx(se[0])  # same SE as the old helper
    block_cov = float(np.mean(np.abs(mean - TRUTH) <= 1.96 * se))
    print(f"coverage of the 95 % interval: document-level t {doc_cov:.3f}, block-level pooled {block_cov:.3f}")
    assert 0.92 <= doc_cov <= 0.98, doc_cov
    assert block_cov < 0.85, block_cov


@pytest.mark.parametrize("method", ["sign-flip", "bootstrap"])
def test_resampling_intervals_cover(method):
    per_doc = _simulate(400, seed=99).mean(axis=2)
    cov = _coverage([interval(row, method=method, seed=i) for i, row in enumerate(per_doc)])
    print(f"coverage of the 95 % {method} interval: {cov:.3f}")
    assert 0.90 <= cov <= 0.98, cov


def test_holm_controls_family_wise_error():
    # 2,000 tables of 10 true-null comparisons, 12 documents each
    rng = np.random.default_rng(11)
    docs = 12
    d = rng.normal(0.0, 1.0, (2000, 10, docs))
    mean, sd = d.mean(axis=2), d.std(axis=2, ddof=1)
    from scipy import stats as st

    p = 2 * st.t.sf(np.abs(mean) / (sd / math.sqrt(docs)), docs - 1)
    assert interval(d[0, 0]).p == pytest.approx(p[0, 0])  # same p as the module's t interval
    any_holm = any_raw = 0
    for table_mean, table_p in zip(mean, p):
        table = {i: Interval(m, m, m, docs, docs - 1, q, 1.0, "t") for i, (m, q) in enumerate(zip(table_mean, table_p))}
        calls = [v.call for v in family(table, lower_is_better=True).values()]
        any_holm += any(c in ("better", "worse") for c in calls)
        any_raw += any(call(iv, adjusted_p=None, lower_is_better=True) != "within noise" for iv in table.values())
    fwer_holm, fwer_raw = any_holm / len(p), any_raw / len(p)
    print(f"family-wise error over 10 true nulls: Holm {fwer_holm:.3f}, unadjusted {fwer_raw:.3f}")
    assert fwer_holm <= 0.06, fwer_holm
    assert fwer_raw > 0.25, fwer_raw
