"""Block boundaries: the jumps between blocks, the cache events before them, and their rhythm.

``boundary_change`` (``toolkit.metrics.video``) divides each jump by the within-block change of
the WHOLE video, so a window's value depends on frames far outside it. These measures keep the
pieces apart, so a window's ratio uses only its own frames (``boundary_ratio@W`` in the
findings, ``toolkit.findings.measures``):

- ``boundary_jump`` (per block, at its first latent frame): ``""`` the mean absolute pixel
  change from the previous block's last pixel frame into this block's first (NaN for block 0);
  ``within`` the mean change between consecutive pixel frames inside the block; ``local`` the
  jump over the mean ``within`` of the two blocks it joins (1 = seamless).
- ``cache_events`` (per block, from the Trace): ``dropped`` blocks that left the cache and
  ``moved`` (latent frames) the largest position change of a block kept, between the previous
  block's context and this one's; ``""`` is 1 where either happened (an eviction or a position
  shift just before this block was generated), else 0. Read from the strategy's per-block info:
  ``context_blocks`` / ``context_t0`` (the sink and window strategies), or PackForcing's
  ``sink`` / ``sink_t0`` / ``archive`` / ``recent`` (only the sink's positions are recorded;
  mid blocks under ``positions=repack`` move without being counted).
- ``rope_power`` (per run): the share of the variance of ``boundary_jump/local`` past the 1x
  video (frames ``train_frames`` on) that sinusoids at the model's RoPE time frequencies
  explain (least squares, cosine and sine per frequency). The time dims of a head rotate pair i
  by ``t * theta ** (-2i / d_t)``, a period of ``2 pi theta ** (2i / d_t)`` latent frames (the
  world model, d_t = 12: 6.3, 29.2, 135.4, 628... frames). Used: the periods a block-sampled
  series resolves, longer than two blocks and at most half the span (two cycles); ``f{i}`` is
  frequency i alone, ``""`` all used ones jointly, ``control`` the mean single-frequency share
  at the span's Fourier frequencies farther than one resolution step (1 / span) from every RoPE
  frequency: the level of a series with no rhythm at the RoPE periods (about 2 / values).
"""

from __future__ import annotations

import numpy as np

from toolkit.core.trace import Trace
from toolkit.metrics.base import MetricInput, Unavailable, metric, pool

EPS = 1e-8


# --- jumps -----------------------------------------------------------------------------
def block_jumps(inp: MetricInput) -> dict[str, np.ndarray]:
    """Per block: ``jump`` into it, ``within`` it, ``local`` = jump / within of both sides."""
    def make() -> dict[str, np.ndarray]:
        f = inp.need_frames()
        step = np.abs(np.diff(f, axis=0)).mean((1, 2, 3))  # change into pixel frame p = 1 ..
        block = inp.frame_latent() // inp.block_frames
        count = inp.latent_frames // inp.block_frames
        cross = block[1:] != block[:-1]
        if cross.all() or not cross.any():
            raise Unavailable("needs blocks with more than one frame and more than one block")
        jump = np.full(count, np.nan)
        jump[block[1:][cross]] = step[cross]
        within = pool(step[~cross], block[1:][~cross], count)
        side = np.full(count, np.nan)
        side[1:] = (within[1:] + within[:-1]) / 2
        return {"jump": jump, "within": within, "local": (jump + EPS) / (side + EPS)}
    return inp.cached("block_jumps", make)


@metric("boundary_jump", "lower", "mean abs change", "curve_block", ["frames"],
        series=("", "within", "local"))
def boundary_jump(inp: MetricInput) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pixel change into each block (``within``: inside it; ``local``: jump / within)."""
    j = block_jumps(inp)
    steps = np.arange(len(j["jump"])) * inp.block_frames
    return {"": (steps, j["jump"]), "within": (steps, j["within"]),
            "local": (steps, j["local"])}


# --- cache events ----------------------------------------------------------------------
def held_blocks(info: dict) -> dict[int, float | None] | None:
    """Block index -> temporal position (None when not recorded) of a block's context."""
    if "context_blocks" in info:
        t0 = list(info.get("context_t0", []))
        return {i: (t0[k] if k < len(t0) else None) for k, i in enumerate(info["context_blocks"])}
    if "sink" in info and "archive" in info:
        out: dict[int, float | None] = {i: None for i in info["archive"] + info["recent"]}
        return out | dict(zip(info["sink"], info["sink_t0"], strict=True))
    return None


