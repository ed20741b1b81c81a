"""The margin rules (issue 22): verdicts with the margin, not testable only on saturation, one
primary per claim behind control gates, Holm over the primaries, power at the alpha used, the
p floor with zeros, the pilot's inflated SD, and bounded intervals for single-arm fractions."""

import itertools
import textwrap

import numpy as np
import pandas as pd
import pytest

from toolkit.findings import (
    HOLDS_UNCLEAR,
    NOT_TESTABLE,
    OPPOSITE,
    SMALL,
    Check,
    Statistics,
    claim_summary,
    claim_verdict,
    detectable_effect,
    evaluate,
    evaluate_spec,
    holm,
    load_spec,
    margin_verdict,
    p_floor,
    sd_upper,
    seeds_for,
    sign_flip_p,
    wilson_cluster,
)
from toolkit.findings.inference import COVERAGE, GENERATORS, coverage, score_p, t_interval
from toolkit.runs.config import ConfigError

MARGIN = Statistics(test="permutation", interval="t", correction="holm", exact=True,
                    rules="margin")


def _check(measure="moving@last", expect="greater", baseline="b", than=0.0, margin=0.05):
    return Check("t", measure, "a", expect, baseline, than, margin)


def _table(measure, arm, base):
    rows = [{"arm": "a", "seed": s, measure: v} for s, v in enumerate(arm)]
    rows += [{"arm": "b", "seed": s, measure: v} for s, v in enumerate(base)]
    return pd.DataFrame(rows)


# --- verdicts with the margin ----------------------------------------------------------------
def test_an_opposite_effect_from_a_baseline_at_a_bound_fails_the_claim():
    """The first rules' suite case (arm 0.5 vs a baseline at 1.0 in all 8 seeds, claim
    'greater') was 'not testable'; under the margin rules it is tested and fails."""
    table = _table("moving@last", [0.5] * 8, [1.0] * 8)
    first = evaluate(_check(), table, Statistics(test="permutation", interval="t",
                                                 not_testable=0.9))
    assert first.verdict == NOT_TESTABLE  # the first rules hid the failure
    r = evaluate(_check(), table, MARGIN)
    assert r.verdict == OPPOSITE and r.testable and "no variation in 8 seeds" in r.reason
    assert claim_verdict([r]) == OPPOSITE


@pytest.mark.parametrize("ci, p, word", [
    ((0.10, 0.01, 0.19), 0.01, HOLDS_UNCLEAR),   # significant, but the CI crosses 0.05
    ((0.15, 0.08, 0.22), 0.01, "holds"),         # the CI clears than + margin
    ((0.15, 0.08, 0.22), 0.2, "inconclusive"),   # clears it, but p >= alpha
    ((-0.1, -0.2, -0.03), 0.01, OPPOSITE),
    ((0.0, -0.02, 0.03), 0.6, SMALL),            # the CI stays short of the margin
    ((0.05, -0.04, 0.14), 0.3, "inconclusive"),
])
def test_a_ci_crossing_the_margin_does_not_hold(ci, p, word):
    assert margin_verdict(_check(), *ci, p, 8)[0] == word
    flipped = margin_verdict(_check(expect="less"), -ci[0], -ci[2], -ci[1], p, 8)[0]
    assert flipped == word


def test_non_superiority_reads_the_upper_bound_against_the_margin():
    at_most = _check(expect="at_most", margin=0.1)
    assert margin_verdict(at_most, 0.0, -0.05, 0.06, 0.01, 16)[0] == "holds"
    assert margin_verdict(at_most, 0.0, -0.05, 0.12, 0.01, 16)[0] == "inconclusive"
    assert margin_verdict(at_most, 0.3, 0.15, 0.45, 0.9, 16)[0] == "fails"
    assert margin_verdict(at_most, 0.0, -0.05, 0.06, 0.2, 16)[0] == "inconclusive"  # p
    d = np.array([0.01, -0.02, 0.03, 0.0, 0.02, -0.01, 0.01, 0.0])
    r = evaluate(Check("n", "fidelity@last", "a", "at_most", "b", 0.0, 0.1),
                 _table("fidelity@last", 0.5 + d, [0.5] * 8), MARGIN)
    assert r.verdict == "holds" and r.p == pytest.approx(sign_flip_p(d - 0.1, "less"))
    with pytest.raises(ConfigError, match="non-superiority test"):
        _spec_file_with("expect: at_most, margin: 0")


