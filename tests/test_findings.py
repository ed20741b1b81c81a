"""``rollbench findings``: the spec, the measures, the verdict rules and one tiny end-to-end run."""

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from toolkit.config import ConfigError
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


def test_a_causal_rollouts_prefix_is_its_short_video():
    """The findings read 1x effects from the first frames of the 24x runs."""
    from toolkit.config import build, compose_config
    from toolkit.rollout import rollout

    cfg = compose_config(["strategy=packforcing-world", "model=world-pf"])
    model, _ = build(cfg)
    short = rollout(model, build(cfg)[1], [model.default_prompt(3)], 8, seed=3)
    long = rollout(model, build(cfg)[1], [model.default_prompt(3)], 16, seed=3)
    torch.testing.assert_close(long.latents[:, :, :8], short.latents, rtol=0, atol=0)


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


def test_findings_command_end_to_end_reproduces_its_numbers(tmp_path, capsys):
    from toolkit.cli import main

    spec = tmp_path / "findings.yaml"
    spec.write_text(textwrap.dedent(TINY))
    out = tmp_path / "report" / "FINDINGS.md"
    args = [f"spec={spec}", f"out={out}", f"run_root={tmp_path / 'runs'}"]
    assert main(["findings", *args]) == 0
    first = out.read_text()
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


def test_runs_made_by_other_code_are_flagged():
    """Run keys hash the config, not the code: reused runs of older code must show."""
    from types import SimpleNamespace

    from reports.findings import provenance

    same = SimpleNamespace(runs=pd.DataFrame({"revision": ["abc"] * 3}))
    assert "⚠" not in provenance(same, "abc")[0] and "`abc` (3 runs)" in provenance(same, "abc")[0]
    mixed = SimpleNamespace(runs=pd.DataFrame({"revision": ["abc", "old", "old"]}))
    line = provenance(mixed, "abc")[0]
    assert "⚠" in line and "`old` (2 runs)" in line and "fresh `run_root`" in line


def imports_of(path: Path) -> set[str]:
    """Every module a source file imports, at the top or inside a function (static)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # from toolkit import world
    return found


def test_findings_and_reports_do_not_import_each_other():
    """The library plans and measures, reports render, the command ties them: one direction.

    Nothing under toolkit/findings imports reports/ (the findings page imports
    toolkit.findings), and no toolkit module but the command line (cli.py) imports reports/.
    """
    root = Path(__file__).resolve().parents[1]
    upward = {str(p.relative_to(root)): sorted(m for m in imports_of(p)
                                               if m == "reports" or m.startswith("reports."))
              for p in (root / "toolkit").rglob("*.py") if p.name != "cli.py"}
    assert {p: m for p, m in upward.items() if m} == {}
    assert any(m.startswith("toolkit.findings") for m in imports_of(root / "reports" /
                                                                   "findings.py"))


def test_strategies_do_not_import_the_world():
    """Strategies are written against the contract and the generic model, never one concrete
    model: nothing under strategies/ imports toolkit.world (weights are found through
    toolkit.weights; the world's PackForcing recipe lives in toolkit/world/pf_train.py)."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "strategies").rglob("*.py"))
    assert len(files) >= 10  # the check reads the package, compressors included
    world = {str(p.relative_to(root)): sorted(m for m in imports_of(p)
                                              if m == "toolkit.world" or
                                              m.startswith("toolkit.world."))
             for p in files}
    assert {p: m for p, m in world.items() if m} == {}


def test_the_import_check_sees_lazy_imports(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from reports.findings import write\n")
    assert "reports.findings" in imports_of(tmp_path / "m.py")
    (tmp_path / "w.py").write_text("def g():\n    from toolkit import world\n")
    assert "toolkit.world" in imports_of(tmp_path / "w.py")
