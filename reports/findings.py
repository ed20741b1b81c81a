"""The findings section: each claim of the paper, its measured effect, CI, test and verdict.

A pure function of the tracking store and a findings file (it never runs a model, nor composes
a run config): the command plans the runs and passes their run keys; ``collect`` finds each
(arm, seed) in the store by its ``run_key`` tag, ``toolkit.findings`` computes the measures and
verdicts (``evaluate_spec``: the file's ``statistics`` block, Holm's adjusted p, the smallest
detectable effect, exact and not-testable measures), and ``write`` renders Markdown with its
figures beside it. What the page says about its statistics (the correction at the top, the notes
under the verdict table) comes from ``toolkit.findings.notes``, written from what was computed.
Per test the page shows p and Holm p, the smallest detectable effect at 80% power (flagged when
larger than the test's margin), exact values for measures set by the config alone (no p), and
"not testable" with its reason. Figures: ``reports.findings_figures``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reports.data import block_frames_of
from reports.findings_figures import curve_png, effects_png, measure_range
from reports.tables import num
from toolkit.findings import (
    ALPHA,
    EXPERIMENT,
    HOLDS_UNCLEAR,
    NOT_TESTABLE,
    OPPOSITE,
    SMALL,
    Check,
    Claim,
    Result,
    Spec,
    claim_summary,
    claim_verdict,
    correction_note,
    evaluate_spec,
    measure_runs,
    method_notes,
    paired_counts,
    pairs_of,
    parse_measure,
    values_of,
)
from toolkit.findings.inference import POWER, interval
from toolkit.runs.aggregate import UNBOUNDED

MARK = {"holds": "✅ holds", "fails": "❌ fails", "inconclusive": "❔ inconclusive",
        "partly holds": "◐ partly holds", NOT_TESTABLE: "⊘ not testable",
        HOLDS_UNCLEAR: "☑️ holds, size unclear", OPPOSITE: "❌ fails (opposite)",
        SMALL: "❌ fails (smaller than the margin)"}
VERDICTS = ("holds", HOLDS_UNCLEAR, "partly holds", "fails", OPPOSITE, SMALL, "inconclusive",
            NOT_TESTABLE)
ROLE = {"gate": "gate (control, alpha 0.05 first)", "primary": "primary (Holm)",
        "secondary": "secondary (unadjusted)"}


@dataclass
class Findings:
    """Everything the page shows: the spec, the per-run measures and the tests' results."""

    spec: Spec
    table: pd.DataFrame
    results: dict[str, list[Result]]
    missing: list[tuple[str, int]]
    runs: pd.DataFrame
    uri: str


def collect(planned: Mapping[tuple[str, int], str],
            uri: str) -> tuple[pd.DataFrame, list[tuple[str, int]]]:
    """The latest finished run of every planned ``(arm, seed) -> run key`` (arm, seed, run_id,
    revision as shown, its commit and dirty flag), and the planned pairs the store lacks."""
    from toolkit.runs.aggregate import load_runs

    stored = load_runs(uri, EXPERIMENT)
    rows, missing = [], []
    for (arm, seed), key in planned.items():
        hit = stored[stored["run_key"] == key] if len(stored) else stored
        if len(hit):
            run = hit.iloc[0]
            tag = run.get("tags.git_revision")
            rev = tag[:12] if isinstance(tag, str) and tag else "unknown"
            dirty = str(run.get("tags.git_dirty", "unknown")) == "true"
            rows.append({"arm": arm, "seed": seed, "run_id": run["run_id"],
                         "revision": rev + (" (uncommitted changes)" if dirty else ""),
                         "commit": rev, "dirty": dirty,
                         "block_frames": block_frames_of(run.to_dict()),
                         "code": code_tags(run.to_dict())})
        else:
            missing.append((arm, seed))
    columns = ["arm", "seed", "run_id", "revision", "commit", "dirty", "block_frames", "code"]
    return pd.DataFrame(rows, columns=columns), missing


def code_tags(run: Mapping[str, object]) -> dict[str, str]:
    """The ``code.*`` tags a run recorded (path -> hash; ``toolkit.findings.run.code_hashes``)."""
    from toolkit.findings.registration import CODE_TAG

    head = "tags." + CODE_TAG
    return {k[len(head):]: str(v) for k, v in run.items()
            if k.startswith(head) and isinstance(v, str) and v}


