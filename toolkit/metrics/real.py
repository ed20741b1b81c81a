"""Measures of real videos: the paper's VBench-style measures and CLIP drift.

Each needs a network from local weights (``toolkit.metrics.backends``); without them it is
unavailable, never computed on random weights. Frame curves are per latent frame (pixel frames
pooled); the ``*_score`` scalars are over the whole video.

- ``subject_consistency`` (DINO) and ``background_consistency`` (CLIP image features), as
  VBench: frame t > 0 scores ``(max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t, f_0))) / 2``; the
  video's score is the mean over frames 1..F-1 (frame 0 has no score). 1 = nothing changed.
- ``clip_score``: per segment, the mean over its frames of ``100 * max(0, cos(image, text))``
  against the prompt in force at the frame's latent frame (a plain prompt, or a schedule's
  ``.at(frame)``). ``clip_drift``: the fall of that score from the first segment of the same
  prompt (the opening segment for a single prompt); ``clip_drift_end``: at the last segment.
  The paper bins 10 s (``tracking.segment_frames=40`` at Wan's 4 latent frames per second).
- Dynamic degree (RAFT), as VBench: frames are sampled every ``round(fps / 8)`` pixel frames
  (at least 1); each consecutive sampled pair scores the mean of its top 5% flow magnitudes;
  a pair moves if that exceeds ``6 * max(1, 8 / fps)`` pixels at a 256-pixel short side
  (VBench: ``6 * min(H, W) / 256`` pixels at the video's size); the video is dynamic if at
  least ``round(4 * n / 16)`` pairs move, n the sampled frames (``vbench_dynamic_degree``,
  1 or 0; VBench's dynamic degree is its mean over videos). Curves: ``flow_magnitude`` (the
  pair score, at the pair's second frame) and ``flow_dynamic`` (1 where the pair moves).
- ``flow_smoothness``: a STAND-IN for VBench's motion smoothness, not that measure. VBench
  drops the odd frames, re-creates each from its two even neighbours with the AMT frame-
  interpolation network and scores ``1 - mean |re-created - real|`` (pixels in [0, 1]). Here
  the re-creation is linear-motion interpolation with RAFT's flow from frame 2k to 2k + 2:
  ``(I_2k(x - u / 2) + I_2k+2(x + u / 2)) / 2``. Same protocol and scale; another interpolator.

Knobs (``MetricInput.options``): ``fps`` (pixel frames per second; default from the spec's
latent rate, else 8), ``flow_stride`` (overrides ``round(fps / 8)``), and the backends' own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.metrics.backends import flow_top_magnitude
from toolkit.metrics.base import MetricInput, Unavailable, metric, pool
from toolkit.metrics.features import make_backend

CLIP_SCALE = 100.0  # CLIP score = 100 x cosine, as the paper reports it (about 34)
THRESHOLD = 6.0  # VBench: a pair moves above 6 px of top-5% flow at a 256-px short side
CHUNK = 32  # frame pairs prepared at once (RAFT runs them in batches of ``backend_batch``)


def _net(inp: MetricInput, name: str) -> Any:
    return inp.cached(f"net:{name}",
                      lambda: make_backend(name, inp.backends.get(name), inp.options))


def _per_frame(inp: MetricInput, name: str) -> np.ndarray:
    """Features (F, D) of every pixel frame from a backend."""
    return inp.cached(f"frames:{name}", lambda: _net(inp, name)(inp.need_frames()))


def _latent_curve(inp: MetricInput, values: np.ndarray) -> np.ndarray:
    return pool(values, inp.frame_latent(), inp.latent_frames)


def consistency(features: np.ndarray) -> np.ndarray:
    """VBench consistency per frame: mean of the clipped cosines to the previous and the first
    frame's features; NaN at frame 0."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    out = np.full(len(f), np.nan)
    if len(f) > 1:
        prev = np.clip((f[1:] * f[:-1]).sum(1), 0, None)
        first = np.clip(f[1:] @ f[0], 0, None)
        out[1:] = (prev + first) / 2
    return out


def _consistency_of(inp: MetricInput, name: str) -> np.ndarray:
    if len(inp.need_frames()) < 2:
        raise Unavailable("consistency needs at least 2 frames")
    return inp.cached(f"consistency:{name}", lambda: consistency(_per_frame(inp, name)))


@metric("subject_consistency", "higher", "cosine", "curve_frame", ["frames", "features"])
def subject_consistency(inp: MetricInput) -> np.ndarray:
    """VBench subject consistency per frame: DINO cosine to the first and previous frames."""
    return _latent_curve(inp, _consistency_of(inp, "dino"))


