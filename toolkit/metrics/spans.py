"""Prompt spans: the stretches of a video under one prompt of its schedule.

A run's prompt is one prompt or a ``PromptSchedule`` (``toolkit.core.schedule``). A *span* is
a maximal run of latent frames under one prompt (consecutive schedule entries naming the same
prompt are one span); a single prompt is one span over the whole video. Every measure the
world's analysers read is read per span against the prompt in force
(:func:`world_report`): a speed never spans a switch, the opening identity is the span's own,
real clips of a schedule follow it (:func:`schedule_clips`: each span simulated under its
prompt, cut at the switches).

The word *segment* stays with ``MetricInput.segment_frames`` (equal stretches of frames for
drift and repetition); a span is as long as its prompt lasts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.core.schedule import PromptSchedule
from toolkit.metrics.base import MetricInput, NotApplicable, Unavailable


@dataclass(frozen=True)
class Span:
    """Latent frames ``[start, end)`` under one prompt.

    Attributes:
        start, end: first latent frame, one past the last.
        prompt: the prompt as the schedule gives it.
        previous: the prompt of the span before (None for the first).
    """

    start: int
    end: int
    prompt: Any
    previous: Any = None

    @property
    def frames(self) -> int:
        return self.end - self.start


def _key(prompt: Any) -> Any:
    text = prompt.text() if hasattr(prompt, "text") else prompt
    return str(text)


def schedule_of(prompt: Any) -> PromptSchedule | None:
    """The prompt as a schedule when it is one with more than one prompt, else None."""
    if prompt is None or not hasattr(prompt, "segments"):
        return None
    schedule = PromptSchedule.of(prompt)
    return schedule if len(schedule.segments) > 1 else None


def spans(inp: MetricInput) -> list[Span]:
    """The video's spans in order (one span for a single prompt)."""
    def make() -> list[Span]:
        schedule = schedule_of(inp.prompt)
        total = inp.latent_frames
        if schedule is None:
            one = inp.prompt.segments[0][1] if hasattr(inp.prompt, "segments") else inp.prompt
            return [Span(0, total, one)]
        out: list[Span] = []
        for start in schedule.starts(total):
            prompt = schedule.at(start)
            if out and _key(out[-1].prompt) == _key(prompt):
                continue  # the same prompt again: no switch
            if out:
                out[-1] = Span(out[-1].start, start, out[-1].prompt, out[-1].previous)
            out.append(Span(start, total, prompt, out[-1].prompt if out else None))
        return out
    return inp.cached("spans", make)


def switches(inp: MetricInput) -> list[Span]:
    """The spans that begin with a switch (every span but the first); Unavailable if none."""
    found = spans(inp)[1:]
    if not found:
        raise NotApplicable("needs a prompt schedule that switches inside the video; got "
                            f"{inp.prompt!r}")
    return found


def is_schedule(inp: MetricInput) -> bool:
    return len(spans(inp)) > 1


def record(inp: MetricInput, prompt: Any) -> Any:
    """One prompt of the video as the record its world's analysers read, else Unavailable."""
    world = inp.need_world()
    if world.prompt_of is None or not world.claims(prompt):
        raise Unavailable(f"needs {world.name}-world prompts for its analysers; got {prompt!r}")
    try:
        return world.prompt_of(prompt)
    except ValueError as err:
        raise Unavailable(f"cannot read the prompt {prompt!r}: {err}") from err


def pixel_range(inp: MetricInput, span: Span) -> slice:
    """The pixel frames of a span's latent frames."""
    lat = inp.frame_latent()
    inside = np.nonzero((lat >= span.start) & (lat < span.end))[0]
    return slice(int(inside[0]), int(inside[-1]) + 1)


def span_report(inp: MetricInput, span: Span, prompt: Any) -> dict[str, np.ndarray]:
    """The world's per-frame report of one span's pixel frames against ``prompt`` (cached)."""
    report = inp.analyser("report")

    def make() -> dict[str, np.ndarray]:
        frames = inp.need_frames()[pixel_range(inp, span)]
        return dict(report(frames, record(inp, prompt)))
    return inp.cached(f"span_report:{span.start}:{_key(prompt)}", make)


def world_report(inp: MetricInput) -> dict[str, np.ndarray]:
    """The analysers' per-frame report against the prompt in force (cached).

    One prompt: the world's report of the whole video. A schedule: each span read against its
    own prompt, the per-frame series joined (series with more dims, such as per-sprite
    centroids, differ in size between prompts and are left out).
    """
    def make() -> dict[str, np.ndarray]:
        parts = [span_report(inp, s, s.prompt) for s in spans(inp)]
        if len(parts) == 1:
            return parts[0]
        keys = [k for k in parts[0] if all(np.ndim(p.get(k)) == 1 for p in parts)]
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}
    return inp.cached("report", make)


def reference_clips(inp: MetricInput, clips: Callable[[Any, int, int], Any], n: int
                    ) -> np.ndarray:
    """``n`` real clips of the video's prompt(s) from ``clips(record, n, frames)``, as long as
    the video: a schedule's follow it (each span simulated under its prompt, joined at the
    switches)."""
    parts = []
    for s in spans(inp):
        rng = pixel_range(inp, s)
        parts.append(_numpy(clips(record(inp, s.prompt), n, rng.stop - rng.start)))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _numpy(x: Any) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def span_index(inp: MetricInput) -> np.ndarray:
    """The span of every latent frame."""
    out = np.zeros(inp.latent_frames, dtype=np.int64)
    for i, s in enumerate(spans(inp)):
        out[s.start:s.end] = i
    return out
