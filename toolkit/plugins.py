"""Worlds as plug-ins: what a world brings (:class:`World`) and the registry that finds them.

A world is a family of videos the toolkit can generate, read back and train on: its prompts, a
simulator and analysers, models with their presets and weights, its own measures and metric
set, training recipes, the reference strategies its evaluations use, a line for the job runner,
sections for the report and the figures the docs quote. The toolkit outside
``toolkit/worlds/`` never names one: it asks the run's world (``world_of(model, prompt)``) for
what it needs.

The built-in worlds live in ``toolkit/worlds/`` (``sprites``, ``memory``); another package adds
its own through the entry-point group ``rollbench.worlds`` (an entry point naming its
:class:`World`), or by registering it (``WORLDS.register("name")(world)``) in a module the run
imports. Metrics and feature backends a world defines register themselves with ``@metric`` /
``@FEATURES.register`` when its module is imported; those registries load the worlds first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.registry import Registry


@dataclass(frozen=True)
class Section:
    """A part of the compare-strategies report that a world adds.

    Attributes:
        title: the section's heading, e.g. ``Recall (memory world)``.
        scalars: whole-run values of its table (metric or ``metric/series`` names); the table
            is left out when no run logged any of them.
        note: the paragraph above the table.
        curves: ``(metric, title, log y)`` of curves drawn over the rollout.
        sparse: curves logged only at some frames (binned before they are drawn).
    """

    title: str
    scalars: tuple[str, ...] = ()
    note: str = ""
    curves: tuple[tuple[str, str, bool], ...] = ()
    sparse: tuple[str, ...] = ()


@dataclass(frozen=True)
class World:
    """What a world plug-in provides; everything but ``name`` and ``claims`` is optional.

    Attributes:
        name: the registry name (``model.world`` of its models names it too).
        description: one line for ``rollbench ls``.
        claims: whether a prompt (a record, its text, a schedule) is one of this world's.
        prompt_of: the prompt record its analysers read, from what ``claims`` accepted
            (ValueError when it cannot be read).
        report: ``(frames, prompt) -> {match, <attribute>_ok..., speed}`` per frame: prompt
            fidelity read back by the analysers (``match`` and each ``*_ok``: 0/1 per frame;
            ``speed``: px/frame, NaN where nothing moves or nothing is seen).
        identities: ``frames -> [Counter of (colour, shape)]`` per frame: what is seen.
        attributes: ``prompt record -> {attribute: value}``: what a prompt asks for, by the
            attribute names the switch measures read (``toolkit.metrics.switching``):
            ``background``, ``colour``, ``shape``, ``count`` (read by the report's ``*_ok``)
            and ``speed`` (px/frame, against the report's ``speed``); a switch is measured on
            the attributes whose values differ.
        references: ``(prompt, n, frames) -> (n, frames, 3, H, W)``: real clips of a prompt
            from the world's simulator.
        frozen_speed: px/frame under which a frame counts as frozen.
        weights: the folder of its shipped weights (on the weights search path).
        presets: the model presets (``ablations/model/NAME.yaml``) that run it.
        recipes: ``rollbench train NAME`` -> ``toolkit.models.recipes.Recipe``.
        strategies: reference strategies (registry names) its evaluations use.
        metric_sets: named metric sets it adds (``tracking.metrics=NAME``).
        summary: the job runner's line of a finished run's scalars (None: nothing to say).
        columns: ``(metric, header)`` it adds to a grid's summary table.
        sections: what it adds to the compare-strategies report.
        figures: the README's and docs' figures it generates (``rollbench docs``): marker
            name -> ``module:function`` (imported when the figure is made) or the function.
    """

    name: str
    claims: Callable[[Any], bool]
    description: str = ""
    prompt_of: Callable[[Any], Any] | None = None
    report: Callable[[Any, Any], Mapping[str, Any]] | None = None
    identities: Callable[[Any], list] | None = None
    attributes: Callable[[Any], Mapping[str, Any]] | None = None
    references: Callable[[Any, int, int], Any] | None = None
    frozen_speed: float | None = None
    weights: Path | None = None
    presets: tuple[str, ...] = ()
    recipes: Mapping[str, Any] = field(default_factory=dict)
    strategies: tuple[str, ...] = ()
    metric_sets: Mapping[str, Sequence[str]] = field(default_factory=dict)
    summary: Callable[[Mapping[str, float]], str | None] | None = None
    columns: tuple[tuple[str, str], ...] = ()
    sections: tuple[Section, ...] = ()
    figures: Mapping[str, str | Callable[[], str]] = field(default_factory=dict)


WORLDS: Registry[World] = Registry("world", "rollbench.worlds", "toolkit.worlds")


def world_of(model: Any = None, prompt: Any = None) -> World | None:
    """The world of a run: its model's (``model.world``, a registry name), else the first
    registered world that claims the prompt (a schedule: whole, else every prompt in it),
    else None."""
    name = getattr(model, "world", None)
    if isinstance(name, str):
        return WORLDS.get(name)
    if prompt is None:
        return None
    worlds = WORLDS.items().values()
    found = next((w for w in worlds if w.claims(prompt)), None)
    segments = getattr(prompt, "segments", None)
    if found is None and segments:  # a schedule: the world that claims each of its prompts
        found = next((w for w in worlds if all(w.claims(p) for _, p in segments)), None)
    return found