def provenance(f: Findings, head: str) -> list[str]:
    """Which code made the runs; a warning when it is not the code rendering them.

    A run key hashes the config, not the code, so runs stored before a fix are reused by a
    re-run: this line is what shows it. With the runs' ``code`` hashes (the verdict code and
    the metric modules the measures read), a second line compares them with the code now and
    with the code committed with the findings file.
    """
    counts = f.runs["revision"].value_counts()
    line = "- Runs made at: " + ", ".join(f"`{r}` ({n} runs)" for r, n in counts.items())
    if any(r != head for r in counts.index):
        line += (f". ⚠ Not all at this revision (`{head}`): runs made by other code are "
                 "reused by run key; use a fresh `run_root` to re-run them all.")
    if "code" not in f.runs:
        return [line]
    from toolkit.findings.registration import code_check, code_hashes, committed_hashes, file_commit

    now = code_hashes(f.spec)
    got = file_commit(f.spec.path)
    at_spec = committed_hashes(got[0], list(now)) if got else None
    return [line, *code_check(list(f.runs["code"]), now, at_spec)]


def analyse(spec: Spec, planned: Mapping[tuple[str, int], str], uri: str) -> Findings:
    """Measures and verdicts of the stored runs of ``planned`` (``(arm, seed) -> run key``)."""
    runs, missing = collect(planned, uri)
    if runs.empty:
        from toolkit.errors import ConfigError
        from toolkit.runs.stores import mask

        raise ConfigError(f"no finished findings runs in {mask(uri)}: run `rollbench findings` "
                          "without render_only first")
    table = measure_runs(spec, runs, uri)
    results = evaluate_spec(spec, table)
    return Findings(spec, table, results, missing, runs, uri)


# --- Markdown --------------------------------------------------------------------------------
def _ci(mean: float, low: float, high: float,
        bounds: tuple[float, float] = UNBOUNDED) -> str:
    """``mean [low, high]``, the interval kept in ``bounds``; the mean alone without one."""
    if not np.isfinite(low):
        return num(mean)
    low, high = np.clip((low, high), *bounds)
    return f"{num(mean)} [{num(low)}, {num(high)}]"


def _rule(r: Result) -> str:
    t = r.test
    if t.expect == "within":
        return f"within {t.than:g} ± {t.margin:g}"
    if t.expect == "at_most":
        return f"at most {t.than:g} + {t.margin:g}"
    if t.expect == "at_least":
        return f"at least {t.than:g} − {t.margin:g}"
    word = ">" if t.expect == "greater" else "<"
    return f"{word} {t.than:g}" + (f" (margin {t.margin:g})" if t.margin else "")


def _effect(t) -> str:
    return f"{t.arm} − {t.baseline}" if t.baseline else t.arm


def _p(p: float) -> str:
    return f"{p:.2g}" if np.isfinite(p) else "—"


def _exact(mean: float, low: float, high: float) -> str:
    """Exact values: ``exact 0.5``, or their range over seeds ``exact 0.4..0.6``."""
    if not np.isfinite(mean):
        return "—"
    return f"exact {num(low)}..{num(high)}" if high > low else f"exact {num(mean)}"


def _value(r: Result, span: tuple[float, float]) -> str:
    """The 24x effect: mean [95% CI], or the exact value(s) of an exact measure; under the
    margin rules identical seeds read "no variation in n seeds", not a zero-width interval."""
    if r.exact:
        return _exact(r.mean, r.low, r.high)
    if r.role and r.no_variation:
        return f"{num(r.mean)} (no variation in {len(r.values)} seeds)"
    return _ci(r.mean, r.low, r.high, span)


def _one_x(f: Findings, r: Result, span: tuple[float, float]) -> str | None:
    """The same effect in the 1x window (None without one)."""
    if not r.at_1x:
        return None
    if r.exact:
        d = values_of(r.test, f.table, r.test.at("first"))[0]
        return _exact(float(d.mean()), float(d.min()), float(d.max())) if len(d) else "—"
    return _ci(*r.at_1x, span)


def _sde(r: Result) -> str:
    """The smallest detectable effect's cell, saying so when it exceeds the margin (and, under
    the margin rules, at which alpha)."""
    if r.exact or r.verdict == NOT_TESTABLE or np.isnan(r.sde):
        return "—"
    text = "∞" if np.isinf(r.sde) else num(r.sde)
    if r.role:
        text += f" at α {r.alpha:.2g}"
    return text + (" (larger than the margin)" if r.underpowered else "")


