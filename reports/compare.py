"""``rollbench report experiment=NAME``: the compare-strategies report of stored runs.

A pure function of the tracking store (it never re-runs a model): the headline tables at the
length marks (``reports.tables``), the sections the worlds add (``World.sections``: a table of
their measures, their curves), curves over the rollout and Optuna plots (``reports.figures``),
filmstrips and links to the videos (the runs' artifacts), and a provenance footer. Written as
one self-contained HTML page (images embedded) and a Markdown twin with its images beside it
(``reports.render``).

    rollbench report experiment=strategies_24x [out=DIR] [baseline=full] [test=wilcoxon]
                     [run_root=runs] [tracking.uri=URI] [storage=OPTUNA_URL]
                     [experiments_dir=DIR]

A sweep's trials are the runs of the MLflow experiment ``sweep-NAME``: its report is
``rollbench report experiment=sweep-NAME`` (with the study's Pareto front and importances).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports import answer, data, figures, sections, tables
from reports.sections import Image, Report, Strip, Sweep
from reports.tables import Table
from toolkit.core.bins import bin_means
from toolkit.plugins import Section
from toolkit.runs.aggregate import MIN_CI, value_range
from toolkit.runs.tracking import resolve_uri

OPTIONS = ("experiment", "out", "baseline", "test", "run_root", "tracking.uri", "storage",
           "experiments_dir")
#: Curves drawn over the rollout: metric, title, log y axis (the worlds' curves go between
#: these and the system curves).
CURVE_FIGURES = (("drift", "drift", False), ("fidelity", "prompt fidelity", False),
                 ("self_similarity", "repetition (long-lag self-similarity)", False),
                 ("motion", "motion", False),
                 ("subject_consistency", "subject consistency (DINO)", False),
                 ("background_consistency", "background consistency (CLIP)", False),
                 ("clip_score", "CLIP score against the prompt", False),
                 ("flow_dynamic", "dynamic pairs (RAFT)", False))
SYSTEM_FIGURES = (("kv_bytes", "KV cache held", True),
                  ("block_seconds", "latency per block", False))


def world_sections() -> list[Section]:
    """The report sections of the toolkit's own measures (prompt switches and the re-cache,
    ``toolkit.metrics.switching.SECTIONS``), then of every registered world
    (``World.sections``); a section whose measures no run logged is left out."""
    from toolkit.metrics.switching import SECTIONS
    from toolkit.plugins import WORLDS

    return [*SECTIONS, *(s for world in WORLDS.items().values() for s in world.sections)]


def figure_list(worlds: list[Section]) -> list[tuple[str, str, bool]]:
    """Every curve the report draws, in order: the toolkit's, the worlds', the system's."""
    return [*CURVE_FIGURES, *(c for s in worlds for c in s.curves), *SYSTEM_FIGURES]


