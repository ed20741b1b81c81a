"""The figures the README and docs quote, generated from the artifacts behind them.

A figure in a Markdown file sits between markers naming its generator::

    colour recall falls to chance, <!-- fig:memory-masked -->0.23 vs 0.19<!-- /fig -->

``rollbench docs`` rewrites every marked figure of README.md and docs/*.md from its generator
(``FIGURES``: a model card, a re-measurement on the shipped weights, the schedules themselves);
``rollbench docs check=true`` changes nothing and fails naming each figure that differs (the
test suite runs the same check, so a figure edited by hand fails it).

The generators of a world's figures live with the world (``World.figures``: marker name ->
``module:function``, imported when the figure is made); this tool names no world.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKED = re.compile(r"<!-- fig:(?P<name>[\w-]+) -->(?P<body>.*?)<!-- /fig -->", re.DOTALL)
FIGURES: dict[str, Callable[[], str]] = {}


def _lazy(path: str) -> Callable[[], str]:
    """The generator at ``module:function``, imported when it is first called."""
    def make() -> str:
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)()
    make.__qualname__ = path
    return make


def world_figures() -> dict[str, Callable[[], str]]:
    """Every registered world's figure generators (``World.figures``), by marker name; a name
    two worlds give is a ValueError naming both."""
    from toolkit.plugins import WORLDS

    found: dict[str, Callable[[], str]] = {}
    owner: dict[str, str] = {}
    for world in WORLDS.items().values():
        for name, path in world.figures.items():
            if name in found:
                raise ValueError(f"figure {name!r} is given by worlds {owner[name]!r} and "
                                 f"{world.name!r}; a marker names one generator")
            found[name], owner[name] = (_lazy(path) if isinstance(path, str) else path), world.name
    return found


def figure(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Register a figure's generator under ``name`` (the marker's ``fig:NAME``)."""
    def wrap(fn: Callable[[], str]) -> Callable[[], str]:
        FIGURES[name] = fn
        return fn
    return wrap


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown files whose figures are generated: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def figure_names(text: str) -> list[str]:
    """The names of the figures marked in ``text``, in order; ValueError for an unknown one."""
    names = [m["name"] for m in MARKED.finditer(text)]
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown} in the markers; allowed: "
                         f"{sorted(FIGURES)}")
    return names


def regenerate(text: str, values: dict[str, str] | None = None) -> str:
    """``text`` with every marked figure replaced by its generator's output (``values``:
    outputs already made, by name)."""
    figure_names(text)
    made = dict(values or {})

    def fill(m: re.Match[str]) -> str:
        if m["name"] not in made:
            made[m["name"]] = FIGURES[m["name"]]()
        return f"<!-- fig:{m['name']} -->{made[m['name']]}<!-- /fig -->"

    return MARKED.sub(fill, text)


def stale(text: str, values: dict[str, str] | None = None) -> list[str]:
    """Each marked figure of ``text`` that differs from its generator: ``name: 'written' ->
    'generated'``."""
    fresh = {m["name"]: m["body"] for m in MARKED.finditer(regenerate(text, values))}
    return [f"{m['name']}: {m['body']!r} -> {fresh[m['name']]!r}"
            for m in MARKED.finditer(text) if m["body"] != fresh[m["name"]]]


def cmd_docs(overrides: list[str]) -> int:
    """``rollbench docs``: regenerate the marked figures of README.md and docs/*.md in place;
    ``check=true``: change nothing, exit 1 naming the figures that differ."""
    allowed = {"check": ("true", "false")}
    opts = dict(o.split("=", 1) for o in overrides if "=" in o)
    bad = [o for o in overrides if "=" not in o or o.split("=", 1)[0] not in allowed
           or o.split("=", 1)[1] not in allowed[o.split("=", 1)[0]]]
    if bad:
        raise ValueError(f"rollbench docs {' '.join(bad)}: allowed check=true or check=false")
    check = opts.get("check") == "true"
    values: dict[str, str] = {}
    problems = []
    for path in documents():
        text = path.read_text()
        if not MARKED.search(text):
            continue
        new = regenerate(text, values)
        changed = stale(text, values)
        rel = path.relative_to(ROOT)
        problems += [f"{rel}: {c}" for c in changed]
        if changed and not check:
            path.write_text(new)
        print(f"{rel}: {len(figure_names(text))} figures, {len(changed)} "
              f"{'differ' if check else 'rewritten'}")
    for line in problems:
        print(f"  {line}")
    return 1 if check and problems else 0


def card(name: str) -> dict[str, Any]:
    """A shipped model's card (``<name>.json`` beside its weights, on the weights search path:
    ``toolkit.models.weights``)."""
    from toolkit.models.weights import find_weights, missing_weights

    path = find_weights(f"{name}.json")
    if not path.is_file():
        raise FileNotFoundError(missing_weights(path, f"the card {name!r}",
                                                "it ships beside its weights"))
    return json.loads(path.read_text())


FIGURES.update(world_figures())
