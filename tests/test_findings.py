"""``rollbench findings``: the spec, the measures, the verdict rules and one tiny end-to-end run."""

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from toolkit.errors import ConfigError
from toolkit.findings import (
    Check,
    claim_verdict,
    evaluate,
    load_spec,
    measure_curve,
    plan,
    values_of,
    verdict,
    whole_measure,
)


def test_the_shipped_findings_file_is_complete_and_composes():
    spec = load_spec()
    assert spec.seeds >= 8 and spec.latent_frames == 24 * spec.window
    ids = {c.id for c in spec.claims}
    assert {"full-history", "no-sink-drifts", "large-sink-freezes", "dual-compressor",
            "topk-selection", "rope-shift", "packforcing-24x"} <= ids
    for claim in spec.claims:
        assert claim.paper and claim.tests and claim.figures
    jobs = plan(spec, 1)
    assert {j.arm for j in jobs} == set(spec.arms_used())
    assert len({j.key for j in jobs}) == len(jobs)  # every arm is a different run


@pytest.mark.parametrize("edit, message", [
    ("arm: pf_sink0", "arm='pf_sinkO' is not allowed. Did you mean 'pf_sink0'?"),
    ("measure: identity_drift@last", "window of 'identity_drift@late'"),
    ("expect: greater\n        margin: 0.05", "expect='bigger'"),
])
def test_typos_in_the_findings_file_are_named(tmp_path, edit, message):
    text = load_spec().path.read_text()
    wrong = {"arm: pf_sink0": "arm: pf_sinkO",
             "measure: identity_drift@last": "measure: identity_drift@late",
             "expect: greater\n        margin: 0.05": "expect: bigger\n        margin: 0.05"}[edit]
    path = tmp_path / "findings.yaml"
    path.write_text(text.replace(edit, wrong, 1))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_spec(path)


