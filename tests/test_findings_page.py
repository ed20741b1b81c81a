"""The findings page rendered from a made-up table (no store, no runs): the first pages' numbers
without a statistics block, Holm, power, exact and not-testable columns with one, figures naming
logged curves, and the margin rules' roles."""

import textwrap

import numpy as np
import pandas as pd
import pytest
from test_findings import _rows

from toolkit.findings import load_spec

PAGE = """
title: Page
seeds: 8
latent_frames: 16
window: 4
arms:
  a: [model=world, strategy=window, strategy.window_frames=8]
  b: [model=world, strategy=window, strategy.window_frames=4]
claims:
  - id: c
    claim: a keeps fidelity
    paper: none
    tests:
      - {name: noisy, measure: fidelity@last, arm: a, baseline: b, expect: greater,
         margin: 0.02}
      - {name: clear, measure: fidelity@first, arm: a, baseline: b, expect: greater,
         margin: 0.02}
      - {name: kv, measure: kv_bytes@last, arm: a, baseline: b, expect: greater}
      - {name: moves, measure: moving@last, arm: a, baseline: b, expect: greater, margin: 0.05}
"""


def _page(tmp_path, statistics=""):
    """The page of PAGE (with ``statistics``) on a made-up table of 8 seeds, no store."""
    from reports.findings import Findings, to_markdown
    from toolkit.findings import evaluate_spec

    path = tmp_path / "page.yaml"
    path.write_text(textwrap.dedent(PAGE).replace("claims:", statistics + "claims:", 1))
    spec = load_spec(path)
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.6, 8)
    noisy = base + 0.05 + rng.normal(0, 0.1, 8)  # 0.02 is far below what 8 seeds detect
    rows = [{"arm": "b", "seed": s, "fidelity@last": base[s], "fidelity@first": base[s],
             "kv_bytes@last": 1.0, "kv_bytes@first": 1.0, "moving@last": 1.0,
             "moving@first": 1.0} for s in range(8)]
    rows += [{"arm": "a", "seed": s, "fidelity@last": noisy[s],
              "fidelity@first": base[s] + 0.3 + 0.001 * s, "kv_bytes@last": 2.0 + (s == 3),
              "kv_bytes@first": 1.0, "moving@last": 1.0, "moving@first": 1.0}
             for s in range(8)]
    table = pd.DataFrame(rows)
    f = Findings(spec, table, evaluate_spec(spec, table), [], pd.DataFrame({"seed": range(8)}),
                 "")
    text, _ = to_markdown(f, ["- header"], tmp_path / "PAGE.md")
    return text, _rows(text), f.results["c"], table


def test_a_page_without_statistics_keeps_the_first_pages_numbers(tmp_path):
    """No ``statistics:``: BCa intervals and scipy's Wilcoxon p as the first pages printed them,
    no exact or not-testable verdicts; Holm's p and the detectable effect only added."""
    from scipy import stats

    from reports.findings import measure_range
    from reports.tables import num
    from toolkit.runs.aggregate import mean_ci

    text, rows, results, table = _page(tmp_path)
    for name, measure in (("noisy", "fidelity@last"), ("clear", "fidelity@first")):
        d = (table[table.arm == "a"][measure].to_numpy() - table[table.arm == "b"][measure]
             .to_numpy())
        mean, low, high = mean_ci(d, bounds=measure_range(measure, True))
        assert rows[name][3] == f"{num(mean)} [{num(low)}, {num(high)}]"
        assert rows[name][5] == f"{stats.wilcoxon(d).pvalue:.2g}"
    assert rows["kv"][3].startswith("1.12 [") and rows["kv"][5] != "—"  # tested, as before
    assert rows["moves"][9] == "❌ fails"  # as pre-registered (no effect worth the name) ...
    assert "⚠ Not testable by the rule of later findings files: `b` sits at the measure's " \
           "ceiling (1) in 8 of 8 seeds" in text  # ... with the reason it says nothing
    assert "not testable" not in text.split("## Verdicts")[0] and "exact" not in rows["kv"][3]
    assert "each verdict uses its own raw p (no correction)" in text
    holm = __import__("toolkit.findings", fromlist=["holm"]).holm([r.p for r in results])
    assert [rows[n][6] for n in ("noisy", "clear", "kv", "moves")] == [f"{q:.2g}" for q in holm]


def test_a_page_with_statistics_shows_holm_power_exact_and_not_testable(tmp_path):
    text, rows, results, _ = _page(tmp_path, "statistics: {test: permutation, interval: t, "
                                   "correction: holm, not_testable: 0.9, exact: true}\n")
    noisy, clear = results[:2]
    assert clear.p == pytest.approx(2 / 2**8) and clear.p_holm == pytest.approx(2 * clear.p)
    assert rows["clear"][5] == "0.0078" and rows["clear"][6] == "0.016"
    assert rows["clear"][9] == "✅ holds" and "Holm p = 0.016 < 0.05" in clear.reason
    # the noisy test's SD (about 0.05) puts its detectable effect far above its margin of 0.02
    assert noisy.underpowered and 0.03 < noisy.sde < 0.2 and not clear.underpowered
    from reports.tables import num
    assert rows["noisy"][7] == f"{num(noisy.sde)} (larger than the margin)"
    assert rows["clear"][7] == num(clear.sde)
    assert (f"smallest detectable effect at 80% power {num(noisy.sde)}, larger than the "
            "margin 0.02: an effect worth the name may well end inconclusive") in text
    assert rows["kv"][3] == "exact 1.00..2.00" and rows["kv"][5:8] == ["—", "—", "—"]
    assert rows["kv"][4] == "exact 0" and rows["kv"][9] == "✅ holds"
    assert rows["moves"][9] == "⊘ not testable" and "→ **not testable** (`b` sits at" in text
    assert "Claims: 1 holds." in text  # the not testable test does not count against it
    assert rows["moves"][7] == "—" and "**not testable**" in text.split("- moves:")[1]
    assert "Verdicts use Holm's adjusted p over these 2" in text


def test_a_margin_rules_page_shows_roles_alpha_and_how_many_tests_were_testable(tmp_path):
    text, rows, results, _ = _page(tmp_path, "statistics: {test: permutation, interval: t, "
                                   "correction: holm, exact: true, rules: margin}\n")
    noisy, clear, _, moves = results
    assert [r.role for r in results] == ["primary", "secondary", "secondary", "secondary"]
    assert rows["noisy"][10] == "primary (Holm)" and rows["clear"][10] == "secondary (unadjusted)"
    assert rows["noisy"][7].startswith(f"{__import__('reports.tables').tables.num(noisy.sde)} "
                                       "at α 0.05")
    assert rows["moves"][9] == "⊘ not testable" and "(saturation)" in moves.reason
    assert clear.verdict == "holds" and "secondary: raw p, not adjusted" in clear.reason
    assert f"**Verdict: {_mark(noisy.verdict)}, 3 of 4 tests testable.**" in text
    assert "One primary test per claim decides the claim" in text
    assert "Single-arm fractions: 95% Wilson score interval" in text
    assert "Not testable: only on saturation" in text and "holds, size unclear" in text


def _mark(word):
    """The page's mark of a verdict."""
    from reports.findings import MARK

    return MARK[word]