@metric("subject_consistency_score", "higher", "cosine", "scalar", ["frames", "features"])
def subject_consistency_score(inp: MetricInput) -> float:
    """VBench subject consistency of the video: the per-frame DINO score, mean over frames."""
    return float(np.nanmean(_consistency_of(inp, "dino")))


@metric("background_consistency", "higher", "cosine", "curve_frame", ["frames", "features"])
def background_consistency(inp: MetricInput) -> np.ndarray:
    """VBench background consistency per frame: CLIP cosine to the first and previous frames."""
    return _latent_curve(inp, _consistency_of(inp, "clip"))


@metric("background_consistency_score", "higher", "cosine", "scalar", ["frames", "features"])
def background_consistency_score(inp: MetricInput) -> float:
    """VBench background consistency of the video: the per-frame CLIP score, mean over frames."""
    return float(np.nanmean(_consistency_of(inp, "clip")))


# --- CLIP score against the prompt in force --------------------------------------------------
def prompt_text(prompt: Any, latent_frame: int) -> str:
    """Text of the prompt in force at a latent frame (a schedule's ``.at``, else the prompt)."""
    if prompt is None:
        raise Unavailable("the CLIP score needs the video's prompt")
    if hasattr(prompt, "at"):
        prompt = prompt.at(int(latent_frame))
    return prompt.text() if hasattr(prompt, "text") else str(prompt)


def _segment_texts(inp: MetricInput) -> list[str]:
    return [prompt_text(inp.prompt, s * inp.segment_frames) for s in range(inp.segments)]


def _clip_scores(inp: MetricInput) -> np.ndarray:
    """CLIP score of every pixel frame against the prompt in force at its latent frame."""
    def make() -> np.ndarray:
        lat = inp.frame_latent()
        texts = [prompt_text(inp.prompt, t) for t in lat]
        image = _per_frame(inp, "clip")
        unique = sorted(set(texts))
        text = dict(zip(unique, _net(inp, "clip").text(unique), strict=True))
        t = np.stack([text[s] for s in texts])
        cos = (image * t).sum(1) / np.maximum(
            np.linalg.norm(image, axis=1) * np.linalg.norm(t, axis=1), 1e-12)
        return CLIP_SCALE * np.clip(cos, 0, None)
    return inp.cached("clip_scores", make)


@metric("clip_score", "higher", "CLIP score", "curve_block", ["frames", "features"])
def clip_score(inp: MetricInput) -> np.ndarray:
    """Per segment, 100 x CLIP cosine of its frames to the prompt in force (mean over frames)."""
    curve = _latent_curve(inp, _clip_scores(inp))
    with np.errstate(all="ignore"):
        return np.nanmean(curve.reshape(inp.segments, inp.segment_frames), 1)


@metric("clip_drift", "lower", "CLIP score", "curve_block", ["frames", "features"])
def clip_drift(inp: MetricInput) -> np.ndarray:
    """Fall of the CLIP score from the first segment of the prompt in force (0 = none)."""
    score, texts = clip_score.fn(inp), _segment_texts(inp)
    start = 0
    out = np.empty(len(score))
    for s in range(len(score)):
        if texts[s] != texts[start]:
            start = s
        out[s] = score[start] - score[s]
    return out


@metric("clip_drift_end", "lower", "CLIP score", "scalar", ["frames", "features"])
def clip_drift_end(inp: MetricInput) -> float:
    """Fall of the CLIP score at the last segment from the first of its prompt."""
    return float(clip_drift.fn(inp)[-1])


# --- RAFT: dynamic degree and the motion-smoothness stand-in -------------------------------
def _fps(inp: MetricInput) -> float:
    if "fps" in inp.options:
        return float(inp.options["fps"])
    if inp.spec is None:
        return 8.0
    f, lat = len(inp.need_frames()), inp.latent_frames
    ratio = (f - 1) / (lat - 1) if lat > 1 and f > 1 else f / max(lat, 1)
    return float(inp.spec.latent_fps * ratio)


def dynamic_rule(scores: np.ndarray, sampled: int, fps: float) -> tuple[np.ndarray, bool, float]:
    """VBench's rule on pair scores (px at a 256-px short side): (moving pairs, dynamic, threshold).

    A pair moves above ``6 * max(1, 8 / fps)``; the video is dynamic if at least
    ``round(4 * sampled / 16)`` pairs move.
    """
    threshold = THRESHOLD * max(1.0, 8.0 / fps)
    moving = np.asarray(scores) > threshold
    return moving, bool(moving.sum() >= round(4 * sampled / 16)), threshold