def events(trace: Trace) -> dict[str, np.ndarray]:
    """Per block: ``dropped`` blocks and ``moved`` frames since the previous block's context."""
    held = [held_blocks(b.info) for b in trace.blocks]
    if not held or any(h is None for h in held):
        raise Unavailable(f"the {trace.strategy} Trace's block info names no context blocks")
    dropped, moved = np.zeros(len(held)), np.zeros(len(held))
    for b in range(1, len(held)):
        before, now = held[b - 1], held[b]
        dropped[b] = len(set(before) - set(now))
        shifts = [abs(now[k] - before[k]) for k in set(before) & set(now)
                  if now[k] is not None and before[k] is not None]
        moved[b] = max(shifts, default=0.0)
    return {"dropped": dropped, "moved": moved}


@metric("cache_events", "lower", "count", "curve_block", ["trace"],
        series=("", "dropped", "moved"))
def cache_events(inp: MetricInput) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """1 where the cache dropped or moved a block before this one (``dropped``, ``moved``)."""
    trace = inp.need_trace()
    e = events(trace)
    steps = np.array([b.index for b in trace.blocks]) * trace.block_frames
    either = ((e["dropped"] > 0) | (e["moved"] > 0)).astype(float)
    return {"": (steps, either), "dropped": (steps, e["dropped"]), "moved": (steps, e["moved"])}


# --- rhythm ----------------------------------------------------------------------------
def rope_periods(spec: object) -> np.ndarray:
    """Periods (latent frames) of the RoPE time frequencies of a ModelSpec, shortest first."""
    d = spec.rope_split[0]
    return 2 * np.pi * spec.rope_theta ** (np.arange(0, d, 2) / d)


def sinusoid_share(t: np.ndarray, y: np.ndarray, periods: list[float]) -> float:
    """Share of the variance of y(t) explained by a cosine and a sine at each period (jointly)."""
    y = y - y.mean()
    total = float(y @ y)
    if total == 0:
        return 0.0
    cols = [f(2 * np.pi * t / p) for p in periods for f in (np.cos, np.sin)]
    x = np.column_stack([np.ones_like(t), *cols])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    return 1.0 - float(resid @ resid) / total


@metric("rope_power", "lower", "fraction of variance", "scalar", ["frames"])
def rope_power(inp: MetricInput) -> dict[str, float]:
    """Share of the boundary jumps' variance at the RoPE time periods (``f{i}``, ``control``)."""
    if inp.spec is None:
        raise Unavailable("needs the model's spec (its RoPE time frequencies)")
    local = block_jumps(inp)["local"]
    t = np.arange(len(local), dtype=float) * inp.block_frames
    ok = np.isfinite(local) & (t >= inp.train_frames)
    t, y = t[ok], local[ok]
    span = float(t[-1] - t[0]) + inp.block_frames if len(t) else 0.0
    periods = rope_periods(inp.spec)
    used = [(i, float(p)) for i, p in enumerate(periods)
            if 2 * inp.block_frames < p <= span / 2]
    if len(y) < 8 or not used:
        raise Unavailable(f"no RoPE time period between {2 * inp.block_frames} frames and half "
                          f"the {span:g} frames past the 1x video (periods {periods.round(1)})")
    out = {"": sinusoid_share(t, y, [p for _, p in used])}
    out |= {f"f{i}": sinusoid_share(t, y, [p]) for i, p in used}
    far = [span / k for k in range(2, int(span / (2 * inp.block_frames)))
           if all(abs(k / span - 1 / p) > 1 / span for p in periods)]
    out["control"] = float(np.mean([sinusoid_share(t, y, [p]) for p in far])) if far \
        else float("nan")
    return out