# --- not testable: saturation, from counts ------------------------------------------------
@pytest.mark.parametrize("arm, base, testable", [
    ([1.0] * 8, [1.0] * 8, False),                   # both at the ceiling: nothing to see
    ([1.0] * 5 + [0.9, 0.8, 0.95], [1.0] * 8, False),  # 3 non-zero: p >= 0.25
    ([1.0] * 3 + [0.9] * 5, [1.0] * 8, False),       # 5 non-zero: p >= 0.0625 >= 0.05
    ([1.0] * 2 + [0.9] * 6, [1.0] * 8, True),        # 6 non-zero: p can reach 0.031
    ([1.1] * 2 + [0.9] * 6, [1.1] * 8, True),        # unbounded side: no saturation
])
def test_not_testable_only_on_saturation(arm, base, testable):
    for expect in ("greater", "less"):  # never decided by the direction of the outcome
        r = evaluate(_check(expect=expect, measure="moving@last"),
                     _table("moving@last", arm, base), MARGIN)
        assert (r.verdict != NOT_TESTABLE) == testable, r.reason
        if not testable:
            assert "both sit at the measure's ceiling (1)" in r.reason
            assert "(saturation)" in r.reason


def test_a_claim_says_how_many_of_its_tests_were_testable(tmp_path):
    spec = _spec(tmp_path, claims=1, secondary=True)
    rows = []
    for s in range(8):
        rows += [{"arm": "b", "seed": s, "fidelity@last": 0.3, "moving@last": 1.0},
                 {"arm": "a", "seed": s, "fidelity@last": 0.5 + 0.01 * s, "moving@last": 1.0}]
    results = evaluate_spec(spec, pd.DataFrame(rows))["c0"]
    assert [r.role for r in results] == ["primary", "secondary"]
    assert results[1].verdict == NOT_TESTABLE
    assert claim_summary(results) == "holds, 1 of 2 tests testable"


# --- multiplicity and power ------------------------------------------------------------------
SPEC = """
seeds: 8
latent_frames: 40
window: 8
statistics: {{test: permutation, interval: t, correction: holm, exact: true, rules: margin}}
arms:
  a: [model=world, strategy=full]
  b: [model=world, strategy=window, strategy.window_frames=4]
claims:
{claims}
"""
CLAIM = """  - id: c{i}
    claim: claim {i}
    paper: none{control}
    tests:
      - {{name: p{i}, measure: fidelity@last, arm: a, baseline: b, expect: greater,
         margin: 0.05}}
"""
SECONDARY = """      - {name: s, measure: moving@last, arm: a, baseline: b, expect: greater,
         margin: 0.05}
"""


def _spec(tmp_path, claims=3, control=False, secondary=False, text=None):
    body = "".join(CLAIM.format(i=i, control="\n    control: true" if control and i == 0
                                else "") + (SECONDARY if secondary else "")
                   for i in range(claims))
    path = tmp_path / "rules.yaml"
    path.write_text(text or textwrap.dedent(SPEC).format(claims=body))
    return load_spec(path)


def _spec_file_with(edit):
    import tempfile
    from pathlib import Path

    text = SPEC.format(claims=CLAIM.format(i=0, control="")).replace(
        "expect: greater,\n         margin: 0.05", edit)
    with tempfile.TemporaryDirectory() as tmp:
        return _spec(Path(tmp), text=textwrap.dedent(text))


def _effects(shifts, seeds=8, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.5, seeds)
    rows = [{"arm": "b", "seed": s, "fidelity@last": base[s], "moving@last": 0.5}
            for s in range(seeds)]
    rows += [{"arm": "a", "seed": s, "fidelity@last": base[s] + shifts[s],
              "moving@last": 0.5} for s in range(seeds)]
    return pd.DataFrame(rows)


def test_the_detectable_effect_is_at_holms_alpha(tmp_path):
    spec = _spec(tmp_path, claims=3)
    shifts = np.array([0.3, 0.2, 0.25, 0.1, 0.0, 0.35, 0.15, 0.0])  # two zero differences
    results = evaluate_spec(spec, _effects(shifts))
    r = results["c0"][0]
    assert r.role == "primary" and r.alpha == pytest.approx(0.05 / 3)
    assert r.nonzero == 6
    assert r.sde == pytest.approx(detectable_effect(np.std(shifts, ddof=1), 6, 0.05 / 3))
    assert r.sde > detectable_effect(np.std(shifts, ddof=1), 8)  # the first pages' figure
    assert r.p_floor == pytest.approx(2.0 ** (1 - 6))
    assert r.p_holm == pytest.approx(holm([r.p] * 3)[0])


