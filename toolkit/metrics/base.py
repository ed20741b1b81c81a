"""The metric registry, the input every metric reads, and the one loop that computes a set.

A metric is a function of one video's :class:`MetricInput` registered with :func:`metric`,
which records its direction (``higher`` or ``lower`` is better), unit, kind and needs. Kinds:

- ``curve_frame``: one value per latent frame (pixel frames are pooled to their latent frame);
- ``curve_block``: one value per block or segment, stepped by its FIRST LATENT FRAME, so every
  curve of a run shares one x axis (latent frames);
- ``scalar``: one number.

A metric may return a dict of named series (``{"": total, "sink": ...}``); they are reported
as ``name`` and ``name/sink``. A metric that cannot be computed raises :class:`Unavailable`
with the reason; it is then left out and the reason is recorded, never replaced by a guess.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from toolkit.core.spec import ModelSpec
from toolkit.core.trace import Trace
from toolkit.plugins import WORLDS, World, world_of
from toolkit.registry import Registry

KINDS = ("curve_frame", "curve_block", "scalar")
DIRECTIONS = ("higher", "lower")
NEEDS = ("frames", "world", "features", "references", "trace")


class Unavailable(RuntimeError):
    """A metric cannot be computed for this input; the message says why."""


class NotApplicable(Unavailable):
    """A metric that does not apply to this run (switch measures of a run without a prompt
    switch, re-cache costs of a run that did not re-cache): recorded like ``Unavailable``,
    but a run's warning line leaves it out (``MetricResults.inapplicable``)."""


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        name: registry name (also the MLflow key).
        fn: ``fn(inp) -> float | np.ndarray | dict[str, float | np.ndarray]``.
        direction: ``higher`` or ``lower`` is better (Optuna and the report read it).
        unit: unit of the values, e.g. ``bytes``, ``s``, ``fraction``.
        kind: one of :data:`KINDS`.
        needs: what the input must provide, from :data:`NEEDS`.
        deterministic: the same rollout always gives the same value (false for timings).
        description: one line for tables and the report.
        series: the names of the sub-series a dict-returning metric always reports (``""`` is
            the metric itself); empty when they vary (partitions, timer sections) or there are
            none. The findings check a measure's sub-series against it.
        units: ``(sub-series, unit)`` pairs for sub-series whose unit is not ``unit`` (a count
            beside fractions); :meth:`unit_of` reads them.
    """

    name: str
    fn: Callable[[MetricInput], Any]
    direction: str
    unit: str
    kind: str
    needs: tuple[str, ...] = ()
    deterministic: bool = True
    description: str = ""
    series: tuple[str, ...] = ()
    units: tuple[tuple[str, str], ...] = ()

    def unit_of(self, sub: str = "") -> str:
        """The unit of a sub-series (``""``: the metric itself)."""
        return dict(self.units).get(sub, self.unit)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.name!r}: direction={self.direction!r}, "
                             f"allowed {DIRECTIONS}")
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind={self.kind!r}, allowed {KINDS}")
        bad = sorted(set(self.needs) - set(NEEDS))
        if bad:
            raise ValueError(f"metric {self.name!r}: unknown needs {bad}, allowed {NEEDS}")

    @property
    def optuna_direction(self) -> str:
        """``maximize`` or ``minimize``."""
        return "maximize" if self.direction == "higher" else "minimize"


METRICS: Registry[Metric] = Registry("metric", "rollbench.metrics", "toolkit.metrics",
                                     extended_by=(WORLDS,))

#: The toolkit's named metric sets; worlds add their own (``World.metric_sets``, see
#: :func:`metric_sets`); a set may also be given as an explicit list of names.
#: Prompt switches (``toolkit.metrics.switching``) and the re-cache's cost: every set of the
#: world and of real videos has them; they do not apply to a run without a switch.
SWITCH_SET = ["span_fidelity", "switch_response", "switch_never", "carry_over",
              "switch_response_curve", "carry_over_curve", "switch_jump", "switch_jump_curve",
              "recache_seconds", "recache_bytes", "recache_blocks", "recache_stale"]
METRIC_SETS: dict[str, list[str]] = {
    "world": ["drift", "frechet", "start_end_distance", "fidelity", "identity_drift", "vde",
              "fidelity_start", "fidelity_end", "fidelity_mean", "start_end_fidelity_drop",
              "self_similarity", "repetition", "norepeat", "motion",
              "dynamic_degree", "moving", "sprite_speed", "frozen", "speed_ratio",
              "repetition_excess", "vde_motion", "discontinuity", "boundary_change",
              "boundary_jump", "cache_events", "rope_power", "lpips_step", "kv_bytes",
              "kv_tokens", "context_tokens", "block_seconds", "peak_kv_bytes",
              "seconds_per_block", "latency_growth", "peak_rss_bytes", "cuda_peak_bytes",
              *SWITCH_SET],
    "fast": ["drift", "start_end_distance", "self_similarity", "norepeat", "motion",
             "dynamic_degree", "discontinuity", "kv_bytes", "block_seconds", "peak_kv_bytes",
             "seconds_per_block"],
    "system": ["kv_bytes", "kv_tokens", "context_tokens", "block_seconds", "peak_kv_bytes",
               "seconds_per_block", "latency_growth", "peak_rss_bytes", "cuda_peak_bytes"],
}
#: Real videos: the VBench-style measures and CLIP drift (``toolkit.metrics.real``, networks from
#: local weights), the feature-backend and pixel measures that mean something on any video, and
#: the system set.
METRIC_SETS["real"] = [
    "subject_consistency", "subject_consistency_score", "background_consistency",
    "background_consistency_score", "clip_score", "clip_drift", "clip_drift_end",
    "flow_smoothness", "flow_smoothness_score", "flow_magnitude", "flow_dynamic",
    "vbench_dynamic_degree", "drift", "start_end_distance", "self_similarity", "repetition",
    "norepeat", "motion", "dynamic_degree", "moving", "vde_motion", "discontinuity",
    "boundary_change", "boundary_jump", "cache_events", "rope_power", "lpips_step",
    "clip_switch_response", "clip_switch_never", "clip_carry_over", "switch_jump",
    "switch_jump_curve", "recache_seconds", "recache_bytes", "recache_blocks", "recache_stale",
    *METRIC_SETS["system"]]


def metric(name: str, direction: str, unit: str, kind: str, needs: Sequence[str] = (),
           deterministic: bool = True, series: Sequence[str] = (),
           units: Mapping[str, str] | None = None) -> Callable[[Callable], Metric]:
    """Decorator registering a function as a metric (its docstring's first line describes it);
    ``units``: sub-series whose unit differs from ``unit``."""

    def wrap(fn: Callable[[MetricInput], Any]) -> Metric:
        doc = (fn.__doc__ or "").strip().splitlines()
        m = Metric(name, fn, direction, unit, kind, tuple(needs), deterministic,
                   doc[0] if doc else "", tuple(series), tuple(sorted((units or {}).items())))
        return METRICS.register(name)(m)

    return wrap


def series_unit(series: str) -> str:
    """The unit of a logged series (``recall_beyond/count``: its metric's unit for that
    sub-series)."""
    name, _, sub = series.partition("/")
    return METRICS.get(name).unit_of(sub)


def metric_sets() -> dict[str, list[str]]:
    """Every named metric set: the toolkit's (``world``, ``fast``, ``system``, ``real``) and
    those the registered worlds add (e.g. the memory world's ``memory``)."""
    sets = dict(METRIC_SETS)
    for world in WORLDS.items().values():
        sets.update({name: list(names) for name, names in world.metric_sets.items()})
    return sets


def metric_names(which: str | Sequence[str]) -> list[str]:
    """Names of a metric set (see :func:`metric_sets`) or of a list."""
    if isinstance(which, str):
        sets = metric_sets()
        if which not in sets:
            raise ValueError(f"unknown metric set {which!r}; sets: {sorted(sets)} "
                             "(or a list of metric names)")
        which = sets[which]
    for name in which:
        METRICS.get(name)  # "did you mean" on a typo
    return list(which)


def latent_index(pixel_frames: int, latent_frames: int) -> np.ndarray:
    """Latent frame of each pixel frame: identical counts, a causal VAE, else proportional.

    A causal video VAE with temporal factor r decodes L latent frames to ``1 + r (L - 1)``
    pixel frames: latent 0 is pixel 0, latent k covers pixels ``r (k - 1) + 1 .. r k``.
    """
    p = np.arange(pixel_frames)
    if pixel_frames == latent_frames:
        return p
    if latent_frames > 1 and (pixel_frames - 1) % (latent_frames - 1) == 0:
        r = (pixel_frames - 1) // (latent_frames - 1)
        return -(-p // r)
    return p * latent_frames // pixel_frames


def pool(values: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """Mean of ``values`` (N, ...) per group ``index`` (N) in ``[0, count)``; NaN-aware."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    shape = (count, *values.shape[1:])
    total, n = np.zeros(shape), np.zeros(shape)
    np.add.at(total, index, np.where(ok, values, 0.0))
    np.add.at(n, index, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


@dataclass
class MetricInput:
    """Everything metrics may read about ONE video; derived quantities are cached.

    Args:
        frames: (F, 3, H, W) in [0, 1], or None when the model has no VAE.
        latents: (C, L, h, w) latents of the same video, or None.
        trace: the rollout's Trace, or None.
        prompt: the prompt (one its world's analysers read enables the world's measures).
        spec: the model's spec (block size, training length).
        references: real clips of the same prompt (N, F, 3, H, W); None: built from the world
            simulator when the prompt is a world prompt.
        segment_frames: latent frames per segment (None: the block size).
        feature: name of the feature backend (``toolkit.metrics.features.FEATURES``).
        options: per-metric knobs (e.g. ``repetition_window``); see each metric.
        backends: local weights of the backends that need them, ``name -> path`` (``dino``,
            ``clip``, ``raft``; ``toolkit.metrics.backends``); a missing one makes the
            metrics that need it unavailable.
        world: the world whose analysers read the video (``toolkit.plugins.World``); None:
            the registered world that claims the prompt, if any.
    """

    frames: torch.Tensor | np.ndarray | None = None
    latents: torch.Tensor | None = None
    trace: Trace | None = None
    prompt: Any = None
    spec: ModelSpec | None = None
    references: torch.Tensor | np.ndarray | None = None
    segment_frames: int | None = None
    feature: str = "world"
    options: dict[str, Any] = field(default_factory=dict)
    backends: dict[str, Any] = field(default_factory=dict)
    world: World | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.frames is None and self.latents is None and self.trace is None:
            raise ValueError("a MetricInput needs frames, latents or a trace")
        if self.frames is not None:
            f = self.frames
            f = f.detach().to("cpu", torch.float32).numpy() if torch.is_tensor(f) else f
            self.frames = np.asarray(f, dtype=np.float32)
            if self.frames.ndim != 4 or self.frames.shape[1] != 3:
                raise ValueError(f"frames must be (F, 3, H, W), got {self.frames.shape}")
        seg = self.segment_frames or self.block_frames
        if self.latent_frames % seg:
            raise ValueError(f"segment_frames={seg} must divide the video's "
                             f"{self.latent_frames} latent frames")
        self.segment_frames = seg

    # sizes ------------------------------------------------------------------------------
    @property
    def block_frames(self) -> int:
        if self.spec is not None:
            return self.spec.block_frames
        return self.trace.block_frames if self.trace is not None else 1

    @property
    def latent_frames(self) -> int:
        if self.latents is not None:
            return int(self.latents.shape[-3])
        if self.trace is not None:
            return len(self.trace.blocks) * self.trace.block_frames
        return len(self.frames)

    @property
    def train_frames(self) -> int:
        """Latent frames of the training clips (1x); the whole video when unknown."""
        return self.spec.train_frames if self.spec is not None else self.latent_frames

    @property
    def segments(self) -> int:
        return self.latent_frames // self.segment_frames

    def frame_latent(self) -> np.ndarray:
        """Latent frame index of every pixel frame."""
        return latent_index(len(self.need_frames()), self.latent_frames)

    # needs ------------------------------------------------------------------------------
    def need_frames(self) -> np.ndarray:
        if self.frames is None:
            raise Unavailable("needs decoded frames; this rollout has none (no VAE)")
        return self.frames

    def need_trace(self) -> Trace:
        if self.trace is None:
            raise Unavailable("needs the rollout's Trace")
        return self.trace

    def need_world(self) -> World:
        """The world whose analysers read this video (``world``, else the one that claims the
        prompt), else Unavailable."""
        world = self.world or world_of(prompt=self.prompt)
        if world is None:
            raise Unavailable(f"needs a world prompt for the analysers; got {self.prompt!r}")
        return world

    def world_prompt(self) -> Any:
        """The prompt as the record its world's analysers read, else Unavailable."""
        world = self.need_world()
        if world.prompt_of is None or not world.claims(self.prompt):
            raise Unavailable(f"needs a {world.name}-world prompt for its analysers; got "
                              f"{self.prompt!r}")
        try:
            return world.prompt_of(self.prompt)
        except ValueError as err:
            raise Unavailable(f"cannot read the prompt {self.prompt!r}: {err}") from err

    def analyser(self, name: str) -> Any:
        """One of the world's analysers (``report``, ``identities``, ``references``,
        ``frozen_speed``), else Unavailable."""
        world = self.need_world()
        found = getattr(world, name)
        if found is None:
            raise Unavailable(f"the {world.name} world has no {name} analyser")
        return found

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per input."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


@dataclass
class MetricResults:
    """Values of a metric set for one video.

    Attributes:
        values: ``key -> float`` (scalars) or ``key -> (steps, values)`` (curves).
        info: ``key -> {metric, kind, direction, unit}`` (sub-series share their metric's).
        unavailable: ``metric -> reason`` for metrics left out.
        seconds: compute time per metric.
        inapplicable: the unavailable metrics that do not apply to this run
            (:class:`NotApplicable`).
    """

    values: dict[str, Any] = field(default_factory=dict)
    info: dict[str, dict[str, str]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    inapplicable: set[str] = field(default_factory=set)

    def curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {k: v for k, v in self.values.items() if isinstance(v, tuple)}

    def scalars(self) -> dict[str, float]:
        return {k: v for k, v in self.values.items() if not isinstance(v, tuple)}


def _steps(m: Metric, inp: MetricInput, n: int) -> np.ndarray:
    """Latent frame of each value: the frame itself, or the segment's first frame."""
    return np.arange(n) * (1 if m.kind == "curve_frame" else inp.segment_frames)


def compute(inp: MetricInput, which: str | Sequence[str] = "world") -> MetricResults:
    """Compute a metric set on one video; unavailable metrics are recorded with their reason."""
    out = MetricResults()
    for name in metric_names(which):
        m = METRICS.get(name)
        start = time.perf_counter()
        try:
            got = m.fn(inp)
        except Unavailable as why:
            out.unavailable[name] = str(why)
            if isinstance(why, NotApplicable):
                out.inapplicable.add(name)
            continue
        out.seconds[name] = time.perf_counter() - start
        series = got if isinstance(got, dict) else {"": got}
        for sub, value in series.items():
            key = f"{name}/{sub}" if sub else name
            out.info[key] = {"metric": name, "kind": m.kind, "direction": m.direction,
                             "unit": m.unit_of(sub)}
            if m.kind == "scalar":
                out.values[key] = float(value)
            elif isinstance(value, tuple):  # (steps, values) given by the metric
                out.values[key] = (np.asarray(value[0], np.int64),
                                   np.asarray(value[1], np.float64))
            else:
                arr = np.asarray(value, dtype=np.float64)
                out.values[key] = (_steps(m, inp, len(arr)), arr)
    return out
