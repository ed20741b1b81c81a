"""Metrics of one video: drift, prompt fidelity, repetition, motion, discontinuity, LPIPS.

Segments are ``segment_frames`` latent frames (default: one block). Features come from the
input's feature backend, pooled per latent frame. Prompt fidelity, identities and sprite speed
are read by the analysers of the video's world (``MetricInput.need_world``), real clips come
from its simulator. Knobs (``MetricInput.options``):

- ``references`` (4): real clips simulated for the Frechet distance when none are given
  (the same prompt, as long as the video; see the world's ``references``);
- ``repetition_window`` (``spec.train_frames``): self-similarity only looks further back than
  this many latent frames;
- ``norepeat_threshold`` (0.98): cosine above which a segment duplicates an earlier one;
- ``motion_window`` (3): pixel frames over which a change is measured (a slow sprite moves
  in whole-pixel jumps, so one-frame differences are often zero even for true motion);
- ``pixel_tolerance`` (0.1) and ``moving_fraction`` (0.01): a pixel changed, a frame moved;
- ``lpips_net`` ("alex"): LPIPS trunk (alex, vgg, squeeze).
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import torch

from toolkit.metrics import spans
from toolkit.metrics.base import MetricInput, Unavailable, metric, pool
from toolkit.metrics.features import frame_features, frechet, load_lpips, lpips_status, psd_sqrt

EDGE = 0.15  # start / end contrast: first vs last 15% of the latent frames
EPS = 1e-8


def vde(series: np.ndarray, relative: bool = False) -> float:
    """Video Drift Error of a per-segment series q, bounded and finite for any first segment.

    ``sum_i w_i d(q_i, q_0)`` over the finite segments ``i = 1 .. S-1``, with weights growing
    linearly with the index (``w_i = i / sum_j j``, so late drift counts most) and

    - ``d = |q_i - q_0|`` (default): the change on the measure's own scale, for fractions
      such as prompt fidelity: vde is then a fraction in [0, 1];
    - ``d = |q_i - q_0| / (|q_i| + |q_0|)`` (``relative``, 0 when both are 0): the symmetric
      relative change, in [0, 1] whatever the scale (motion).

    0 means no change. Neither form divides by the first segment alone, so a first segment
    scoring 0 gives at most 1, never an explosion.
    """
    q = np.asarray(series, dtype=np.float64)
    i = np.arange(len(q))
    ok = np.isfinite(q) & (i > 0)
    if not np.isfinite(q[0]) or not ok.any():
        raise Unavailable("VDE needs a finite first segment and at least one more")
    w = i[ok] / i[ok].sum()
    change = np.abs(q[ok] - q[0])
    if relative:
        size = np.abs(q[ok]) + abs(q[0])
        change = np.divide(change, size, out=np.zeros_like(change), where=size > 0)
    return float((w * change).sum())


# --- shared, cached intermediates ------------------------------------------------------
def latent_features(inp: MetricInput) -> np.ndarray:
    """Feature (L, D) of every latent frame (pixel frames pooled)."""
    def make() -> np.ndarray:
        feats = frame_features(inp.need_frames(), inp.feature, inp.backends.get(inp.feature),
                               inp.options)
        return pool(feats, inp.frame_latent(), inp.latent_frames)
    return inp.cached("features", make)


def _segments(inp: MetricInput) -> np.ndarray:
    f = latent_features(inp)
    return f.reshape(inp.segments, inp.segment_frames, f.shape[1])  # (S, seg, D)


def _edges(n: int) -> int:
    return max(1, round(EDGE * n))


def world_report(inp: MetricInput) -> dict[str, np.ndarray]:
    """The world analysers' per-frame report of the video against the prompt in force (one
    prompt, or each span of a schedule against its own; ``toolkit.metrics.spans``), cached."""
    return spans.world_report(inp)


def frame_curve(inp: MetricInput, values: np.ndarray) -> np.ndarray:
    """Per-pixel-frame values pooled to one value per latent frame."""
    return pool(values, inp.frame_latent(), inp.latent_frames)


def _by_segment(inp: MetricInput, curve: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.nanmean(curve.reshape(inp.segments, inp.segment_frames), 1)


# --- drift -----------------------------------------------------------------------------
@metric("drift", "lower", "feature distance", "curve_block", ["frames", "features"])
def drift(inp: MetricInput) -> np.ndarray:
    """Distance of each segment's mean feature from the opening segment's."""
    means = _segments(inp).mean(1)
    return np.linalg.norm(means - means[0], axis=1)


def reference_clips(inp: MetricInput) -> np.ndarray:
    """Real clips of the video's prompt (N, F, 3, H, W): ``inp.references``, else ``references``
    (4) clips from the world's simulator, as long as the video (a schedule's follow it: each
    span simulated under its own prompt, ``toolkit.metrics.spans.reference_clips``)."""
    def make() -> np.ndarray:
        refs = inp.references
        if refs is None:
            refs = spans.reference_clips(inp, inp.analyser("references"),
                                         int(inp.options.get("references", 4)))
        return refs.numpy() if torch.is_tensor(refs) else np.asarray(refs)
    return inp.cached("reference_clips", make)


@metric("frechet", "lower", "Frechet distance", "curve_block",
        ["frames", "features", "references"])
def frechet_curve(inp: MetricInput) -> np.ndarray:
    """Frechet distance of each segment's features to real clips of the same prompt."""
    refs = reference_clips(inp)
    feats = frame_features(refs.reshape(-1, *refs.shape[-3:]).astype(np.float32), inp.feature,
                           inp.backends.get(inp.feature), inp.options)
    feats = feats.reshape(*refs.shape[:2], -1)  # (N, F, D)
    segs = _segments(inp)
    dim = segs.shape[2]
    # real statistics per span (a schedule's real clips change scene at its switches)
    lat, owner = inp.frame_latent(), spans.span_index(inp)
    stats = {}
    for i, span in enumerate(spans.spans(inp)):
        if len(feats[0]) != len(lat):  # real clips given at another length: pooled whole
            real = feats.reshape(-1, feats.shape[-1])
        else:
            real = feats[:, (lat >= span.start) & (lat < span.end)].reshape(-1, feats.shape[-1])
        stats[i] = (real.mean(0), psd_sqrt(np.cov(real, rowvar=False)))
    covs = [np.cov(s, rowvar=False) if len(s) > 1 else np.zeros((dim, dim)) for s in segs]
    return np.array([frechet(s.mean(0), c, *stats[owner[k * inp.segment_frames]])
                     for k, (s, c) in enumerate(zip(segs, covs, strict=True))])


