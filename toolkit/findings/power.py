"""Power before the runs: the tests no p can bring below the alpha they face, and the seed
count a pilot on its own prompts asks for (``rollbench findings pilot=true``).

The pilot runs the file's arms on ``pilot.first_seed ..`` (disjoint from the confirmatory and
quick prompts), and :func:`pilot_rows` reads, per gate and primary test, the SD of the per-seed
values; inflated to its 80% upper limit (``inference.sd_upper``), it gives the seeds that
detect ``pilot.effect`` with 80% power at the alpha the test faces. The file then states the
pilot's SD (``pilot.sd``) and the seed count, and is committed before any confirmatory run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from toolkit.findings.spec import Spec


def reach_lines(spec: Spec, seeds: int) -> list[str]:
    """Before the runs: the tests no p of ``seeds`` values (even with no zero difference) can
    bring below the alpha they face (the margin rules' roles), and the pilot's seed count."""
    from toolkit.findings.stats import alphas, roles

    alpha, floor = alphas(spec), 2.0 ** (1 - seeds)
    out = []
    for claim in spec.claims:
        for test, role in zip(claim.tests, roles(claim), strict=True):
            if test.parsed.exact and spec.statistics.exact:
                continue
            if not floor < alpha[role]:
                out.append(f"⚠ `{claim.id}` / {test.name} ({role}): with {seeds} seeds no p "
                           f"falls below {floor:.2g}, not below its alpha {alpha[role]:.2g}: "
                           "it cannot hold")
    if spec.pilot:
        out.append(pilot_line(spec, seeds))
    return out


def pilot_rows(spec: Spec, table: Any) -> list[dict[str, Any]]:
    """From the pilot's runs: per gate and primary test, the SD of its per-seed values, that SD
    at its 80% upper limit, and the seeds a detectable effect of ``pilot.effect`` needs (80%
    power) at the alpha the test faces (``stats.alphas``); the largest decides the file's."""
    from toolkit.findings.inference import sd_upper, seeds_for
    from toolkit.findings.stats import alphas, roles, values_of

    alpha, rows = alphas(spec), []
    for claim in spec.claims:
        for test, role in zip(claim.tests, roles(claim), strict=True):
            if role == "secondary" or (test.parsed.exact and spec.statistics.exact):
                continue
            d, _ = values_of(test, table)
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
            upper = sd_upper(sd, len(d)) if len(d) > 1 and sd > 0 else math.nan
            need = (seeds_for(upper, spec.pilot.effect, alpha[role]) if np.isfinite(upper)
                    else None)
            rows.append({"claim": claim.id, "test": test.name, "role": role,
                         "measure": test.measure, "n": len(d), "mean": float(np.mean(d))
                         if len(d) else math.nan, "sd": sd, "sd_upper": upper,
                         "alpha": alpha[role], "seeds": need})
    return rows


def pilot_line(spec: Spec, seeds: int) -> str:
    """How the seed count follows from the pilot (its SD inflated to the 80% upper limit)."""
    from toolkit.findings.inference import sd_upper, seeds_for
    from toolkit.findings.stats import alphas

    p = spec.pilot
    alpha = alphas(spec)["primary"]
    upper = sd_upper(p.sd, p.seeds)
    need = seeds_for(upper, p.effect, alpha)
    enough = ("enough" if seeds >= need else f"⚠ {seeds} are fewer: the effect may well be "
              "missed")
    return (f"Pilot: {p.seeds} seeds on prompts {p.prompts()[0]}..{p.prompts()[-1]}, SD "
            f"{p.sd:g}, inflated to its 80% upper limit {upper:.3g}; detecting {p.effect:g} "
            f"with 80% power at alpha {alpha:.2g} (Holm's strictest step) needs {need} seeds "
            f"({enough}).")
