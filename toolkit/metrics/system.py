"""Memory and latency, straight from the rollout's Trace (exact bytes of the tensors held).

Block curves are stepped by the block's first latent frame, like every other curve.
Process peak memory is this process's peak resident set (``resource.getrusage``), so it
covers the rollout when the metrics are computed in the process that ran it.
"""

from __future__ import annotations

import resource
import sys

import numpy as np
import torch

from toolkit.core.trace import Trace
from toolkit.metrics.base import MetricInput, NotApplicable, Unavailable, metric


def _steps(trace: Trace) -> np.ndarray:
    return np.array([b.index for b in trace.blocks]) * trace.block_frames


def _per_partition(trace: Trace, attr: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    steps = _steps(trace)
    names = sorted({k for b in trace.blocks for k in getattr(b, attr)})
    out = {"": (steps, np.array(trace.curve(attr)))}
    for name in names:
        out[name] = (steps, np.array([getattr(b, attr).get(name, 0) for b in trace.blocks],
                                     dtype=np.float64))
    return out


def _blocks(inp: MetricInput) -> Trace:
    trace = inp.need_trace()
    if not trace.blocks:
        raise Unavailable("the Trace holds no blocks")
    return trace


@metric("kv_bytes", "lower", "bytes", "curve_block", ["trace"])
def kv_bytes(inp: MetricInput) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """KV bytes held after each block: total and per partition."""
    return _per_partition(_blocks(inp), "bytes")


@metric("kv_tokens", "lower", "tokens", "curve_block", ["trace"])
def kv_tokens(inp: MetricInput) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tokens held after each block: total and per partition."""
    return _per_partition(_blocks(inp), "tokens")


@metric("context_tokens", "lower", "tokens", "curve_block", ["trace"])
def context_tokens(inp: MetricInput) -> tuple[np.ndarray, np.ndarray]:
    """Cached context tokens each block attended (per layer)."""
    trace = _blocks(inp)
    return _steps(trace), np.array(trace.curve("context_tokens"))


@metric("block_seconds", "lower", "s", "curve_block", ["trace"], deterministic=False)
def block_seconds(inp: MetricInput) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Wall seconds per block: total and per section (denoise, cache_update, compression...)."""
    trace = _blocks(inp)
    steps = _steps(trace)
    sections = sorted({k for b in trace.blocks for k in b.seconds})
    out = {"": (steps, np.array([sum(b.seconds.values()) for b in trace.blocks]))}
    for name in sections:
        out[name] = (steps, np.array(trace.curve(name)))
    return out


@metric("peak_kv_bytes", "lower", "bytes", "scalar", ["trace"])
def peak_kv_bytes(inp: MetricInput) -> float:
    """Largest KV footprint held after any block."""
    return float(max(b.total_bytes for b in _blocks(inp).blocks))


@metric("seconds_per_block", "lower", "s", "scalar", ["trace"], deterministic=False)
def seconds_per_block(inp: MetricInput) -> float:
    """Mean wall seconds per block."""
    return float(np.mean([sum(b.seconds.values()) for b in _blocks(inp).blocks]))


@metric("latency_growth", "lower", "ratio", "scalar", ["trace"], deterministic=False)
def latency_growth(inp: MetricInput) -> float:
    """Mean block time of the last tenth of the rollout / that of the first tenth."""
    sec = np.array([sum(b.seconds.values()) for b in _blocks(inp).blocks])
    tenth = max(1, len(sec) // 10)
    return float(sec[-tenth:].mean() / max(sec[:tenth].mean(), 1e-12))


@metric("peak_rss_bytes", "lower", "bytes", "scalar", deterministic=False)
def peak_rss_bytes(inp: MetricInput) -> float:
    """Peak resident memory of this process so far (getrusage ru_maxrss)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss if sys.platform == "darwin" else rss * 1024)  # macOS: bytes, Linux: KiB


@metric("cuda_peak_bytes", "lower", "bytes", "scalar", deterministic=False)
def cuda_peak_bytes(inp: MetricInput) -> float:
    """Peak CUDA memory allocated by torch in this process (GPU runs only)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        raise Unavailable("no CUDA device was used in this process")
    return float(torch.cuda.max_memory_allocated())


def _recached(inp: MetricInput) -> list[dict]:
    done = (inp.need_trace().meta or {}).get("recache")
    if not done:
        raise NotApplicable("the rollout re-cached at no switch (recache=none, or no switch)")
    return done


@metric("recache_seconds", "lower", "s", "scalar", ["trace"], deterministic=False)
def recache_seconds(inp: MetricInput) -> dict[str, float]:
    """Wall seconds of one KV re-cache at a prompt switch (mean over switches; ``/total``)."""
    sec = [r["seconds"] for r in _recached(inp)]
    return {"": float(np.mean(sec)), "total": float(np.sum(sec))}


@metric("recache_bytes", "lower", "bytes", "scalar", ["trace"], series=("", "work"))
def recache_bytes(inp: MetricInput) -> dict[str, float]:
    """K/V bytes rewritten by one re-cache at a prompt switch (mean over switches); ``/work``:
    the working bytes it needed beyond the cache."""
    done = _recached(inp)
    return {"": float(np.mean([r["bytes"] for r in done])),
            "work": float(np.mean([r["work_bytes"] for r in done]))}


@metric("recache_blocks", "higher", "blocks", "scalar", ["trace"])
def recache_blocks(inp: MetricInput) -> float:
    """Held blocks brought under the new prompt per re-cache (rebuilt or re-encoded; mean over
    switches)."""
    return float(np.mean([r["blocks"] + r["reencoded"] for r in _recached(inp)]))


@metric("recache_stale", "lower", "blocks", "scalar", ["trace"])
def recache_stale(inp: MetricInput) -> float:
    """Stand-ins a re-cache kept as they were (the strategy cannot re-encode them; mean over
    switches)."""
    return float(np.mean([r["stale"] for r in _recached(inp)]))