@metric("start_end_distance", "lower", "feature distance", "scalar", ["frames", "features"])
def start_end_distance(inp: MetricInput) -> float:
    """Distance between the mean features of the first and the last 15% of latent frames."""
    f = latent_features(inp)
    k = _edges(len(f))
    return float(np.linalg.norm(f[:k].mean(0) - f[-k:].mean(0)))


@metric("fidelity", "higher", "fraction", "curve_frame", ["frames", "world"],
        series=("", "colour", "shape", "count", "background"))
def fidelity(inp: MetricInput) -> dict[str, np.ndarray]:
    """Prompt fidelity per frame: full match, and colours / shapes / count / background read
    right (each attribute a sub-series: ``fidelity/colour`` ...; a world's analysers may read
    fewer attributes than the sprite world's)."""
    r = world_report(inp)
    keys = {"": "match", "colour": "colours_ok", "shape": "shapes_ok", "count": "count_ok",
            "background": "background_ok"}
    return {sub: frame_curve(inp, r[k].astype(float)) for sub, k in keys.items() if k in r}


@metric("identity_drift", "lower", "fraction", "curve_frame", ["frames", "world"])
def identity_drift(inp: MetricInput) -> np.ndarray:
    """Share of sprite identities (colour, shape) changed from the opening segment's (of the
    span: a schedule's spans each against their own opening).

    The opening identity is the most common multiset of readings over the first segment;
    a frame scores ``1 - |seen & opening| / max(|seen|, |opening|)`` (0 when both are empty).
    """
    identities = inp.analyser("identities")
    for span in spans.spans(inp):
        spans.record(inp, span.prompt)  # a world prompt, else unavailable
    seen = inp.cached("identities", lambda: identities(inp.need_frames()))
    lat, owner = inp.frame_latent(), spans.span_index(inp)
    out = np.zeros(len(seen))
    for span in spans.spans(inp):  # each span against its own opening
        opening = [tuple(sorted(c.elements())) for c, t in zip(seen, lat, strict=True)
                   if span.start <= t < span.start + inp.segment_frames]
        ref = Counter(Counter(opening).most_common(1)[0][0])
        for p in np.nonzero(owner[lat] == owner[span.start])[0]:
            size = max(sum(seen[p].values()), sum(ref.values()))
            out[p] = 1.0 - sum((seen[p] & ref).values()) / size if size else 0.0
    return frame_curve(inp, out)


@metric("vde", "lower", "fraction", "scalar", ["frames", "world"])
def vde_fidelity(inp: MetricInput) -> float:
    """Video Drift Error of the per-segment prompt fidelity: the weighted mean absolute change
    from the first segment, late segments weighted most, in [0, 1] (see ``vde``)."""
    return vde(_by_segment(inp, fidelity.fn(inp)[""]))


@metric("fidelity_start", "higher", "fraction", "scalar", ["frames", "world"])
def fidelity_start(inp: MetricInput) -> float:
    """Prompt fidelity over the first 15% of latent frames."""
    f = fidelity.fn(inp)[""]
    return float(np.nanmean(f[:_edges(len(f))]))