def _p_cell(r: Result) -> str:
    """The raw p, flagged when no p these values can give is below the alpha used."""
    if r.exact:
        return "—"
    if r.role and r.unreachable and r.verdict != NOT_TESTABLE:
        return f"{_p(r.p)} ⚠ floor {r.p_floor:.2g} ≥ α {r.alpha:.2g}"
    return _p(r.p)


def _power(r: Result) -> str:
    """The bullet's sentence on power."""
    if np.isnan(r.sde):
        return "no detectable effect computed (fewer than 2 values)"
    alpha = r.alpha if r.role else ALPHA
    if np.isinf(r.sde):
        n = f"{r.nonzero} non-zero of n={len(r.values)}" if r.role else f"n={len(r.values)}"
        return (f"no effect is detectable at {POWER:.0%} power with {n} "
                f"(no p can fall below {alpha:.2g})")
    out = f"smallest detectable effect at {POWER:.0%} power {num(r.sde)}"
    if r.role:
        out += f" (alpha {alpha:.2g}, {r.nonzero} non-zero differences)"
    if r.underpowered:
        out += (f", larger than the margin {r.test.margin:g}: an effect worth the name may "
                "well end inconclusive (underpowered)")
    return out


def verdict_table(f: Findings) -> list[str]:
    margin = f.spec.statistics.rules == "margin"
    lines = ["| claim | test | effect: measure | 24x: mean [95% CI] | 1x | p | Holm p | SDE | "
             "rule | verdict |" + (" role |" if margin else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if margin else "")]
    for claim in f.spec.claims:
        for r in f.results[claim.id]:
            t = r.test
            span = measure_range(t.measure, bool(t.baseline))
            one = _one_x(f, r, span) or "—"
            role = f" {ROLE[r.role]} |" if margin else ""
            lines.append(f"| [{claim.id}](#{claim.id}) | {t.name} | `{_effect(t)}`: "
                         f"`{t.measure}` | {_value(r, span)} | {one} | {_p_cell(r)} | "
                         f"{_p(r.p_holm)} | {_sde(r)} | {_rule(r)} | {MARK[r.verdict]} |{role}")
    return lines


ARM_COLUMNS = ("fidelity@first", "fidelity@last", "identity_drift@last", "moving@last",
               "sprite_speed@last", "boundary_change@last", "kv_growth")


def _arm_interval(spec: Spec, span: tuple[float, float]) -> str:
    """One arm's interval: Wilson (seed clusters) for fractions under the margin rules."""
    if spec.statistics.rules == "margin" and span == (0.0, 1.0):
        return "wilson"
    return spec.statistics.interval


