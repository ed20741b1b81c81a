"""Prompt switches: how fast a video follows a new prompt, what it carries over, how it cuts.

A switch is a span that begins where the prompt changes (``toolkit.metrics.spans``). It is read
on the attributes the new and the previous prompt ask differently (the world's
``attributes``: background, colour, shape, count, speed); per latent frame of the span, an
attribute shows the NEW value (1, 0, or NaN where unreadable) and still shows the OLD one:

- background, colour, shape, count: the world's report of the span against the new prompt
  (its ``background_ok``, ``colours_ok``, ``shapes_ok``, ``count_ok``) and against the old;
- speed: the report's sprite speed (each prompt's own sprites) averaged over the frame and the
  frames ahead of it, two blocks in all, inside the span (a bounce inside one block reads
  slow; the span's first two frames, whose one-frame steps read whole-pixel jumps, are left
  out), nearer the new prompt's px/frame than the old's (new) or the converse (old).

On a real model the one attribute ``prompt`` reads CLIP instead: a frame shows the new prompt
where its CLIP cosine to the new prompt's text beats the one to the old prompt's, the old one
where it loses (``clip_switch_*``; needs the ``clip`` backend's local weights).

Measures (latent frames are counted from the switch's first frame):

- response of an attribute: the first frame that shows the new value and opens a stretch of
  one block (clipped at the span's end) whose readable frames show it at least half the time.
  A switch takes when every attribute it changes takes; its response is the slowest one's.
  ``switch_never``: the share of switches (of an attribute's switches) that never take inside
  their span; the ``switch_response`` mean is over those that took.
- carry-over: frames of the span that still show the old value of any changed attribute (per
  attribute: of that one).
- jump: the mean absolute pixel change into the switch's first frame over the mean change
  between frames inside blocks (1 = as smooth as inside a block; a hard cut is far above),
  beside the same ratio at block boundaries without a switch (``switch_jump/blocks``).

A video that follows its schedule exactly (simulator clips cut at the switches) responds in 0
frames with 0 carried over; one that ignores a switch never takes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.metrics import spans
from toolkit.metrics.base import MetricInput, Unavailable, metric, pool
from toolkit.metrics.video import _boundary_changes
from toolkit.plugins import Section

#: The report's per-frame reading of each attribute (``World.report``).
READS = {"background": "background_ok", "colour": "colours_ok", "shape": "shapes_ok",
         "count": "count_ok"}
SHOWS = 0.5  # a latent frame shows a value when at least half of its pixel frames read it
SPEED_BLOCKS = 2  # speed is read over two blocks ahead (a bounce inside one block reads slow)


@dataclass
class Switch:
    """One switch read: per changed attribute, per latent frame of its span, how much the
    frame shows the new value (``new``) and the old one (``old``), in [0, 1] or NaN."""

    span: spans.Span
    new: dict[str, np.ndarray]
    old: dict[str, np.ndarray]

    def response(self, window: int) -> dict[str, int | None]:
        """Per attribute, frames until it took (None: never inside the span)."""
        return {a: took_at(v, window) for a, v in self.new.items()}

    def carry(self) -> dict[str, int]:
        """Per attribute, and ``""`` for any, the frames still showing the old value."""
        shows = {a: np.nan_to_num(v, nan=0.0) >= SHOWS for a, v in self.old.items()}
        out = {a: int(s.sum()) for a, s in shows.items()}
        out[""] = int(np.logical_or.reduce(list(shows.values())).sum()) if shows else 0
        return out


def took_at(new: np.ndarray, window: int) -> int | None:
    """The first frame showing the new value that opens a ``window``-frame stretch (clipped at
    the end) whose readable frames show it at least half the time; None when there is none."""
    for f in range(len(new)):
        if not new[f] >= SHOWS:  # NaN: unreadable
            continue
        ahead = new[f:f + window]
        ahead = ahead[np.isfinite(ahead)]
        if (ahead >= SHOWS).mean() >= 0.5:
            return f
    return None


def _latent(inp: MetricInput, span: spans.Span, values: np.ndarray) -> np.ndarray:
    """Per-pixel-frame values of a span pooled to its latent frames."""
    lat = inp.frame_latent()[spans.pixel_range(inp, span)] - span.start
    return pool(np.asarray(values, dtype=float), lat, span.frames)


def _ahead(values: np.ndarray, width: int) -> np.ndarray:
    """Per frame, the mean of the finite values of it and the ``width - 1`` frames after it
    (the last ``width`` frames near the end; NaN where none); the first two frames are left
    out (a one-frame step reads whole-pixel jumps, not speed)."""
    values = np.array(values, dtype=float)
    values[:2] = np.nan
    out = np.full(len(values), np.nan)
    for t in range(len(values)):
        first = max(0, min(t, len(values) - width))  # near the end: the last full window
        part = values[first:first + width]
        part = part[np.isfinite(part)]
        if len(part):
            out[t] = part.mean()
    return out


def world_switches(inp: MetricInput) -> list[Switch]:
    """Every switch read by the world's analysers (cached)."""
    def make() -> list[Switch]:
        found = spans.switches(inp)
        ask = inp.analyser("attributes")
        out = []
        for span in found:
            want = ask(spans.record(inp, span.prompt))
            was = ask(spans.record(inp, span.previous))
            changed = [a for a in want if a in was and want[a] != was[a]]
            now = spans.span_report(inp, span, span.prompt)
            before = spans.span_report(inp, span, span.previous)
            new, old = {}, {}
            for a in changed:
                if a == "speed":
                    v_new, v_old = float(want[a]), float(was[a])
                    width = SPEED_BLOCKS * inp.block_frames
                    fast_new = _ahead(_latent(inp, span, now["speed"]), width)
                    fast_old = _ahead(_latent(inp, span, before["speed"]), width)
                    new[a] = np.where(np.isfinite(fast_new),
                                      abs(fast_new - v_new) < abs(fast_new - v_old), np.nan)
                    old[a] = np.where(np.isfinite(fast_old),
                                      abs(fast_old - v_old) < abs(fast_old - v_new), np.nan)
                elif READS.get(a) in now:
                    new[a] = _latent(inp, span, now[READS[a]])
                    old[a] = _latent(inp, span, before[READS[a]])
            out.append(Switch(span, new, old))
        if not any(s.new for s in out):
            raise Unavailable("no switch changes an attribute the world's analysers read")
        return out
    return inp.cached("world_switches", make)


