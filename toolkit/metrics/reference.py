"""Measures read against real clips of the same prompt: motion that can fall, repetition beyond
what the real motion repeats.

The real clips are ``toolkit.metrics.video.reference_clips``: ``MetricInput.references``, else
``references`` (4) clips of the video's prompt from its world's simulator, as long as the video.
They need a world whose analysers read the prompt (the sprite world's do; the memory world's
schedules have their own measures). A schedule's real clips follow it (each span simulated under
its own prompt, ``toolkit.metrics.spans``), and speeds are read against the span's own prompt.

- ``speed_ratio``: per latent frame, the analysers' sprite speed over the mean speed the same
  analysers read on the real clips (1 = the simulator's pace, 0 = frozen). ``sprite_speed``
  varies with the prompt's speed; the ratio compares prompts on one scale, and the analysers'
  own bias (about -8% on bounces) cancels.
- ``repetition_excess``: per segment, the long-lag self-similarity (``self_similarity``) minus
  the mean of the real clips' own: a bouncing sprite comes back to where it was, so real
  videos repeat too; only repetition beyond theirs is the model's (0 = as much as the real).
"""

from __future__ import annotations

import numpy as np

from toolkit.metrics import spans
from toolkit.metrics.base import MetricInput, Unavailable, metric, pool
from toolkit.metrics.features import frame_features
from toolkit.metrics.video import (
    frame_curve,
    long_lag,
    reference_clips,
    repetition_lag,
    segment_similarity,
    self_similarity,
    world_report,
)


def _same_length(inp: MetricInput, refs: np.ndarray) -> np.ndarray:
    if refs.shape[1] != len(inp.need_frames()):
        raise Unavailable(f"the real clips have {refs.shape[1]} frames, the video "
                          f"{len(inp.need_frames())}; they must be as long")
    return refs


def reference_speed(inp: MetricInput) -> np.ndarray:
    """Per pixel frame, the mean sprite speed (px/frame) the analysers read on the real clips
    of the prompt in force (a schedule: of its span's prompt, on the span's stretch of the real
    clips, which follow the schedule)."""
    report = inp.analyser("report")

    def make() -> np.ndarray:
        refs, out = reference_clips(inp), np.zeros(len(inp.need_frames()))
        for span in spans.spans(inp):
            rng = spans.pixel_range(inp, span)
            prompt = spans.record(inp, span.prompt)
            clips = refs[:, rng] if refs.shape[1] == len(out) else refs
            speeds = np.concatenate([report(r, prompt)["speed"][1:] for r in clips])
            speeds = speeds[np.isfinite(speeds)]
            if not len(speeds) or speeds.mean() <= 0:
                raise Unavailable("the analysers read no sprite motion on the real clips")
            out[rng] = speeds.mean()
        return out
    return inp.cached("reference_speed", make)


@metric("speed_ratio", "higher", "ratio", "curve_frame", ["frames", "world", "references"])
def speed_ratio(inp: MetricInput) -> np.ndarray:
    """Sprite speed over the speed read on real clips of the prompt in force (1 = real pace,
    0 = frozen)."""
    return frame_curve(inp, world_report(inp)["speed"] / reference_speed(inp))


@metric("repetition_excess", "lower", "cosine", "curve_block",
        ["frames", "features", "references"])
def repetition_excess(inp: MetricInput) -> np.ndarray:
    """Long-lag self-similarity minus that of real clips of the prompt (0 = as repetitive)."""
    refs = _same_length(inp, reference_clips(inp))
    lat, lag = inp.frame_latent(), repetition_lag(inp)
    real = []
    for clip in refs:
        feats = frame_features(clip.astype(np.float32), inp.feature,
                               inp.backends.get(inp.feature), inp.options)
        real.append(long_lag(segment_similarity(pool(feats, lat, inp.latent_frames),
                                                inp.segments), lag))
    real = np.array(real)
    seen = np.isfinite(real).sum(0)
    mean = np.where(seen > 0, np.where(np.isfinite(real), real, 0).sum(0) / np.maximum(seen, 1),
                    np.nan)
    return self_similarity.fn(inp) - mean