@metric("fidelity_end", "higher", "fraction", "scalar", ["frames", "world"])
def fidelity_end(inp: MetricInput) -> float:
    """Prompt fidelity over the last 15% of latent frames."""
    f = fidelity.fn(inp)[""]
    return float(np.nanmean(f[-_edges(len(f)):]))


@metric("fidelity_mean", "higher", "fraction", "scalar", ["frames", "world"])
def fidelity_mean(inp: MetricInput) -> float:
    """Prompt fidelity over the whole video."""
    return float(np.nanmean(fidelity.fn(inp)[""]))


@metric("start_end_fidelity_drop", "lower", "fraction", "scalar", ["frames", "world"])
def start_end_fidelity_drop(inp: MetricInput) -> float:
    """Prompt fidelity of the first 15% of latent frames minus that of the last 15%."""
    f = fidelity.fn(inp)[""]
    k = _edges(len(f))
    return float(np.nanmean(f[:k]) - np.nanmean(f[-k:]))


# --- repetition ------------------------------------------------------------------------
def segment_similarity(feats: np.ndarray, segments: int) -> np.ndarray:
    """Cosine similarity (S, S) of segments of latent-frame features (L, D) (concatenated frame
    features, the video's mean segment removed).

    Two all-zero vectors (identical to the mean) count as identical (1), one as unrelated (0).
    """
    x = feats.reshape(segments, -1)
    x = x - x.mean(0)
    norm = np.linalg.norm(x, axis=1)
    zero = norm < 1e-9
    sim = (x @ x.T) / np.maximum(norm[:, None] * norm[None, :], EPS)
    sim[zero[:, None] & zero[None, :]] = 1.0
    return sim


def long_lag(sim: np.ndarray, lag: int) -> np.ndarray:
    """Per segment, its largest similarity to a segment at least ``lag`` segments back."""
    out = np.full(len(sim), np.nan)
    for i in range(lag, len(sim)):
        out[i] = sim[i, : i - lag + 1].max()
    return out


def similarity(inp: MetricInput) -> np.ndarray:
    """Cosine similarity (S, S) of the video's segments (see ``segment_similarity``)."""
    return inp.cached("similarity",
                      lambda: segment_similarity(latent_features(inp), inp.segments))


