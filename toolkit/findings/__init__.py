"""``rollbench findings``: the paper's claims re-measured, each with a pre-stated verdict rule.

The experiment is ``ablations/findings.yaml``: arms (run configs), claims, and per claim the
checks (a measure, an arm, an optional paired baseline, the expected direction, a threshold).
``spec`` loads and checks that file; ``run`` plans and runs every (arm, seed) as a tracked job
(and holds the command); ``measures`` turns stored runs into per-run measures, ``stats``
applies the verdict rules. ``reports.findings`` renders the page from the tracking store, and
the command (``toolkit.cli``) ties the two: this package never imports ``reports``.

    spec = load_spec()                                   # ablations/findings.yaml
    jobs = plan(spec, seeds=8, overrides=["run_root=runs/findings"])
    run_jobs(jobs, workers=2)
    table = measure_runs(spec, runs, uri)                # one row per run, a column per measure
    results = evaluate_spec(spec, table)                 # claim id -> Results (with Holm's p)

``measures`` computes a run's measures from its logged series (windows, bins, derived ratios),
``inference`` the tests, intervals, Holm's correction and power, ``notes`` the page's sentences
about them.
"""

from toolkit.core.bins import bin_means
from toolkit.findings.inference import (
    EXACT_MAX,
    detectable_effect,
    holm,
    p_floor,
    score_p,
    sd_upper,
    seeds_for,
    sign_flip_p,
    t_interval,
    wilcoxon_method,
    wilson_cluster,
)
from toolkit.findings.measures import (
    measure_curve,
    measure_runs,
    measure_value,
    measures_needed,
    paired_counts,
    paired_values,
    whole_measure,
    window_mean,
)
from toolkit.findings.notes import correction_note, method_notes
from toolkit.findings.run import EXPERIMENT, Job, keys_of, plan, run_jobs
from toolkit.findings.spec import (
    DERIVED,
    EXACT,
    EXPECT,
    SPEC,
    WHOLE,
    WINDOWS,
    Check,
    Claim,
    Measure,
    Pilot,
    Spec,
    Statistics,
    check_measure,
    load_spec,
    parse_measure,
)
from toolkit.findings.stats import (
    ALPHA,
    HOLDS_UNCLEAR,
    NOT_TESTABLE,
    OPPOSITE,
    SMALL,
    Result,
    alphas,
    claim_summary,
    claim_verdict,
    evaluate,
    evaluate_spec,
    margin_verdict,
    pairs_of,
    roles,
    saturation_reason,
    untestable_reason,
    values_of,
    verdict,
    wilcoxon,
)

__all__ = ["ALPHA", "DERIVED", "EXACT", "EXACT_MAX", "EXPECT", "EXPERIMENT", "HOLDS_UNCLEAR",
           "NOT_TESTABLE", "OPPOSITE", "SMALL", "SPEC", "WHOLE", "WINDOWS", "Check", "Claim",
           "Job", "Measure", "Pilot", "Result", "Spec", "Statistics", "alphas", "bin_means",
           "check_measure", "claim_summary", "claim_verdict", "correction_note",
           "detectable_effect", "evaluate", "evaluate_spec", "holm", "keys_of", "load_spec",
           "margin_verdict", "measure_curve", "measure_runs", "measure_value",
           "measures_needed", "method_notes", "p_floor", "paired_counts", "paired_values",
           "pairs_of", "parse_measure", "plan", "roles",
           "run_jobs", "saturation_reason", "score_p", "sd_upper", "seeds_for", "sign_flip_p",
           "t_interval", "untestable_reason", "values_of", "verdict", "whole_measure",
           "wilcoxon", "wilcoxon_method", "wilson_cluster", "window_mean"]
