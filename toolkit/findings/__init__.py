"""``rollbench findings``: the paper's claims re-measured, each with a pre-stated verdict rule.

The experiment is ``ablations/findings.yaml``: arms (run configs), claims, and per claim the
checks (a measure, an arm, an optional paired baseline, the expected direction, a threshold).
``spec`` loads and checks that file; ``run`` plans and runs every (arm, seed) as a tracked job
(and holds the command); ``stats`` turns stored runs into per-run measures and applies the
verdict rules. ``reports.findings`` renders the page from the tracking store, and the command
(``toolkit.cli``) ties the two: this package never imports ``reports``.

    spec = load_spec()                                   # ablations/findings.yaml
    jobs = plan(spec, seeds=8, overrides=["run_root=runs/findings"])
    run_jobs(jobs, workers=2)
    table = measure_runs(spec, runs, uri)                # one row per run, a column per measure
    results = [evaluate(check, table) for claim in spec.claims for check in claim.tests]
"""

from toolkit.findings.run import EXPERIMENT, Job, keys_of, plan, run_jobs
from toolkit.findings.spec import (
    EXPECT,
    SPEC,
    WHOLE,
    WINDOWS,
    Check,
    Claim,
    Spec,
    check_measure,
    load_spec,
)
from toolkit.findings.stats import (
    ALPHA,
    Result,
    claim_verdict,
    evaluate,
    measure_curve,
    measure_runs,
    measures_needed,
    values_of,
    verdict,
    whole_measure,
    wilcoxon,
    window_mean,
)

__all__ = ["ALPHA", "EXPECT", "EXPERIMENT", "SPEC", "WHOLE", "WINDOWS", "Check", "Claim", "Job",
           "Result", "Spec", "check_measure", "claim_verdict", "evaluate", "keys_of",
           "load_spec", "measure_curve", "measure_runs", "measures_needed", "plan", "run_jobs",
           "values_of", "verdict", "whole_measure", "wilcoxon", "window_mean"]