def repetition_lag(inp: MetricInput) -> int:
    """Segments further back than the repetition window (at least 2)."""
    window = int(inp.options.get("repetition_window", inp.train_frames))
    return max(2, -(-window // inp.segment_frames))


@metric("self_similarity", "lower", "cosine", "curve_block", ["frames", "features"])
def self_similarity(inp: MetricInput) -> np.ndarray:
    """Most similar segment further back than the window (long-lag self-similarity)."""
    return long_lag(similarity(inp), repetition_lag(inp))


@metric("repetition", "lower", "cosine", "scalar", ["frames", "features"])
def repetition(inp: MetricInput) -> float:
    """Mean long-lag self-similarity over the segments that have one."""
    curve = self_similarity.fn(inp)
    if not np.isfinite(curve).any():
        raise Unavailable(f"the video is not longer than the repetition window "
                          f"({repetition_lag(inp)} segments)")
    return float(np.nanmean(curve))


@metric("norepeat", "higher", "fraction", "scalar", ["frames", "features"])
def norepeat(inp: MetricInput) -> float:
    """1 - share of segments nearly duplicating an earlier, non-adjacent segment."""
    sim = similarity(inp)
    if len(sim) < 3:
        raise Unavailable("NoRepeat needs at least 3 segments")
    tau = float(inp.options.get("norepeat_threshold", 0.98))
    dup = [sim[i, : i - 1].max() > tau for i in range(2, len(sim))]
    return 1.0 - float(np.mean(dup))


# --- motion and discontinuity ----------------------------------------------------------
def _changed(inp: MetricInput) -> np.ndarray:
    """Share of pixels changed between pixel frames ``motion_window`` apart.

    Frame t is compared with frame ``t - w``; the first w frames, which have none, with
    ``t + w`` (the same lag, so the opening segment is not biased low). NaN if F <= w.
    """
    f = inp.need_frames()
    w = int(inp.options.get("motion_window", 3))
    tol = float(inp.options.get("pixel_tolerance", 0.1))
    out = np.full(len(f), np.nan)
    if len(f) > w:
        d = (np.abs(f[w:] - f[:-w]).max(1) > tol).mean((1, 2))
        out[w:], out[:w] = d, d[:w]
    return out


@metric("motion", "higher", "fraction of pixels", "curve_frame", ["frames"])
def motion(inp: MetricInput) -> np.ndarray:
    """Share of pixels changed over the motion window (0 = frozen)."""
    return frame_curve(inp, inp.cached("changed", lambda: _changed(inp)))


@metric("dynamic_degree", "higher", "fraction of frames", "scalar", ["frames"])
def dynamic_degree(inp: MetricInput) -> float:
    """Share of frames that moved (more than ``moving_fraction`` of pixels changed)."""
    c = inp.cached("changed", lambda: _changed(inp))
    c = c[np.isfinite(c)]
    if not len(c):
        raise Unavailable("needs at least 2 frames")
    return float((c > float(inp.options.get("moving_fraction", 0.01))).mean())


@metric("moving", "higher", "fraction of frames", "curve_frame", ["frames"])
def moving(inp: MetricInput) -> np.ndarray:
    """Per latent frame, the share of its pixel frames that moved: dynamic degree over time.

    Its mean over a window of latent frames is that window's dynamic degree (the scalar
    ``dynamic_degree`` is the whole video's).
    """
    c = inp.cached("changed", lambda: _changed(inp))
    moved = np.where(np.isfinite(c), c > float(inp.options.get("moving_fraction", 0.01)), np.nan)
    return frame_curve(inp, moved)


@metric("sprite_speed", "higher", "px/frame", "curve_frame", ["frames", "world"])
def sprite_speed(inp: MetricInput) -> np.ndarray:
    """Mean sprite speed read by the analysers (NaN where no sprite is seen)."""
    return frame_curve(inp, world_report(inp)["speed"])


@metric("frozen", "lower", "fraction of frames", "curve_frame", ["frames", "world"])
def frozen(inp: MetricInput) -> np.ndarray:
    """Per latent frame, the share of its pixel frames whose sprites stand still (analysers'
    speed under the world's ``frozen_speed``, 0.1 px/frame on the sprite world; NaN where none
    is seen).

    Unlike ``moving`` it does not saturate on noise: noise moves pixels, not sprites. Simulator
    clips of the sprite world read under 1% frozen.
    """
    still = inp.analyser("frozen_speed")
    speed = world_report(inp)["speed"]
    return frame_curve(inp, np.where(np.isfinite(speed), speed < still, np.nan))


@metric("vde_motion", "lower", "fraction", "scalar", ["frames"])
def vde_motion(inp: MetricInput) -> float:
    """Video Drift Error of the per-segment motion, symmetric relative change in [0, 1]
    (see ``vde``)."""
    return vde(_by_segment(inp, motion.fn(inp)), relative=True)


def _boundary_changes(inp: MetricInput) -> tuple[np.ndarray, np.ndarray, float]:
    f = inp.need_frames()
    step = np.abs(np.diff(f, axis=0)).mean((1, 2, 3))  # change into pixel frame p = 1 ..
    block = inp.frame_latent() // inp.block_frames
    cross = block[1:] != block[:-1]
    if cross.all() or not cross.any():
        raise Unavailable("needs blocks with more than one frame and more than one block")
    return step[cross], block[1:][cross], float(step[~cross].mean())


@metric("discontinuity", "lower", "ratio", "scalar", ["frames"])
def discontinuity(inp: MetricInput) -> float:
    """Mean frame change across block boundaries / within blocks (1 = seamless)."""
    at, _, within = _boundary_changes(inp)
    return float((at.mean() + EPS) / (within + EPS))


@metric("boundary_change", "lower", "ratio", "curve_block", ["frames"])
def boundary_change(inp: MetricInput) -> tuple[np.ndarray, np.ndarray]:
    """Frame change into each block / the mean change within blocks (1 = seamless)."""
    at, blocks, within = _boundary_changes(inp)
    return blocks * inp.block_frames, (at + EPS) / (within + EPS)


@functools.lru_cache(maxsize=2)
def _lpips_net(net: str) -> torch.nn.Module:
    return load_lpips(net)


@metric("lpips_step", "lower", "LPIPS", "curve_frame", ["frames"])
def lpips_step(inp: MetricInput) -> np.ndarray:
    """LPIPS between consecutive frames; only with the backbone's real weights present."""
    frames = inp.need_frames()
    net_name = str(inp.options.get("lpips_net", "alex"))
    present, reason = lpips_status(net_name)
    if not present:
        raise Unavailable(reason)
    try:
        net = _lpips_net(net_name)
    except (FileNotFoundError, RuntimeError) as err:
        raise Unavailable(str(err)) from err
    x = torch.from_numpy(frames) * 2 - 1
    scale = max(1, -(-64 // min(x.shape[-2:])))
    x = x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    out = np.full(len(x), np.nan)
    with torch.no_grad():
        for a in range(1, len(x), 64):
            b = min(len(x), a + 64)
            out[a:b] = net(x[a:b], x[a - 1: b - 1]).flatten().numpy()
    return frame_curve(inp, out)