def arms_table(f: Findings) -> list[str]:
    cols = [c for c in (f.spec.columns or ARM_COLUMNS) if c in f.table]
    spans = {c: measure_range(c) for c in cols}
    lines = ["| arm | config | n | " + " | ".join(f"`{c}`" for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for arm in f.spec.arms_used():
        sub = f.table[f.table["arm"] == arm]
        cells = [_ci(*interval(sub[c].to_numpy(float), _arm_interval(f.spec, spans[c])),
                     spans[c]) for c in cols]
        config = " ".join(f"`{o}`" for o in f.spec.arms[arm])
        lines.append(f"| {arm} | {config} | {len(sub)} | " + " | ".join(cells) + " |")
    return lines


def _moments(f: Findings, t: Check) -> str:
    """A paired measure's moments: how many both runs could read, and each arm's pooled
    value on them (the two terms of the moment-weighted difference)."""
    if parse_measure(t.measure).kind != "paired":
        return ""
    a, b = pairs_of(t, f.table)
    arm = f.table[f.table["arm"] == t.arm].set_index("seed")[t.measure]
    base = f.table[f.table["arm"] == t.baseline].set_index("seed")[t.measure]
    n = int(paired_counts(arm, base).sum())
    return (f" seeds; {n} moments readable in both; pooled `{t.arm}` {num(float(a.mean()))}, "
            f"`{t.baseline}` {num(float(b.mean()))}")


def bullet(f: Findings, r: Result) -> str:
    """One test of a claim in words: its effect, statistics, power, rule and verdict."""
    t = r.test
    span = measure_range(t.measure, bool(t.baseline))
    one = _one_x(f, r, span)
    head = (f"- {t.name}: `{_effect(t)}` on `{t.measure}` = {_value(r, span)} "
            f"(n={len(r.values)}" + (f"; at 1x {one}" if one else "") + _moments(f, t) + ")")
    if r.exact:
        head += "; set by the arms' configs alone, so reported as exact values, not tested"
    elif r.verdict == NOT_TESTABLE:
        head += f", p = {_p(r.p)} (left out of Holm's family)"
    elif r.role and r.role != "primary":
        head += f", p = {_p(r.p)} ({ROLE[r.role]}); {_power(r)}"
    else:
        head += f", p = {_p(r.p)}, Holm p = {_p(r.p_holm)}; {_power(r)}"
    out = f"{head}; rule {_rule(r)} → **{r.verdict}** ({r.reason})."
    if r.bound and r.verdict != NOT_TESTABLE:
        out += (f" ⚠ Not testable by the rule of later findings files: {r.bound}. This file "
                "states no such rule, so its verdict stands as pre-registered.")
    return out


def claim_section(f: Findings, claim: Claim, images: dict[str, bytes],
                  folder: str) -> list[str]:
    res = f.results[claim.id]
    out = [f"## {claim.id}", "", f"**Claim.** {claim.claim}", "",
           f"**Paper.** {claim.paper}", ""]
    if claim.note:
        out += [f"**Note.** {claim.note}", ""]
    summary = claim_summary(res)
    word = claim_verdict(res)
    out += [f"**Verdict: {MARK[word]}{summary[len(word):]}.**", ""]
    out += [bullet(f, r) for r in res]
    out.append("")
    for fig in claim.figures:
        name = f"{folder}/{claim.id}-{fig['measure'].replace('/', '-')}.png"
        images[name] = curve_png(f, fig["measure"], list(fig["arms"]))
        out += [f"![{claim.id}: {fig['measure']}]({name})", ""]
    name = f"{folder}/{claim.id}-effects.png"
    images[name] = effects_png(f, claim)
    out += [f"![{claim.id}: per-seed effects]({name})", ""]
    return out


def to_markdown(f: Findings, header: list[str], out: Path) -> tuple[str, dict[str, bytes]]:
    """The page ``out`` and its images (path relative to the page -> PNG bytes).

    Figures go to ``figures/<page name>/`` beside the page, so pages of different findings
    files never overwrite each other's.
    """
    images: dict[str, bytes] = {}
    spec = f.spec
    counts = {w: sum(claim_verdict(f.results[c.id]) == w for c in spec.claims)
              for w in VERDICTS}
    link = Path(os.path.relpath(spec.path.resolve(), out.parent.resolve())).as_posix()
    lines = [f"# {spec.title}", "", *header, "",
             "Each claim of PackForcing (arXiv 2603.25730, summarised in ../shared/PAPER.md) is "
             "tested on a built-in world's model with paired runs (same held-out prompt, same "
             f"noise) of {spec.latent_frames} latent frames. The measures, comparisons, "
             "thresholds and verdict rules were written down before these runs, in "
             f"[`{spec.path.name}`]({link}). The 1x column is the same effect in the first "
             f"{spec.window} latent frames and '24x' in the last {spec.window} (the file's "
             "windows; a causal rollout's prefix is its shorter video).", "",
             *([spec.about, ""] if spec.about else []),
             *([f"**Record.** {' '.join(spec.record)}", ""] if spec.record else []),
             "Claims: " + "; ".join(f"{n} {w}" for w, n in counts.items() if n) + ".", "",
             correction_note(spec.statistics, f.results), ""]
    if f.missing:
        lines += [f"**Missing runs** ({len(f.missing)}): " + ", ".join(
            f"{a} seed {s}" for a, s in f.missing) + ". Their tests use the runs present.", ""]
    lines += ["## Verdicts", "", *verdict_table(f), "",
              *[f"- {n}" for n in method_notes(spec.statistics, f.results)],
              "- Intervals are kept in the measure's range; none (the mean alone) with fewer "
              "than 3 seeds.", "",
              "## Arms (mean over seeds, 95% CI)", "", *arms_table(f), ""]
    folder = f"figures/{out.stem.lower()}"
    for claim in spec.claims:
        lines += claim_section(f, claim, images, folder)
    return "\n".join(lines).rstrip() + "\n", images


def write(f: Findings, out: Path, header: list[str]) -> Path:
    """Write the Markdown page to ``out`` and its figures under ``out``'s folder."""
    text, images = to_markdown(f, header, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        path = out.parent / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    out.write_text(text)
    return out