def test_a_test_that_cannot_reach_its_alpha_is_flagged(tmp_path):
    shifts = np.full(8, 0.3) + np.linspace(0, 0.01, 8)
    seven = evaluate_spec(_spec(tmp_path, claims=7), _effects(shifts))
    r = seven["c0"][0]  # 2^(1-8) = 0.0078 >= 0.05 / 7: no primary can survive Holm
    assert r.unreachable and r.alpha == pytest.approx(0.05 / 7)
    assert all(rs[0].verdict != "holds" for rs in seven.values())
    six = evaluate_spec(_spec(tmp_path, claims=6), _effects(shifts))
    assert not six["c0"][0].unreachable and six["c0"][0].verdict == "holds"


def test_the_p_floor_halves_with_each_zero():
    for zeros in range(4):
        d = np.array([0.1] * (8 - zeros) + [0.0] * zeros)
        assert p_floor(d) == pytest.approx(2.0 ** (1 - (8 - zeros)))
        assert sign_flip_p(d) == pytest.approx(p_floor(d))  # reached by all-positive values
    assert p_floor([0.1, 0.1, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1]) == pytest.approx(0.0625)
    assert p_floor(np.zeros(8)) == 1.0


def test_a_failing_control_gate_stops_every_primary(tmp_path):
    spec = _spec(tmp_path, claims=3, control=True, secondary=True)
    rng = np.random.default_rng(5)
    rows = []
    for s in range(8):
        base = rng.uniform(0.2, 0.5)
        rows += [{"arm": "b", "seed": s, "fidelity@last": base, "moving@last": 0.4},
                 {"arm": "a", "seed": s, "fidelity@last": base + 0.3 + 0.01 * s,
                  "moving@last": 0.4 + 0.2 + 0.01 * s}]
    passed = evaluate_spec(spec, pd.DataFrame(rows))
    gate = passed["c0"][0]
    assert gate.role == "gate" and gate.alpha == 0.05 and gate.verdict == "holds"
    assert np.isnan(gate.p_holm)  # the gate is not in Holm's family
    prim = [passed[f"c{i}"][0] for i in (1, 2)]
    np.testing.assert_allclose([r.p_holm for r in prim], holm([r.p for r in prim]))
    second = passed["c1"][1]
    assert second.role == "secondary" and np.isnan(second.p_holm)
    assert "secondary: raw p, not adjusted" in second.reason
    flat = pd.DataFrame(rows)
    flat.loc[flat.arm == "a", "fidelity@last"] = flat.loc[flat.arm == "b", "fidelity@last"].values
    stopped = evaluate_spec(spec, flat)
    assert stopped["c0"][0].verdict != "holds"
    for i in (1, 2):
        assert stopped[f"c{i}"][0].verdict == "inconclusive"
        assert "the control gate `c0` did not pass" in stopped[f"c{i}"][0].reason


def test_one_primary_per_claim(tmp_path):
    text = textwrap.dedent(SPEC).format(claims=CLAIM.format(i=0, control="")).replace(
        "margin: 0.05}", "margin: 0.05, primary: true}")
    text += "      - {name: q, measure: moving@last, arm: a, baseline: b, expect: greater, " \
            "primary: true}\n"
    with pytest.raises(ConfigError, match="2 tests say primary: true; one primary test"):
        _spec(tmp_path, text=text)


# --- the pilot -----------------------------------------------------------------------------
def test_the_pilots_sd_is_inflated_to_its_80_percent_upper_limit():
    rng = np.random.default_rng(0)
    sd = rng.normal(0, 0.12, (20_000, 6)).std(1, ddof=1)
    upper = np.array([sd_upper(s, 6) for s in sd[:4000]])
    assert abs(np.mean(upper >= 0.12) - 0.8) < 0.02  # it covers the true SD 80% of the time
    assert sd_upper(0.12, 6) > 0.12
    n = seeds_for(0.12, 0.10, 0.05)
    assert detectable_effect(0.12, n) <= 0.10 < detectable_effect(0.12, n - 1)
    assert seeds_for(sd_upper(0.12, 6), 0.10, 0.05) > n  # the inflated SD needs more seeds
    with pytest.raises(ValueError, match="at least 2"):
        sd_upper(0.1, 1)