def test_windows_and_whole_curve_measures():
    steps = np.arange(480)
    values = np.where(steps < 240, 1.0, 0.25)
    assert measure_curve("fidelity@first", steps, values, 480, 20) == 1.0
    assert measure_curve("fidelity@last", steps, values, 480, 20) == 0.25
    assert measure_curve("fidelity@drop", steps, values, 480, 20) == 0.75
    blocks = np.arange(0, 480, 4)
    linear = 100.0 * (blocks // 4 + 1)
    bounded = np.minimum(linear, 3000.0)
    assert whole_measure("kv_linearity", blocks, linear) == pytest.approx(1.0)
    assert whole_measure("kv_linearity", blocks, bounded) < 0.9
    assert whole_measure("kv_growth", blocks, linear) == pytest.approx(2.0, abs=0.05)
    assert whole_measure("kv_growth", blocks, bounded) == 1.0


def _t(expect="greater", than=0.0, margin=0.05):
    return Check("t", "fidelity@last", "a", expect, "b", than, margin)


@pytest.mark.parametrize("expect, ci, p, word", [
    ("greater", (0.2, 0.1, 0.3), 0.008, "holds"),
    ("greater", (0.2, 0.1, 0.3), 0.2, "inconclusive"),     # CI > 0 but the test disagrees
    ("greater", (-0.2, -0.3, -0.1), 0.008, "fails"),       # the opposite effect
    ("greater", (0.0, -0.01, 0.02), 0.6, "fails"),         # inside the margin: no effect
    ("greater", (0.05, -0.01, 0.12), 0.1, "inconclusive"),
    ("greater", (-0.1, -0.18, -0.03), 0.09, "inconclusive"),  # opposite, not significant
    ("less", (-0.2, -0.3, -0.1), 0.008, "holds"),
    ("less", (0.2, 0.1, 0.3), 0.008, "fails"),
    ("within", (0.02, -0.03, 0.04), 0.01, "holds"),
    ("within", (0.3, 0.2, 0.4), 0.01, "fails"),
    ("within", (0.04, -0.01, 0.09), 0.2, "inconclusive"),
])
def test_verdict_rules(expect, ci, p, word):
    assert verdict(_t(expect), *ci, p, 8)[0] == word


def test_one_value_is_never_a_verdict():
    assert verdict(_t(), 0.5, np.nan, np.nan, np.nan, 1)[0] == "inconclusive"


def _table(effect, noise=0.01, seeds=8, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, seeds)
    rows = [{"arm": "b", "seed": s, "fidelity@last": base[s], "fidelity@first": 1.0}
            for s in range(seeds)]
    rows += [{"arm": "a", "seed": s, "fidelity@last": base[s] + effect + noise * rng.normal(),
              "fidelity@first": 1.0} for s in range(seeds)]
    return pd.DataFrame(rows)


def test_paired_effects_are_found_and_absent_ones_rejected():
    assert evaluate(_t(), _table(0.2)).verdict == "holds"
    assert evaluate(_t(), _table(-0.2)).verdict == "fails"
    absent = evaluate(_t(), _table(0.0))
    assert absent.verdict == "fails" and "no effect" in absent.reason
    assert absent.at_1x[0] == 0.0  # the same effect in the 1x window


def test_pairs_are_matched_by_seed_and_unmatched_ones_dropped():
    table = _table(0.1).drop(index=[0])  # seed 0 of the baseline is missing
    d, seeds = values_of(_t(), table)
    assert seeds == list(range(1, 8)) and len(d) == 7


def test_claim_verdicts_combine_tests():
    class R:
        def __init__(self, v):
            self.verdict = v
    assert claim_verdict([R("holds"), R("holds")]) == "holds"
    assert claim_verdict([R("holds"), R("fails")]) == "partly holds"
    assert claim_verdict([R("fails"), R("inconclusive")]) == "fails"
    assert claim_verdict([R("holds"), R("inconclusive")]) == "inconclusive"


TINY = """
title: Toy findings
about: Two window widths on fresh prompts.
seeds: 2
first_seed: 5
latent_frames: 16
window: 4
arms:
  wide: [model=world, strategy=window, strategy.window_frames=8]
  narrow: [model=world, strategy=window, strategy.window_frames=4]
  full: [model=world, strategy=full]
claims:
  - id: toy
    claim: a wider window keeps fidelity
    paper: none
    figures:
      - {measure: fidelity, arms: [wide, narrow]}
    tests:
      - name: wider beats narrower
        measure: fidelity@last
        arm: wide
        baseline: narrow
        expect: greater
        margin: 0.05
      - name: full history grows linearly
        measure: kv_linearity
        arm: full
        expect: greater
        than: 0.999
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """TINY run once (6 tiny runs): its folder, its page's path and first text, and the args."""
    from toolkit.cli import main

    tmp_path = tmp_path_factory.mktemp("toy")
    spec = tmp_path / "findings.yaml"
    spec.write_text(textwrap.dedent(TINY))
    out = tmp_path / "report" / "FINDINGS.md"
    args = [f"spec={spec}", f"out={out}", f"run_root={tmp_path / 'runs'}", "draft=true"]
    assert main(["findings", *args]) == 0
    return tmp_path, out, out.read_text(), args


def test_findings_command_end_to_end_reproduces_its_numbers(toy):
    from toolkit.cli import main

    _, out, first, args = toy
    assert "6 runs executed" in first and "Git revision" in first and "Wall time" in first
    assert first.startswith("# Toy findings") and "Two window widths on fresh prompts." in first
    assert "2 held-out prompts per arm (prompts 5..6)" in first
    assert "[`findings.yaml`](../findings.yaml)" in first  # the spec, relative to the page
    # KV growth is exact, but 2 seeds give no interval (and no Wilcoxon p below 0.5): never
    # "holds"
    assert "full history grows linearly" in first and "only 2 value(s)" in first
    assert (out.parent / "figures/findings/toy-fidelity.png").stat().st_size > 1000
    assert (out.parent / "figures/findings/toy-effects.png").stat().st_size > 1000
    assert main(["findings", *args]) == 0  # a re-run reuses the stored runs
    second = out.read_text()
    assert "0 runs executed, 6 reused" in second

    def numbers(text):
        return [ln for ln in text.splitlines() if ln.startswith("| [toy]")]
    assert numbers(first) == numbers(second) and len(numbers(first)) == 2
    assert main(["findings", *args, "render_only=true"]) == 0
    third = out.read_text()
    assert "re-rendered from the store" in third and "0 runs executed, 6 reused" in third
    assert numbers(third) == numbers(first)
    # the file is in no commit (a temporary folder): the pre-registration check says so
    assert "- Findings file: `findings.yaml`, not in any commit" in first
    assert "Pre-registration: ⚠ the findings file is not committed" in first
    assert "⚠ DRAFT: rendered from a findings file with uncommitted changes" in first
    # every new run recorded the code its verdicts depend on, and it is unchanged
    assert "- Code: the verdict code and the metric modules the measures read are those the " \
           "runs recorded" in first
    # no statistics block: the first pages' methods, Holm's p shown beside the raw one only
    assert "each verdict uses its own raw p (no correction)" in first
    assert "Wilcoxon signed-rank" in first and "BCa" in first and "not testable" not in first


TINY_STATS = TINY.replace("title: Toy findings", "title: Toy findings v2").replace(
    "claims:", """statistics: {test: permutation, interval: t, correction: holm, not_testable: 0.9,
             exact: true, band_test: true}
claims:""", 1).split("claims:")[0] + """claims:
  - id: toy
    claim: a wider window joins blocks more smoothly
    paper: none
    figures:
      - {measure: boundary_jump/local, arms: [wide, narrow]}
    tests:
      - name: wider has smaller boundary jumps
        measure: boundary_ratio@whole
        arm: wide
        baseline: narrow
        expect: less
        margin: 0.05
      - name: wider holds more KV
        measure: kv_bytes@last
        arm: wide
        baseline: narrow
        expect: greater
  - id: motion
    claim: a wider window moves more
    paper: none
    tests:
      - name: wider moves more
        measure: moving@last
        arm: wide
        baseline: narrow
        expect: greater
        margin: 0.05
"""


def _rows(page: str) -> dict[str, list[str]]:
    """The verdict table's rows by test name: a list of cells each."""
    return {cells[1]: cells for cells in ([c.strip() for c in ln.strip("|").split("|")]
                                          for ln in page.splitlines() if ln.startswith("| ["))}


def test_a_statistics_block_renders_holm_sde_exact_and_not_testable(toy):
    """The same stored runs under a file with ``statistics:``: a derived measure with raw and
    Holm p and its detectable effect, an exact KV measure (no p), a saturated measure (the tiny
    model's frames all count as moving) not testable, and a figure of a logged sub-curve."""
    from toolkit.cli import main

    tmp_path, _, _, args = toy
    spec = tmp_path / "stats.yaml"
    spec.write_text(textwrap.dedent(TINY_STATS))
    out = tmp_path / "report" / "STATS.md"
    assert main(["findings", f"spec={spec}", f"out={out}", args[2], "render_only=true",
                 "draft=true"]) == 0
    page = out.read_text()
    assert "| p | Holm p | SDE |" in page
    assert "Claims: 1 inconclusive; 1 not testable." in page
    assert ("**Multiple tests.** 1 of the 3 tests were tested (2 not: exact values or not "
            "testable)") in page
    assert "Verdicts use Holm's adjusted p" in page
    assert "sign-flip permutation test" in page and "Student t interval" in page
    assert "Not testable (1)" in page and "Exact:" in page and "BCa" not in page
    rows = _rows(page)
    jumps, kv, moving = (rows[n] for n in ("wider has smaller boundary jumps",
                                           "wider holds more KV", "wider moves more"))
    assert jumps[5] == jumps[6] == "0.5"  # 2 seeds: the smallest sign-flip p; Holm over 1 test
    assert jumps[7] == "∞ (larger than the margin)"
    assert kv[3] == "exact 262,144" and kv[5] == kv[6] == kv[7] == "—"  # one 8-frame block more
    assert kv[9].startswith("✅ holds")
    assert moving[9].startswith("⊘ not testable")
    assert "→ **not testable** (`narrow` sits at the measure's ceiling (1) in 2 of 2 seeds" in page
    assert "set by the arms' configs alone, so reported as exact values, not tested" in page
    assert "no effect is detectable at 80% power with n=2" in page
    assert (out.parent / "figures/stats/toy-boundary_jump-local.png").stat().st_size > 1000


def test_first_seed_moves_every_arm_to_fresh_prompts(tmp_path):
    path = tmp_path / "findings.yaml"
    path.write_text(textwrap.dedent(TINY))
    jobs = plan(load_spec(path), 2)
    assert sorted({j.seed for j in jobs}) == [5, 6]
    assert {j.cfg.seed for j in jobs} == {5, 6}
    path.write_text(textwrap.dedent(TINY).replace("first_seed: 5", "first_seed: -1"))
    with pytest.raises(ConfigError, match="first_seed=-1 must be >= 0"):
        load_spec(path)


def test_the_follow_up_reuses_the_arms_on_fresh_prompts():
    """The follow-up copies its arms from findings.yaml: they must not drift apart."""
    main = load_spec()
    follow = load_spec(main.path.with_name("findings-followup.yaml"))
    assert follow.arms_used() and all(follow.arms[a] == main.arms[a] for a in follow.arms)
    assert not set(main.prompts(main.seeds)) & set(follow.prompts(follow.seeds))


def test_each_findings_file_keeps_its_own_wall_time(tmp_path):
    from toolkit.findings.run import timing_file

    other = tmp_path / "followup.yaml"
    other.write_text(textwrap.dedent(TINY))
    assert timing_file("runs", load_spec()) == Path("runs/findings-run.json")
    assert timing_file("runs", load_spec(other)) == Path("runs/followup-run.json")


def test_findings_options_are_checked(tmp_path):
    from toolkit.cli import main

    assert main(["findings", "seeds=1", f"run_root={tmp_path}"]) == 2
    assert main(["findings", "workers", f"run_root={tmp_path}"]) == 2
    assert main(["findings", "quick=maybe", f"run_root={tmp_path}"]) == 2
    assert main(["findings", "render_only=true", f"run_root={tmp_path}"]) == 2  # nothing stored


def test_figures_name_logged_curves(tmp_path):
    base = textwrap.dedent(TINY)
    for measure, message in (
            ("boundary_ratio@last", "is a ratio computed per window, not a logged curve; plot "
                                    "a logged one: boundary_jump, boundary_jump/within, "
                                    "boundary_jump/local"),
            ("fidelity@last", "has a window; a figure plots the logged curve over the whole "
                              "rollout: write 'fidelity'"),
            ("kv_linearity", "summarises the whole curve kv_bytes; plot 'kv_bytes'"),
            ("boundary_jump/jump", "series of 'boundary_jump/jump'")):
        path = tmp_path / "f.yaml"
        path.write_text(base.replace("{measure: fidelity,", f"{{measure: {measure},"))
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_spec(path)
    path.write_text(base.replace("{measure: fidelity,", "{measure: boundary_jump/local,"))
    assert load_spec(path).claims[0].figures[0]["measure"] == "boundary_jump/local"