# --- the measures, from readings of either kind ---------------------------------------
def _responses(inp: MetricInput, found: list[Switch]) -> list[tuple[Switch, dict]]:
    return [(s, s.response(inp.block_frames)) for s in found if s.new]


def overall(resp: dict[str, int | None]) -> int | None:
    """A switch's response: its slowest attribute's (None when any never took)."""
    return None if any(v is None for v in resp.values()) else max(resp.values())


def response_scalars(inp: MetricInput, found: list[Switch]) -> dict[str, float]:
    rows = _responses(inp, found)
    took = [overall(r) for _, r in rows if overall(r) is not None]
    out = {"": float(np.mean(took)) if took else float("nan")}
    for a in sorted({a for _, r in rows for a in r}):
        got = [r[a] for _, r in rows if a in r and r[a] is not None]
        out[a] = float(np.mean(got)) if got else float("nan")
    return out


def never_scalars(inp: MetricInput, found: list[Switch]) -> dict[str, float]:
    rows = _responses(inp, found)
    out = {"": float(np.mean([overall(r) is None for _, r in rows]))}
    for a in sorted({a for _, r in rows for a in r}):
        out[a] = float(np.mean([r[a] is None for _, r in rows if a in r]))
    return out


def carry_scalars(found: list[Switch]) -> dict[str, float]:
    rows = [s.carry() for s in found if s.new]
    return {a: float(np.mean([r[a] for r in rows if a in r]))
            for a in sorted({a for r in rows for a in r})}


def response_curve(inp: MetricInput, found: list[Switch]) -> tuple[np.ndarray, np.ndarray]:
    """Per switch, at its first frame: the response; a switch that never took counts its
    span's length (censored)."""
    rows = _responses(inp, found)
    values = [overall(r) if overall(r) is not None else s.span.frames for s, r in rows]
    return np.array([s.span.start for s, _ in rows]), np.array(values, dtype=float)