def slug(text: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def _question(name: str, experiments_dir: str | None = None) -> str:
    from toolkit.runs.grid import experiments

    return experiments([f"experiments_dir={experiments_dir}"] if experiments_dir
                       else []).get(name, "")


def _legend(baseline: str | None, requested: str | None, test: str, summary: pd.DataFrame) -> str:
    parts = ["Columns: multiples of the training length (in latent frames). Cells: the mean "
             "over seeds with its 95% CI [low, high]; **bold**: the best in its column; "
             "(n=k): only k of the variant's runs (seeds x prompts) have the value; a value "
             f"from fewer than {MIN_CI} runs has no interval (the runs table gives each "
             "variant's runs); —: missing. Intervals stay in the measure's range (a fraction's "
             "in [0, 1])."]
    if baseline:
        parts.append(f"▲ / ▼: significantly better / worse than `{baseline}` (paired {test} "
                     "test over seeds and prompts, p < 0.05).")
        pairs = summary["n_pairs"].max() if "n_pairs" in summary and len(summary) else 0
        if test == "wilcoxon" and pairs < 6:
            parts.append(f"With at most {int(pairs)} pair(s) the Wilcoxon test cannot reach "
                         "p < 0.05; `test=ttest` uses the paired t-test.")
    elif requested and requested != "none":
        parts.append(f"No variant is the baseline `{requested}`: no paired tests "
                     "(pass `baseline=VARIANT`).")
    return " ".join(parts)


def curve_figures(exp: data.Experiment, variants: list[str], marks: list[tables.Mark],
                  train: int | None, worlds: list[Section] | None = None
                  ) -> list[tuple[str, str, Any]]:
    """(metric, title, matplotlib Figure) of every curve the runs logged, in ``figure_list``
    order: the longest run per (variant, seed, prompt), bands kept in the metric's range, 0/1
    per-frame curves smoothed over one block; a world's sparse curves (values only at some
    frames, different per run) binned."""
    longest = exp.runs.sort_values(["latent_frames", "run_name"], ascending=[False, False])
    longest = longest.drop_duplicates(["variant", "seed", "prompt"])
    lines = [(m.label, m.frames) for m in marks if m.frames and m.frames != train]
    switches = common_switches(longest, variants)
    worlds = world_sections() if worlds is None else worlds
    sparse = {m for s in worlds for m in s.sparse}
    out = []
    for metric, title, log in figure_list(worlds):
        got = exp.curves.get(metric, {})
        if metric in sparse:  # values only at some frames, different per run: bin them
            got = {k: binned(*c, 2 * (train or 20)) for k, c in got.items()}
        per = {v: [got[i] for i in longest.loc[longest["variant"] == v, "run_id"] if i in got]
               for v in variants}
        per = {v: s for v, s in per.items() if any(len(c[0]) for c in s)}
        if not per:
            continue
        scale, _ = tables.unit_of(metric)
        label = tables.heading(metric, "")
        fig = figures.curve_axes(title, label + (" (log)" if log else ""), per, scale, train,
                                 lines, log, value_range(metric), block_of(exp), switches)
        out.append((metric, title, fig))
    return out


def binned(steps: np.ndarray, values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a sparse curve in bins of ``width`` latent frames (``toolkit.core.bins``),
    stepped by each bin's start (bins without a step left out)."""
    return bin_means(steps, values, width=width)


def common_switches(runs: pd.DataFrame, variants: list[str]) -> list[int]:
    """Prompt switches shared by every plotted run (runs with their own schedules, such as the
    memory world's seeds, share none and get no lines)."""
    rows = [r for _, r in runs.iterrows() if r["variant"] in variants]
    sets = [set(data.switches_of(r)) for r in rows]
    return sorted(set.intersection(*sets)) if sets else []


def _curve_images(exp: data.Experiment, variants: list[str], marks: list[tables.Mark],
                  train: int | None, worlds: list[Section]) -> list[Image]:
    return [Image(f"figures/{metric}.png", figures.png(fig), tables.heading(metric, title))
            for metric, title, fig in curve_figures(exp, variants, marks, train, worlds)]


def block_of(exp: data.Experiment) -> int | None:
    """The runs' block size: as recorded (one value for all runs), else read off a per-block
    curve; None when unknown."""
    recorded = set(exp.runs["block_frames"].dropna()) if "block_frames" in exp.runs else set()
    if len(recorded) == 1:
        return int(recorded.pop())
    if recorded:
        return None  # runs of different block sizes: no common smoothing window
    for metric in ("kv_bytes", "block_seconds"):
        for steps, _ in exp.curves.get(metric, {}).values():
            if len(steps) > 1:
                return data.block_of_curve(steps)
    return None


def _strips(exp: data.Experiment, variants: list[str], out: Path) -> list[Strip]:
    strips, used = [], set()
    for v in variants:
        runs = exp.runs[exp.runs["variant"] == v].sort_values(
            ["seed", "latent_frames", "run_name"], ascending=[True, False, False])
        run = runs.iloc[0]
        name = slug(v)
        while name in used:
            name += "-"
        used.add(name)
        marks = data.artifact(exp, run["run_id"], "marks.png", out / "artifacts")
        video = data.artifact(exp, run["run_id"], "video.mp4", out / "artifacts")
        train, frames = run["train_frames"], run["latent_frames"]
        reached = [f"{m}x" for m in tables.MARKS if pd.notna(train) and m * train <= frames]
        caption = f"last frame of {', '.join(reached)}" if reached else "last frame"
        image = Image(f"filmstrips/{name}.png", figures.upscale(marks), f"{v}: {caption}") \
            if marks else None
        strips.append(Strip(v, sections.whole(run["seed"]), image, caption,
                            os.path.relpath(video, out) if video else None))
    return strips


def _sweep(exp: data.Experiment, run_root: Path, storage: str | None) -> tuple[Sweep | None, str]:
    found, note = data.find_study(exp.name, exp.uri, run_root, storage)
    if found is None:
        return None, note
    study = found.study
    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    front, front_note = figures.front_figure(study, found.objectives)
    imp, imp_note = figures.importance_figure(study, found.objectives)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = study.best_trials if len(study.directions) > 1 else \
        ([study.best_trial] if done else [])
    names = sorted({k for t in best for k in t.params})
    table = Table("Best trials" + (" (the Pareto front)" if len(study.directions) > 1 else ""),
                  ["trial", *[tables.heading(o) for o in found.objectives], *names], [])
    scales = [tables.unit_of(o)[0] for o in found.objectives]
    for t in sorted(best, key=lambda t: t.number):
        table.rows.append([f"trial {t.number}", *[tables.num(v * k) for v, k in
                                                  zip(t.values, scales, strict=True)],
                           *[str(t.params.get(k, "—")) for k in names]])
    return Sweep(found.name, found.question, ", ".join(f"{n} {s}" for s, n in
                                                      sorted(counts.items())),
                 Image("figures/pareto.png", front, "Pareto front") if front else None,
                 front_note, Image("figures/importances.png", imp, "parameter importances")
                 if imp else None, imp_note, table), ""


def build_report(uri: str, experiment: str, out: str | Path, run_root: str | Path = "runs",
                 baseline: str | None = "full", test: str = "wilcoxon",
                 storage: str | None = None,
                 machine: list[tuple[str, str]] | None = None,
                 experiments_dir: str | None = None) -> Report:
    """Compute every section of the report of one experiment (nothing is written).

    Args:
        uri: the tracking URI.
        experiment: the MLflow experiment.
        out: where the report will be written (links to artifacts are relative to it).
        run_root: the run root (the Optuna journals are under ``<run_root>/optuna``).
        baseline: the variant (or strategy) the paired tests compare with; None: no tests.
        test: ``wilcoxon`` or ``ttest``.
        storage: the sweep's Optuna storage URL when it is not the default journal.
        machine: the machine lines of the footer (default: this machine's).
        experiments_dir: a user's config folder (the question of their own experiment).
    """
    worlds = world_sections()
    wanted = dict.fromkeys([*tables.CURVES, *(m for m, _, _ in figure_list(worlds))])
    exp = data.load_experiment(uri, experiment, list(wanted))
    out = Path(out)
    base = tables.resolve_baseline(exp.runs, baseline)
    variants = tables.order(list(exp.runs["variant"]), base) if len(exp.runs) else []
    marks = tables.marks_of(exp.runs) if len(exp.runs) else []
    trains = sorted({int(t) for t in exp.runs.get("train_frames", pd.Series()).dropna()})
    train = trains[0] if len(trains) == 1 else None
    headline, summary = tables.headline_tables(exp, marks, base, test) if variants \
        else ([], pd.DataFrame())
    first, numbers = answer.answer(exp, marks, base) if variants else (None, pd.DataFrame())
    front = answer.pareto_figure(numbers, marks[-1]) if first is not None else None
    sweep, sweep_note = _sweep(exp, Path(run_root), storage)
    notes = [*([sweep_note] if sweep_note else []), *exp.notes, *shared_note(exp, headline)]
    if not variants:
        notes.append("No finished runs in this experiment yet.")
    if len(trains) > 1:
        notes.append(f"The runs' models have different training lengths {trains}: each "
                     "run's marks use its own.")
    lengths = sorted({int(f) for f in exp.runs.get("latent_frames", pd.Series()).dropna()})
    dup = f", {exp.duplicates} duplicates dropped" if exp.duplicates else ""
    summary_line = (f"{len(exp.runs)} finished runs ({len(exp.others)} not finished{dup}) of "
                    f"{len(variants)} variant(s); latent frames "
                    f"{', '.join(map(str, lengths)) or '—'}; training length "
                    f"{train if train else 'unknown'}; baseline "
                    f"{'`' + base + '`' if base else 'none'}.")
    return Report(
        experiment=experiment,
        question=_question(experiment, experiments_dir) or (sweep.question if sweep else ""),
        summary=summary_line, legend=_legend(base, baseline, test, summary),
        runs=tables.runs_table(exp, base), headline=headline,
        scalars=tables.scalar_table(exp, base, test) if variants else None,
        worlds=[(t, s.note) for s in worlds if variants
                for t in [tables.scalar_table(exp, base, test, s.scalars, s.title)] if t],
        curves=_curve_images(exp, variants, marks, train, worlds) if variants else [],
        strips=_strips(exp, variants, out) if variants else [], sweep=sweep, answer=first,
        pareto=Image("figures/quality-vs-kv.png", front, "quality against peak KV")
        if front else None,
        provenance=sections.provenance(exp, machine or sections.machine_info(),
                                       data.model_cards(exp, out / "artifacts")), notes=notes)


def shared_note(exp: data.Experiment, headline: list[Table]) -> list[str]:
    """A note (and a flag on the latency table) when runs shared the machine while timed."""
    col = exp.runs["tags.parallel"] if "tags.parallel" in exp.runs else pd.Series(dtype=object)
    shared = pd.to_numeric(col, errors="coerce").dropna()
    if shared.empty:
        return []
    for table in headline:
        if table.title.startswith("latency"):
            table.title += " (shared machine: see the note)"
    return [f"Latency: {len(shared)} of {len(exp.runs)} runs were timed while up to "
            f"{int(shared.max())} jobs shared the machine (a parallel launcher or sweep "
            "workers); their ms per block is not comparable with runs timed alone."]


def write_report(report: Report, out: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ its PNGs) under ``out``."""
    from reports.render import to_html, to_markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("figures", "filmstrips"):  # this report's own images only
        for old in (out / sub).glob("*.png"):
            old.unlink()
    images = [*report.curves, *[s.image for s in report.strips if s.image],
              *([report.pareto] if report.pareto else [])]
    if report.sweep:
        images += [i for i in (report.sweep.front, report.sweep.importances) if i]
    for image in images:
        (out / image.path).parent.mkdir(parents=True, exist_ok=True)
        (out / image.path).write_bytes(image.data)
    html, md = out / "report.html", out / "report.md"
    html.write_text(to_html(report), encoding="utf-8")
    md.write_text(to_markdown(report), encoding="utf-8")
    return html, md


def parse(args: list[str]) -> dict[str, str]:
    """``key=value`` options of ``rollbench report``; unknown keys fail with the allowed ones."""
    opts = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise ValueError(f"rollbench report: unknown option {arg!r}; allowed: "
                             f"{', '.join(k + '=' for k in OPTIONS)}")
        opts[key] = value
    if not opts.get("experiment"):
        raise ValueError("rollbench report needs experiment=NAME (an MLflow experiment)")
    if opts.get("test", "wilcoxon") not in ("wilcoxon", "ttest"):
        raise ValueError(f"test={opts['test']!r}: allowed wilcoxon, ttest")
    return opts


def cmd_report(overrides: list[str]) -> int:
    """Render the report of ``experiment=NAME`` and print where it is."""
    opts = parse(overrides)
    run_root = Path(opts.get("run_root", "runs"))
    uri = resolve_uri(opts.get("tracking.uri"), run_root)
    name = opts["experiment"]
    out = Path(opts.get("out") or run_root / "reports" / name)
    report = build_report(uri, name, out, run_root, opts.get("baseline", "full"),
                          opts.get("test", "wilcoxon"), opts.get("storage"),
                          experiments_dir=opts.get("experiments_dir"))
    html, md = write_report(report, out)
    print(f"report of {name}: {html}\n{' ' * (11 + len(name))}{md}")
    return 0
