"""The sections of a report as data, and its provenance footer.

:func:`reports.compare.build_report` fills a :class:`Report`; ``reports.render`` prints it.
The provenance says where the numbers come from: the git revisions and package versions the
runs recorded, every run's config (the params common to all, then what differs), the model
cards the runs recorded (as artifacts), and the machine that rendered the report.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pandas as pd

from reports import data
from reports.tables import Table


@dataclass
class Image:
    """A PNG of the report: its path under the output folder and its bytes."""

    path: str
    data: bytes
    alt: str


@dataclass
class Strip:
    """The frames at the length marks of one run per variant, and its video."""

    variant: str
    seed: str
    image: Image | None
    caption: str
    video: str | None


@dataclass
class Sweep:
    """A sweep's study: trial counts, its Optuna plots (or why not) and its best trials."""

    study: str
    question: str
    counts: str
    front: Image | None
    front_note: str
    importances: Image | None
    importance_note: str
    best: Table


@dataclass
class Provenance:
    """Where the numbers come from: revisions, versions, configs, model card, machine."""

    revisions: Table
    versions: Table
    common: list[tuple[str, str]]
    runs: Table
    configs: list[tuple[str, list[tuple[str, str]]]]
    cards: list[tuple[str, str]]
    machine: list[tuple[str, str]]


@dataclass
class Report:
    """Everything the writers print, already computed and formatted."""

    experiment: str
    question: str
    summary: str
    legend: str
    runs: Table
    headline: list[Table]
    scalars: Table | None
    curves: list[Image]
    strips: list[Strip]
    sweep: Sweep | None
    provenance: Provenance
    notes: list[str] = field(default_factory=list)
    worlds: list[tuple[Table, str]] = field(default_factory=list)  # worlds' sections: table, note
    answer: Table | None = None  # quality at the marks against peak KV (``reports.answer``)
    pareto: Image | None = None  # quality at the last mark against peak KV


def machine_info() -> list[tuple[str, str]]:
    """The machine rendering the report: platform, Python, CPU count, torch version."""
    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return [("platform", platform.platform()), ("python", platform.python_version()),
            ("CPUs", str(os.cpu_count())), ("torch", torch)]


def whole(value: Any) -> str:
    """A whole number as text; "—" where missing."""
    return "—" if value is None or pd.isna(value) else str(int(value))


def card_text(card: dict[str, Any]) -> str:
    """A model card as indented JSON, long lists cut to their first items."""

    def short(value: Any) -> Any:
        if isinstance(value, list) and len(value) > 12:
            return [*value[:6], f"... {len(value) - 6} more"]
        if isinstance(value, dict):
            return {k: short(v) for k, v in value.items()}
        return value

    return json.dumps(short(card), indent=1, sort_keys=True)


def provenance(exp: data.Experiment, machine: list[tuple[str, str]],
               cards: Sequence[tuple[str, dict[str, Any]]] = ()) -> Provenance:
    """The footer of an experiment's report (``cards``: :func:`reports.data.model_cards`)."""
    every = pd.concat([exp.runs, exp.others], ignore_index=True)
    revisions = Table("Git revisions", ["revision", "uncommitted changes", "runs"], [])
    if "tags.git_revision" in every:
        grouped = every.fillna({"tags.git_dirty": "unknown"}).groupby(
            ["tags.git_revision", "tags.git_dirty"]).size()
        revisions.rows = [[str(r), str(d), str(n)] for (r, d), n in grouped.items()]
    versions = Table("Package versions (as the runs recorded them)", ["package", "versions"], [])
    for col in sorted(c for c in every if c.startswith("tags.version.")):
        seen = every[col].dropna().value_counts().sort_index()
        versions.rows.append([col[len("tags.version."):],
                              ", ".join(f"{v} ({n} runs)" for v, n in seen.items())])
    runs = exp.runs
    pcols = sorted(c for c in runs if c.startswith("params."))
    common = [(c[7:], str(runs[c].iloc[0])) for c in pcols
              if runs[c].notna().all() and runs[c].nunique() == 1]
    shown = {k for k, _ in common} | {"seed", "video.latent_frames"}
    table = Table("Runs", ["variant", "seed", "latent frames", "prompt", "run key",
                           "other params"], [])
    configs = []
    for _, r in runs.iterrows():
        params = [(c[7:], str(r[c])) for c in pcols if pd.notna(r[c])]
        label = f"{r['variant']} seed {whole(r['seed'])} ({whole(r['latent_frames'])} frames)"
        configs.append((label, params))
        table.rows.append([r["variant"], whole(r["seed"]), whole(r["latent_frames"]),
                           str(r["prompt"]), str(r.get("run_key") or "—")[:12],
                           "; ".join(f"{k}={v}" for k, v in params if k not in shown) or "—"])
    shown_cards = [(title, card_text(card)) for title, card in cards]
    return Provenance(revisions, versions, common, table, configs, shown_cards, machine)