@metric("switch_response", "lower", "latent frames", "scalar", ["frames", "world"])
def switch_response(inp: MetricInput) -> dict[str, float]:
    """Latent frames from a prompt switch until the new prompt's attributes show (mean over the
    switches that took; per attribute: ``switch_response/colour`` ...)."""
    return response_scalars(inp, world_switches(inp))


@metric("switch_never", "lower", "fraction", "scalar", ["frames", "world"])
def switch_never(inp: MetricInput) -> dict[str, float]:
    """Share of prompt switches whose new attributes never show inside their span (per
    attribute: ``switch_never/colour`` ...)."""
    return never_scalars(inp, world_switches(inp))


@metric("carry_over", "lower", "latent frames", "scalar", ["frames", "world"])
def carry_over(inp: MetricInput) -> dict[str, float]:
    """Latent frames after a switch that still show the previous prompt's attributes (mean over
    switches; per attribute: ``carry_over/colour`` ...)."""
    return carry_scalars(world_switches(inp))


@metric("switch_response_curve", "lower", "latent frames", "curve_block", ["frames", "world"])
def switch_response_curve(inp: MetricInput) -> tuple[np.ndarray, np.ndarray]:
    """Per switch (at its frame): latent frames until the new prompt shows (never: the span's
    length)."""
    return response_curve(inp, world_switches(inp))


@metric("carry_over_curve", "lower", "latent frames", "curve_block", ["frames", "world"])
def carry_over_curve(inp: MetricInput) -> tuple[np.ndarray, np.ndarray]:
    """Per switch (at its frame): latent frames still showing the previous prompt."""
    found = [s for s in world_switches(inp) if s.new]
    return (np.array([s.span.start for s in found]),
            np.array([s.carry()[""] for s in found], dtype=float))


@metric("span_fidelity", "higher", "fraction", "curve_block", ["frames", "world"])
def span_fidelity(inp: MetricInput) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Prompt fidelity per span (the stretch under one prompt), at its first frame: full match
    and each attribute read against the prompt in force."""
    spans.switches(inp)  # one span: the fidelity measures say it all
    report = spans.world_report(inp)
    parts = spans.spans(inp)
    lat = inp.frame_latent()
    keys = {"": "match", **{a: k for a, k in READS.items()}}
    out = {}
    for sub, key in keys.items():
        if key not in report:
            continue
        values = np.asarray(report[key], dtype=float)
        means = []
        for s in parts:
            part = values[(lat >= s.start) & (lat < s.end)]
            means.append(np.nanmean(part) if np.isfinite(part).any() else np.nan)
        out[sub] = (np.array([s.start for s in parts]), np.array(means))
    return out


# --- continuity at the switch ------------------------------------------------------------
def _jumps(inp: MetricInput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(switch frames, the jump into each, the ratio at the other block boundaries)."""
    starts = {s.start for s in spans.switches(inp)}
    at, blocks, within = _boundary_changes(inp)
    frames = blocks * inp.block_frames
    ratio = (at + 1e-8) / (within + 1e-8)
    hit = np.isin(frames, list(starts))
    return frames[hit], ratio[hit], ratio[~hit]


@metric("switch_jump", "lower", "ratio", "scalar", ["frames"])
def switch_jump(inp: MetricInput) -> dict[str, float]:
    """Frame change into a switch's first frame over the change within blocks (1 = as smooth as
    inside a block; a cut is far above); ``switch_jump/blocks``: the same at the other block
    boundaries."""
    _, jump, rest = _jumps(inp)
    return {"": float(jump.mean()),
            "blocks": float(rest.mean()) if len(rest) else float("nan")}


@metric("switch_jump_curve", "lower", "ratio", "curve_block", ["frames"])
def switch_jump_curve(inp: MetricInput) -> tuple[np.ndarray, np.ndarray]:
    """Per switch (at its frame): the frame change into it over the change within blocks."""
    frames, jump, _ = _jumps(inp)
    return frames, jump


