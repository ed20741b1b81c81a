"""Metrics of one rollout: a registry of declared metrics (direction, unit, kind, needs).

Importing the package registers the built-ins (video, real-video and system metrics; the
feature backends ``dino``, ``clip`` and ``raft``); the registries load the worlds, which add
their own (the sprite world's feature ``world``, the memory world's recall measures).

    from toolkit.metrics import MetricInput, compute
    results = compute(MetricInput(frames=video, trace=trace, prompt=prompt, spec=spec), "world")
"""

from toolkit.compat import moved_names
from toolkit.metrics import boundary, real, reference, spans, switching, system, video
from toolkit.metrics.base import (
    DIRECTIONS,
    KINDS,
    METRIC_SETS,
    METRICS,
    NEEDS,
    Metric,
    MetricInput,
    MetricResults,
    Unavailable,
    compute,
    latent_index,
    metric,
    metric_names,
    pool,
    series_unit,
)
from toolkit.metrics.features import (
    FEATURES,
    frame_features,
    lpips_status,
    make_backend,
)

__all__ = [
    "DIRECTIONS",
    "FEATURES",
    "KINDS",
    "METRICS",
    "METRIC_SETS",
    "NEEDS",
    "Metric",
    "MetricInput",
    "MetricResults",
    "Unavailable",
    "boundary",
    "compute",
    "frame_features",
    "latent_index",
    "lpips_status",
    "make_backend",
    "metric",
    "metric_names",
    "pool",
    "real",
    "reference",
    "series_unit",
    "spans",
    "switching",
    "system",
    "video",
]

__getattr__ = moved_names(__name__)  # names that moved to a world (toolkit.compat)
