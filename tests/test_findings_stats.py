"""The findings' statistics: the sign-flip test against brute force, interval coverage by
simulation, Holm, the smallest detectable effect, the not-testable rule, exact measures, and
texts that say what scipy actually computes."""

import itertools
import re
import textwrap

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from toolkit.errors import ConfigError
from toolkit.findings import (
    NOT_TESTABLE,
    Check,
    Statistics,
    claim_verdict,
    correction_note,
    detectable_effect,
    evaluate,
    evaluate_spec,
    holm,
    load_spec,
    method_notes,
    sign_flip_p,
    t_interval,
    untestable_reason,
    wilcoxon_method,
)
from toolkit.findings.inference import coverage, sign_flip_method
from toolkit.runs.aggregate import mean_ci

V2 = Statistics(test="permutation", interval="t", correction="holm", not_testable=0.9,
                exact=True, band_test=True)


# --- the sign-flip test --------------------------------------------------------------------
def brute_force(k: np.ndarray) -> dict[str, float]:
    """Exact sign-flip p-values of integer data by enumerating every pattern (integer sums)."""
    obs = int(k.sum())
    sums = [int(np.dot(s, k)) for s in itertools.product((1, -1), repeat=len(k))]
    greater = sum(x >= obs for x in sums) / len(sums)
    less = sum(x <= obs for x in sums) / len(sums)
    return {"greater": greater, "less": less, "two-sided": min(1.0, 2 * min(greater, less))}


@pytest.mark.parametrize("n", [2, 3, 5, 8, 10])
def test_sign_flip_p_equals_brute_force_on_small_n(n):
    rng = np.random.default_rng(n)
    for _ in range(6):
        k = rng.integers(-6, 10, n)  # fidelity-like: a 1/20 grid with zeros and ties
        exact = brute_force(k)
        for alternative, p in exact.items():
            assert sign_flip_p(k / 20, alternative) == pytest.approx(p, abs=1e-12), (k, alternative)


def test_sign_flip_p_limits():
    assert sign_flip_p(np.full(8, 0.05)) == pytest.approx(2 / 2**8)  # the smallest at n = 8
    assert sign_flip_p(np.zeros(8)) == 1.0
    assert np.isnan(sign_flip_p([0.3]))
    assert sign_flip_p([0.1, np.nan, 0.2, 0.3]) == sign_flip_p([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="alternative='bigger'"):
        sign_flip_p([0.1, 0.2], "bigger")


def test_above_sixteen_seeds_the_test_is_monte_carlo_with_a_stated_count_and_seed():
    rng = np.random.default_rng(7)
    k = rng.integers(-5, 9, 18)
    signs = 1 - 2 * ((np.arange(2**18)[:, None] >> np.arange(18)) & 1)  # every pattern
    sums = signs @ k
    exact = min(1.0, 2 * min((sums >= k.sum()).mean(), (sums <= k.sum()).mean()))
    p = sign_flip_p(k / 20, resamples=100_000, seed=0)
    assert p == sign_flip_p(k / 20, resamples=100_000, seed=0)  # seeded
    assert abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / 100_000) + 2e-5
    assert sign_flip_method(18) == "sign-flip, Monte Carlo (100,000 random patterns, seed 0)"
    assert sign_flip_method(16) == "sign-flip, exact (65,536 patterns)"


def test_monte_carlo_p_is_never_zero():
    """The Monte Carlo p counts the observed pattern among the drawn ones ((hits + 1) /
    (resamples + 1)): 20 equal positive values, whose all-positive pattern none of 999 random
    patterns repeats, give 1/1000, not 0."""
    d = np.full(20, 0.05)
    assert sign_flip_p(d, "greater", resamples=999) == pytest.approx(1 / 1000, rel=1e-12)
    assert sign_flip_p(d, resamples=999) == pytest.approx(2 / 1000, rel=1e-12)
    assert sign_flip_p(-d, "less", resamples=999) == pytest.approx(1 / 1000, rel=1e-12)


def test_sixteen_values_are_exact_and_seventeen_monte_carlo():
    """The switch sits at n <= 16 (EXACT_MAX): 16 equal positive values give exactly one
    pattern in 2^16; 17 give the Monte Carlo floor 1 / (resamples + 1) and up."""
    assert sign_flip_p(np.full(16, 0.05), "greater") == 2.0**-16
    assert sign_flip_p(np.full(16, 0.05)) == 2.0**-15
    p17 = sign_flip_p(np.full(17, 0.05), "greater", resamples=10_000)
    assert p17 != 2.0**-17 and p17 >= 1 / 10_001