def _chunks(first: np.ndarray, second: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frame-index pairs in chunks of ``CHUNK``, so a long video is never copied whole."""
    for a in range(0, len(first), CHUNK):
        yield first[a:a + CHUNK], second[a:a + CHUNK]


def _dynamic(inp: MetricInput) -> dict[str, Any]:
    def make() -> dict[str, Any]:
        frames, fps = inp.need_frames(), _fps(inp)
        stride = int(inp.options.get("flow_stride", max(1, round(fps / 8))))
        idx = np.arange(0, len(frames), stride)
        if len(idx) < 2:
            raise Unavailable(f"dynamic degree needs 2 frames {stride} apart; the video has "
                              f"{len(frames)}")
        raft = _net(inp, "raft")
        scores = np.concatenate([
            flow_top_magnitude(raft.flow(raft.prepare(frames[a]), raft.prepare(frames[b])))
            for a, b in _chunks(idx[:-1], idx[1:])])
        moving, dynamic, threshold = dynamic_rule(scores, len(idx), fps)
        return {"frames": idx[1:], "scores": scores, "moving": moving, "dynamic": dynamic,
                "threshold": threshold, "stride": stride}
    return inp.cached("dynamic", make)


def _at_frames(inp: MetricInput, frames: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(len(inp.need_frames()), np.nan)
    out[frames] = values
    return _latent_curve(inp, out)


@metric("flow_magnitude", "higher", "px at 256", "curve_frame", ["frames"])
def flow_magnitude(inp: MetricInput) -> np.ndarray:
    """Top-5% RAFT flow magnitude into each sampled frame (px at a 256-px short side)."""
    d = _dynamic(inp)
    return _at_frames(inp, d["frames"], d["scores"])


@metric("flow_dynamic", "higher", "fraction of pairs", "curve_frame", ["frames"])
def flow_dynamic(inp: MetricInput) -> np.ndarray:
    """Share of frame pairs that move by VBench's threshold (dynamic degree over time)."""
    d = _dynamic(inp)
    return _at_frames(inp, d["frames"], d["moving"].astype(float))


@metric("vbench_dynamic_degree", "higher", "fraction", "scalar", ["frames"])
def vbench_dynamic_degree(inp: MetricInput) -> float:
    """VBench dynamic degree of the video: 1 if enough RAFT frame pairs move, else 0."""
    return float(_dynamic(inp)["dynamic"])


def interpolate_middle(a: torch.Tensor, c: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The frame halfway between ``a`` and ``c`` (N, 3, H, W) by linear motion along the flow
    ``u`` from a to c (N, 2, H, W): ``(a(x - u / 2) + c(x + u / 2)) / 2`` (edges clamped)."""
    h, w = a.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=a.dtype), torch.arange(w, dtype=a.dtype),
                            indexing="ij")
    base = torch.stack([xs, ys])[None]  # (1, 2, H, W): x, y

    def sample(img: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        grid = torch.stack([2 * at[:, 0] / max(w - 1, 1) - 1, 2 * at[:, 1] / max(h - 1, 1) - 1],
                           -1)
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                             align_corners=True)

    half = flow.to(a.dtype) / 2
    return (sample(a, base - half) + sample(c, base + half)) / 2


def _smoothness(inp: MetricInput) -> tuple[np.ndarray, np.ndarray]:
    def make() -> tuple[np.ndarray, np.ndarray]:
        frames = inp.need_frames()
        odd = np.arange(1, len(frames) - 1, 2)
        if not len(odd):
            raise Unavailable("the smoothness stand-in needs at least 3 frames")
        raft = _net(inp, "raft")
        out = []
        for mid, _ in _chunks(odd, odd):
            a, b, c = (raft.prepare(frames[i]) for i in (mid - 1, mid, mid + 1))
            guess = interpolate_middle(a, c, raft.flow(a, c))
            out.append((guess - b).abs().mean((1, 2, 3)).numpy())
        return odd, 1.0 - np.concatenate(out).astype(np.float64)
    return inp.cached("smoothness", make)


@metric("flow_smoothness", "higher", "1 - MAE", "curve_frame", ["frames"])
def flow_smoothness(inp: MetricInput) -> np.ndarray:
    """Stand-in for VBench motion smoothness: odd frames re-created by RAFT-flow interpolation."""
    frames, values = _smoothness(inp)
    return _at_frames(inp, frames, values)


@metric("flow_smoothness_score", "higher", "1 - MAE", "scalar", ["frames"])
def flow_smoothness_score(inp: MetricInput) -> float:
    """Stand-in for VBench motion smoothness of the video (RAFT interpolation, not AMT)."""
    return float(_smoothness(inp)[1].mean())