# --- a real model: the new and the old prompt read by CLIP ------------------------------------
def clip_switches(inp: MetricInput) -> list[Switch]:
    """Every switch read by CLIP (attribute ``prompt``): per pixel frame, 1 where the image's
    cosine to the new prompt's text beats the one to the old prompt's (new), or loses (old)."""
    from toolkit.metrics.real import _net, _per_frame, prompt_text

    def make() -> list[Switch]:
        found = spans.switches(inp)
        image = _per_frame(inp, "clip")
        texts = sorted({prompt_text(p, 0) for s in found for p in (s.prompt, s.previous)})
        emb = dict(zip(texts, _net(inp, "clip").text(texts), strict=True))

        def cos(img: np.ndarray, text: str) -> np.ndarray:
            t = emb[text]
            return (img @ t) / np.maximum(np.linalg.norm(img, axis=1) * np.linalg.norm(t),
                                          1e-12)

        out = []
        for s in found:
            img = image[spans.pixel_range(inp, s)]
            new, old = cos(img, prompt_text(s.prompt, 0)), cos(img, prompt_text(s.previous, 0))
            out.append(Switch(s, {"prompt": _latent(inp, s, (new > old).astype(float))},
                              {"prompt": _latent(inp, s, (old > new).astype(float))}))
        return out
    return inp.cached("clip_switches", make)


@metric("clip_switch_response", "lower", "latent frames", "scalar", ["frames", "features"])
def clip_switch_response(inp: MetricInput) -> float:
    """Latent frames from a prompt switch until CLIP reads the new prompt over the old (mean
    over the switches that took)."""
    return response_scalars(inp, clip_switches(inp))[""]


@metric("clip_switch_never", "lower", "fraction", "scalar", ["frames", "features"])
def clip_switch_never(inp: MetricInput) -> float:
    """Share of prompt switches CLIP never reads as the new prompt inside their span."""
    return never_scalars(inp, clip_switches(inp))[""]


@metric("clip_carry_over", "lower", "latent frames", "scalar", ["frames", "features"])
def clip_carry_over(inp: MetricInput) -> float:
    """Latent frames after a switch that CLIP still reads as the old prompt (mean)."""
    return carry_scalars(clip_switches(inp))[""]


#: The compare report's sections of these measures (tables left out when no run has them).
SECTIONS = (
    Section("Prompt switches",
            ("switch_response", "switch_never", "carry_over", "switch_jump",
             "switch_jump/blocks", "switch_response/background", "switch_response/colour",
             "switch_response/shape", "switch_response/speed", "carry_over/colour",
             "clip_switch_response", "clip_switch_never", "clip_carry_over"),
            "Prompt switches: `switch_response`, latent frames from a switch until every "
            "attribute the new prompt changes shows (mean over the switches that took; per "
            "attribute after the slash); `switch_never`, the share of switches that never took "
            "inside their span; `carry_over`, frames of the span still showing the previous "
            "prompt's attributes; `switch_jump`, the frame change into a switch over the change "
            "within blocks (1 = smooth; a cut is far above), beside the same ratio at the other "
            "block boundaries (`switch_jump/blocks`). Per switch in the curves below "
            "(`*_curve`, a switch that never took drawn at its span's length).",
            curves=(("switch_response_curve", "frames until the new prompt shows, per switch",
                     False),
                    ("carry_over_curve", "frames still showing the old prompt, per switch",
                     False),
                    ("switch_jump_curve", "jump at each switch (change / within-block change)",
                     True),
                    ("span_fidelity", "prompt fidelity per span (against the prompt in force)",
                     False))),
    Section("KV re-cache at switches",
            ("recache_seconds", "recache_seconds/total", "recache_bytes", "recache_bytes/work",
             "recache_blocks", "recache_stale"),
            "KV re-cache (`recache=switch`): per switch, the wall time of rebuilding every held "
            "block's K/V under the new prompt, the bytes of K/V rewritten and the working bytes "
            "beyond the cache, the blocks rebuilt, and the stand-ins a strategy could not "
            "re-encode (kept as they were)."),
)