# --- intervals -----------------------------------------------------------------------------
def fidelity_difference(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-seed differences of two arms' fidelity over a 20-frame window: each arm, per seed,
    either keeps the prompt (80% of frames read right) or has lost it (5%), in 50% / 35% of
    seeds: tied (a 1/20 grid) and bimodal, like the findings' fidelity differences."""
    def arm(keeps: float) -> np.ndarray:
        p = np.where(rng.random(n) < keeps, 0.8, 0.05)
        return rng.binomial(20, p) / 20
    return arm(0.5) - arm(0.35)


FIDELITY_TRUTH = (0.5 * 0.8 + 0.5 * 0.05) - (0.35 * 0.8 + 0.65 * 0.05)
TOLERANCE = 0.02  # |coverage - 0.95|; the simulation's own SE is 0.0034 at 4,000 samples


@pytest.mark.parametrize("n", [8, 16])
def test_t_intervals_cover_95_percent_at_the_seeds_used(n):
    cov = coverage(t_interval, fidelity_difference, FIDELITY_TRUTH, n, sims=4000, seed=n)
    assert abs(cov - 0.95) <= TOLERANCE, cov
    normal = coverage(t_interval, lambda rng, k: rng.normal(0.1, 0.14, k), 0.1, n, 4000, n)
    assert abs(normal - 0.95) <= TOLERANCE, normal


def test_bca_under_covers_the_same_data_at_eight_seeds():
    """Why the new files use t: the first pages' BCa interval misses the truth too often."""
    cov = coverage(mean_ci, fidelity_difference, FIDELITY_TRUTH, 8, sims=600, seed=8)
    assert cov < 0.93, cov


def test_t_interval_edges():
    assert np.isnan(t_interval([0.4])[1]) and t_interval([0.2, 0.2, 0.2]) == (0.2, 0.2, 0.2)
    assert np.isnan(t_interval([0.1, 0.5])[1])  # as mean_ci: no interval below 3 values
    m, lo, hi = t_interval([0.0, 0.1, 0.2, 0.3])
    half = stats.t.ppf(0.975, 3) * np.std([0, 0.1, 0.2, 0.3], ddof=1) / 2
    assert (m, lo, hi) == pytest.approx((0.15, 0.15 - half, 0.15 + half))


# --- Holm and power ------------------------------------------------------------------------
def test_holm_adjusts_step_down_and_skips_nan():
    got = holm([0.01, np.nan, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 0.02, 0.03, 0.06, 0.06 (monotone)
    np.testing.assert_allclose(got, [0.03, np.nan, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1, never decreasing
    assert np.isnan(holm([np.nan])).all() and len(holm([])) == 0


@pytest.mark.parametrize("n", [8, 16])
def test_detectable_effect_has_80_percent_power(n):
    sd = 0.14
    effect = detectable_effect(sd, n)
    rng = np.random.default_rng(n)
    x = rng.normal(effect, sd, (40_000, n))
    t = x.mean(1) / (x.std(1, ddof=1) / np.sqrt(n))
    power = np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1))
    assert abs(power - 0.80) < 0.01, power
    assert effect == pytest.approx({8: 0.162, 16: 0.105}[n], abs=0.001)


def test_detectable_effect_edges():
    assert detectable_effect(0.14, 5) == np.inf  # 2^(1-5) = 0.0625: no p below 0.05
    assert detectable_effect(0.0, 8) == 0.0
    assert np.isnan(detectable_effect(0.1, 1)) and np.isnan(detectable_effect(np.nan, 8))
    assert detectable_effect(0.28, 8) == pytest.approx(2 * detectable_effect(0.14, 8))


# --- the not-testable rule and exact measures ------------------------------------------------
def _check(measure="moving@last", expect="less", baseline="b", than=0.0, margin=0.05):
    return Check("t", measure, "a", expect, baseline, than, margin)


@pytest.mark.parametrize("expect, arm, base, testable", [
    ("less", [1.0] * 8, [1.0] * 8, False),           # both at the ceiling: no information
    ("less", [0.6] * 8, [1.0] * 8, True),            # the arm left the ceiling: it can fall
    ("greater", [1.0] * 8, [1.0] * 7 + [0.9], True),   # 7 of 8 = 87.5% < 90%
    ("greater", [0.5] * 8, [1.0] * 8, False),        # greater than a baseline at the ceiling
    ("greater", [0.3] * 8, [0.0] * 8, True),         # frozen share rising from 0: testable
    ("less", [0.3] * 8, [0.0] * 8, False),           # falling below the floor
    ("within", [0.0] * 8, [0.0] * 8, False),         # both at the floor
    ("less", [1.0] * 10, [1.0] * 9 + [0.5], False),  # 9 of 10 = 90%: at the bound
    ("less", [1.0] * 10, [1.0] * 8 + [0.5] * 2, True),  # 8 of 10 = 80%: not
])
def test_not_testable_rule(expect, arm, base, testable):
    why = untestable_reason(_check(expect=expect), np.array(arm), np.array(base), (0.0, 1.0), 0.9)
    assert (why == "") == testable, why
    if not testable:
        assert "rule: at least 90% of seeds at a bound" in why


def test_no_baseline_or_unbounded_measures_are_always_testable():
    assert untestable_reason(_check(baseline=None), np.ones(8), np.ones(8), (0.0, 1.0)) == ""
    assert untestable_reason(_check(), np.ones(8), np.ones(8), (-np.inf, np.inf)) == ""


def _table(measure, arm, base):
    rows = [{"arm": "a", "seed": s, measure: v} for s, v in enumerate(arm)]
    rows += [{"arm": "b", "seed": s, measure: v} for s, v in enumerate(base)]
    return pd.DataFrame(rows)


def test_a_saturated_measure_is_not_testable_only_where_the_file_says_so():
    table = _table("moving@last", [1.0] * 8, [1.0] * 8)
    first = evaluate(_check(), table)  # the first pages' statistics: the verdict as before
    assert first.verdict == "fails" and not first.testable and "ceiling (1)" in first.bound
    new = evaluate(_check(), table, V2)
    assert new.verdict == NOT_TESTABLE and new.reason == new.bound and not new.tested
    assert claim_verdict([new]) == NOT_TESTABLE
    holds = evaluate(_check(expect="greater", baseline=None, measure="fidelity@last"),
                     _table("fidelity@last", [0.5] * 8, [0.5] * 8), V2)
    assert claim_verdict([new, holds]) == claim_verdict([holds])  # not testable is left out


def test_exact_measures_are_reported_not_tested():
    check = Check("kv", "kv_growth", "a", "within", None, 1.0, 0.05)
    table = _table("kv_growth", [1.0] * 8, [1.0] * 8)
    r = evaluate(check, table, V2)
    assert r.exact and np.isnan(r.p) and not r.tested and (r.low, r.high) == (1.0, 1.0)
    assert r.verdict == "holds" and r.reason == "the exact value lies inside 1 ± 0.05"
    grows = evaluate(Check("lin", "kv_linearity", "a", "greater", None, 0.999),
                     _table("kv_linearity", [0.9995] * 2, [0] * 2), V2)
    assert grows.verdict == "holds" and "0.999" in grows.reason  # 2 seeds suffice: no test
    legacy = evaluate(Check("lin", "kv_linearity", "a", "greater", None, 0.999),
                      _table("kv_linearity", [0.9995] * 2, [0] * 2))
    assert legacy.verdict == "inconclusive" and legacy.p == 0.5  # the first pages' Wilcoxon


def test_within_needs_its_band_test_in_the_new_rules():
    d = np.array([0.01, -0.02, 0.03, 0.0, 0.02, -0.01])
    table = _table("fidelity@drop", d, d * 0)
    check = Check("w", "fidelity@drop", "a", "within", None, 0.0, 0.1)
    r = evaluate(check, table, V2)
    assert r.verdict == "holds" and "p = " in r.reason  # CI inside and both one-sided p < 0.05
    few = evaluate(check, _table("fidelity@drop", d[:4], d[:4] * 0), V2)
    assert few.verdict == "inconclusive" and ">= 0.05" in few.reason  # 4 seeds: p >= 1/16


# --- a whole file: Holm over its tests ---------------------------------------------------
SPEC = """
seeds: 8
latent_frames: 40
window: 8
statistics: {statistics}
arms:
  a: [model=world, strategy=full]
  b: [model=world, strategy=window, strategy.window_frames=4]
claims:
  - id: c
    claim: three effects
    paper: none
    tests:
      - {{name: big, measure: fidelity@last, arm: a, baseline: b, expect: greater}}
      - {{name: small, measure: fidelity@first, arm: a, baseline: b, expect: greater}}
      - {{name: none, measure: sprite_speed@last, arm: a, baseline: b, expect: greater}}
"""


def _file(tmp_path, statistics):
    path = tmp_path / "f.yaml"
    path.write_text(textwrap.dedent(SPEC.format(statistics=statistics)))
    return load_spec(path)


def _three_effects():
    rng = np.random.default_rng(3)
    rows = []
    for s in range(8):
        base = {"fidelity@last": 0.3, "fidelity@first": 0.5, "sprite_speed@last": 0.4}
        shift = {"fidelity@last": 0.3, "fidelity@first": 0.05 if s < 6 else -0.01,
                 "sprite_speed@last": rng.normal(0, 0.1)}
        rows.append({"arm": "b", "seed": s, **base})
        rows.append({"arm": "a", "seed": s, **{k: base[k] + shift[k] for k in base}})
    return pd.DataFrame(rows)


def test_holm_over_a_files_tests_sets_the_verdicts_when_the_file_says_so(tmp_path):
    table = _three_effects()
    new = _file(tmp_path, "{test: permutation, interval: t, correction: holm}")
    results = evaluate_spec(new, table)["c"]
    raw = [r.p for r in results]
    np.testing.assert_allclose([r.p_holm for r in results], holm(raw))
    big, small = results[0], results[1]
    assert big.p == pytest.approx(2 / 256) and big.p_holm == pytest.approx(6 / 256)
    assert big.verdict == "holds" and "Holm p = 0.023 < 0.05" in big.reason
    # six seeds +0.05, two -0.01: 4 of 256 sign patterns reach the observed mean, p = 8/256;
    # second smallest of 3: Holm p = 2 x 8/256 = 0.0625
    assert small.p == pytest.approx(8 / 256) and small.p_holm == pytest.approx(16 / 256)
    assert small.verdict == "inconclusive" and "Holm p = 0.062 >= 0.05" in small.reason
    first = _file(tmp_path, "{}")
    legacy = evaluate_spec(first, table)["c"]
    assert all("Holm" not in r.reason for r in legacy)  # verdicts from the raw p
    assert legacy[1].verdict == "holds"
    assert all(np.isfinite(r.p_holm) for r in legacy)  # ... the adjusted p shown beside it
    assert "Verdicts use Holm's adjusted p over these 3" in correction_note(new.statistics,
                                                                            results)
    assert "each verdict uses its own raw p" in correction_note(first.statistics, legacy)


def test_the_statistics_block_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("statistics.test='wilcox' is not allowed. "
                                                    "Did you mean 'wilcoxon'?")):
        _file(tmp_path, "{test: wilcox}")
    with pytest.raises(ConfigError, match=r"statistics\.not_testable=0\.3: a share of seeds"):
        _file(tmp_path, "{not_testable: 0.3}")
    with pytest.raises(ConfigError, match=r"unknown statistics keys \['tests'\]"):
        _file(tmp_path, "{tests: permutation}")
    assert load_spec().statistics == Statistics()  # the first page keeps its methods


# --- what scipy's Wilcoxon test actually does ------------------------------------------------
def _exact_signed_rank_p(d: np.ndarray) -> float:
    """Two-sided p of the signed-rank statistic over every sign flip (zeros dropped)."""
    d = d[d != 0]
    ranks = stats.rankdata(np.abs(d))
    signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
    plus = ((signs > 0) * ranks).sum(1)
    obs = ranks[d > 0].sum()
    return min(1.0, 2 * min((plus >= obs).mean(), (plus <= obs).mean()))


def test_wilcoxon_texts_say_when_scipy_is_exact():
    tied13 = np.array([0.05] * 4 + [0.1] * 4 + [0.15, 0.2, -0.05, 0.25, 0.3])
    tied16 = np.concatenate([tied13, [0.1, 0.35, -0.1]])
    plain16 = np.linspace(-0.03, 0.3, 16) + 0.001
    assert wilcoxon_method(tied13).startswith("Wilcoxon, exact permutation (ties; n = 13")
    assert stats.wilcoxon(tied13).pvalue == pytest.approx(_exact_signed_rank_p(tied13))
    assert wilcoxon_method(tied16).startswith("Wilcoxon, normal approximation (ties; n = 16")
    assert stats.wilcoxon(tied16).pvalue != pytest.approx(_exact_signed_rank_p(tied16),
                                                          rel=0.01)
    assert wilcoxon_method(plain16) == "Wilcoxon, exact (n = 16, no ties or zeros)"
    assert stats.wilcoxon(plain16).pvalue == pytest.approx(_exact_signed_rank_p(plain16))
    zeros = np.array([0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert "2 zero(s)" in wilcoxon_method(zeros)
    assert stats.wilcoxon(zeros).pvalue == pytest.approx(2 / 2**6)  # 2^(1-n'), n' = 6


def test_method_notes_follow_the_statistics():
    perm = " ".join(method_notes(V2, []))
    assert "all 2^n sign patterns for n <= 16" in perm and "100,000 random patterns" in perm
    assert "Student t" in perm and "Not testable (0)" in perm and "Exact:" in perm
    first = " ".join(method_notes(Statistics(), []))
    assert "n <= 13" in first and "normal approximation" in first and "BCa" in first
    assert "exact for n <= 25" not in first
