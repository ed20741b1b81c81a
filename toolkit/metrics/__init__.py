"""Metrics of one rollout: a registry of declared metrics (direction, unit, kind, needs).

Importing the package registers the built-ins (video, real-video and system metrics; the
feature backends ``world``, ``dino``, ``clip`` and ``raft``).

    from toolkit.metrics import MetricInput, compute
    results = compute(MetricInput(frames=video, trace=trace, prompt=prompt, spec=spec), "world")
"""

from toolkit.metrics import boundary, real, reference, system, video
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
)
from toolkit.metrics.features import (
    FEATURES,
    WorldFeatures,
    frame_features,
    lpips_status,
    make_backend,
)

# the memory world's recall measures (moved to the memory world; registered from there)
from toolkit.worlds.memory import metrics as _memory_metrics  # noqa: F401

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
    "WorldFeatures",
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
    "system",
    "video",
]