# --- intervals for a single arm's fraction -----------------------------------------------------
@pytest.mark.parametrize("name", sorted(COVERAGE))
@pytest.mark.parametrize("n", [8, 16])
def test_single_arm_intervals_on_skewed_and_near_bound_fractions(name, n):
    truth, stated = COVERAGE[name]
    draw = GENERATORS[name]
    for method, fn in (("wilson", wilson_cluster), ("t", t_interval)):
        cov = coverage(fn, draw, truth, n, sims=4000, seed=n)
        print(f"{name} n={n} {method}: {cov:.3f}")
        assert abs(cov - stated[(method, n)]) <= 0.005, (method, cov)
    assert stated[("wilson", n)] >= 0.93 and stated[("t", n)] < stated[("wilson", n)]


def test_wilson_stays_in_range_and_says_no_variation():
    m, low, high = wilson_cluster([0.0, 0.0, 0.05, 0.0, 0.0, 0.1, 0.0, 0.0])
    assert 0.0 <= low < m < high <= 1.0
    assert wilson_cluster([0.2] * 8) == (0.2, 0.2, 0.2)
    r = evaluate(Check("f", "fidelity@last", "a", "greater", None, 0.1, 0.05),
                 _table("fidelity@last", [0.4] * 8, [0.0] * 8), MARGIN)
    assert r.interval == "wilson" and "no variation in 8 seeds" in r.reason
    lo_p = score_p([0.0, 0.05, 0.1, 0.0, 0.05, 0.0, 0.0, 0.05], 0.3)
    assert lo_p < 0.05 and score_p([0.3, 0.25, 0.35], 0.3) > 0.5


def test_sign_flip_floor_matches_brute_force_with_zeros():
    d = np.array([0.1, 0.2, 0.0, 0.3, 0.0, 0.1])
    sums = [float(np.dot(s, d)) for s in itertools.product((1, -1), repeat=len(d))]
    smallest = 2 * min(np.mean(np.array(sums) >= x - 1e-12) for x in sums)
    assert p_floor(d) == pytest.approx(smallest)


def test_smaller_than_the_margin_is_one_sided_at_the_alpha_faced():
    check = _check(margin=0.05)
    ci = (0.0, -0.02, 0.04)
    assert margin_verdict(check, *ci, 0.9, 16)[0] == SMALL  # default: the 95% CI
    wide = (-0.03, 0.06)  # the interval at 1 - 2 alpha / m reaches the margin
    assert margin_verdict(check, *ci, 0.9, 16, short=wide)[0] == "inconclusive"
    d = np.array([0.0, 0.01, -0.01, 0.02, 0.0, 0.01, -0.02, 0.01, 0.0, 0.01])
    r = evaluate(Check("s", "fidelity@last", "a", "greater", "b", 0.0, 0.05),
                 _table("fidelity@last", 0.5 + d, [0.5] * 10), MARGIN, alpha=0.05 / 6)
    assert r.verdict == SMALL and "(at alpha 0.0083)" in r.reason


def test_tests_that_cannot_reach_their_alpha_are_flagged_before_the_runs(tmp_path):
    from toolkit.findings.power import reach_lines

    seven = reach_lines(_spec(tmp_path, claims=7), 8)
    assert len(seven) == 7 and "with 8 seeds no p falls below 0.0078, not below its alpha " \
                                "0.0071: it cannot hold" in seven[0]
    assert reach_lines(_spec(tmp_path, claims=6), 8) == []
    assert reach_lines(_spec(tmp_path, claims=7), 9) == []
    text = textwrap.dedent(SPEC).format(claims=CLAIM.format(i=0, control="")) + \
        "pilot: {first_seed: 500, seeds: 6, sd: 0.12, effect: 0.10}\n"
    line = reach_lines(_spec(tmp_path, text=text), 8)[-1]
    need = seeds_for(sd_upper(0.12, 6), 0.10, 0.05)
    assert line.startswith("Pilot: 6 seeds on prompts 500..505, SD 0.12, inflated to its 80% "
                           f"upper limit {sd_upper(0.12, 6):.3g}")
    assert f"needs {need} seeds (⚠ 8 are fewer" in line
    with pytest.raises(ConfigError, match=r"the confirmatory prompts 0\.\.7 and the pilot prompts"):
        _spec(tmp_path, text=text.replace("first_seed: 500", "first_seed: 4"))
