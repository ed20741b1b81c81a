"""Metrics on constructed videos whose answer is known (simulator clips, loops, freezes)."""

import time

import numpy as np
import pytest
import torch
from scipy import linalg

from toolkit.core.spec import ModelSpec
from toolkit.core.trace import BlockRecord, Trace
from toolkit.metrics import (
    DIRECTIONS,
    FEATURES,
    KINDS,
    METRIC_SETS,
    METRICS,
    MetricInput,
    compute,
    latent_index,
    metric_names,
)
from toolkit.metrics.features import frechet, psd_sqrt
from toolkit.metrics.video import vde
from toolkit.registry import UnknownName
from toolkit.worlds.sprites import BACKGROUNDS, PALETTE, prompt_for_seed, simulate, split_seed

FRAMES, K = 480, 202  # corruption starts at frame 202: inside segment 50 (frames 200..203)
SPEC = ModelSpec(num_layers=1, num_heads=1, head_dim=24, latent_channels=12, latent_height=8,
                 latent_width=8, block_frames=4, train_frames=20)
PROMPT = prompt_for_seed(0, "heldout")  # one sprite whose path does not repeat in 480 frames


def clip(seed: int = 0, frames: int = FRAMES) -> torch.Tensor:
    return simulate([PROMPT], [split_seed(seed, "heldout")], frames)[0]


def trace_of(blocks: int, bf: int = 4) -> Trace:
    t = Trace("Test", bf)
    for i in range(blocks):
        t.blocks.append(BlockRecord(i, float(i * bf), 16 * min(i, 3), {"sink": 16, "recent": 8 * i},
                                    {"sink": 64, "recent": 32 * i},
                                    {"denoise": 0.01, "cache_update": 0.002}))
    return t


def run(frames, which="world", **kw) -> "MetricResults":  # noqa: F821
    return compute(MetricInput(frames=frames, prompt=PROMPT, spec=SPEC, **kw), which)


@pytest.fixture(scope="module")
def gt():
    return run(clip())


def curve(res, key):
    return res.values[key][1]


def test_declarations_are_complete():
    for name in set().union(*METRIC_SETS.values()):
        m = METRICS.get(name)
        assert m.direction in DIRECTIONS and m.kind in KINDS and m.unit and m.description
    assert METRICS.get("norepeat").optuna_direction == "maximize"
    assert METRICS.get("kv_bytes").optuna_direction == "minimize"
    with pytest.raises(UnknownName, match="Did you mean 'drift'"):
        metric_names(["drfit"])
    with pytest.raises(ValueError, match="unknown metric set"):
        metric_names("nope")


def test_ground_truth_has_low_drift_and_full_fidelity(gt):
    assert np.all(curve(gt, "fidelity") == 1) and len(curve(gt, "fidelity")) == FRAMES
    for sub in ("colour", "shape", "count"):
        assert np.all(curve(gt, f"fidelity/{sub}") == 1)
    assert np.all(curve(gt, "identity_drift") == 0)
    assert gt.values["vde"] == 0 and gt.values["start_end_fidelity_drop"] == 0
    assert curve(gt, "drift").max() < 0.15 and len(curve(gt, "drift")) == FRAMES // 4
    assert curve(gt, "frechet").max() < 0.1
    assert gt.values["dynamic_degree"] == 1 and gt.values["vde_motion"] < 0.2
    assert 0.9 < gt.values["discontinuity"] < 1.1
    np.testing.assert_array_equal(gt.values["drift"][0], np.arange(0, FRAMES, 4))


@pytest.mark.parametrize("kind", ["noise", "wrong_colour"])
def test_corrupted_tail_raises_drift_from_that_segment(gt, kind):
    v = clip()
    if kind == "noise":
        v[K:] = torch.rand(v[K:].shape, generator=torch.Generator().manual_seed(0))
    else:
        own = torch.tensor(PALETTE[PROMPT.sprites[0].colour])[:, None, None]
        other = next(c for c in PALETTE if c != PROMPT.sprites[0].colour)
        hit = (v[K:] - own).abs().sum(1, keepdim=True) < 1e-6
        v[K:] = torch.where(hit, torch.tensor(PALETTE[other])[:, None, None], v[K:])
    bad = run(v)
    seg = K // 4
    for key in ("drift", "frechet"):
        np.testing.assert_array_equal(curve(bad, key)[:seg], curve(gt, key)[:seg])
        assert curve(bad, key)[seg:].min() > 2 * curve(gt, key).max()
    fid = curve(bad, "fidelity")
    assert np.all(fid[:K] == 1) and np.all(fid[K:] == 0)
    if kind == "wrong_colour":
        assert np.all(curve(bad, "identity_drift")[K:] == 1)
        assert np.all(curve(bad, "fidelity/shape")[K:] == 1)  # the shape still reads right
    assert bad.values["vde"] > 0.5 and bad.values["start_end_fidelity_drop"] == 1
    assert bad.values["start_end_distance"] > 5 * gt.values["start_end_distance"]


def test_frozen_video_has_zero_motion(gt):
    res = run(clip()[:1].repeat(FRAMES, 1, 1, 1))
    assert np.all(curve(res, "motion") == 0) and np.all(curve(res, "sprite_speed")[1:] == 0)
    assert res.values["dynamic_degree"] == 0
    assert res.values["norepeat"] == 0 and res.values["repetition"] == 1
    assert np.nanmin(curve(gt, "motion")) > 0 and np.nanmin(curve(gt, "sprite_speed")) > 0


def test_moving_is_dynamic_degree_over_time(gt):
    frozen_tail = torch.cat([clip()[:240], clip()[239:240].repeat(240, 1, 1, 1)])
    res = run(frozen_tail, ["moving", "dynamic_degree"])
    moving = curve(res, "moving")
    assert moving[:50].mean() > 0.9 and np.all(moving[-55:] == 0)  # motion window: 3 frames
    assert np.isclose(np.nanmean(moving), res.values["dynamic_degree"])
    assert np.isclose(np.nanmean(curve(gt, "moving")), gt.values["dynamic_degree"])


def test_empty_scene_keeps_its_identity():
    navy = torch.tensor(BACKGROUNDS["navy"])[None, :, None, None].expand(40, 3, 16, 16)
    res = run(navy.clone(), ["identity_drift", "fidelity"])
    assert np.all(curve(res, "identity_drift") == 0) and np.all(curve(res, "fidelity") == 0)


def test_looping_video_has_high_repetition(gt):
    res = run(clip(frames=SPEC.train_frames).repeat(FRAMES // SPEC.train_frames, 1, 1, 1))
    sim = curve(res, "self_similarity")
    lag = SPEC.train_frames // 4
    assert np.all(np.isnan(sim[:lag])) and np.all(sim[lag:] > 0.999)
    assert res.values["repetition"] > gt.values["repetition"] + 0.1
    assert res.values["norepeat"] < 0.1 < 0.9 < gt.values["norepeat"]


def test_block_boundary_jumps_are_discontinuities(gt):
    blocks = [clip(seed=b, frames=4) for b in range(FRAMES // 4)]  # each block a new clip
    res = run(torch.cat(blocks))
    assert res.values["discontinuity"] > 3 * gt.values["discontinuity"]
    steps, ratio = res.values["boundary_change"]
    np.testing.assert_array_equal(steps, np.arange(4, FRAMES, 4))
    assert np.median(ratio) > 2 and 0.5 < np.median(curve(gt, "boundary_change")) < 1.5


def test_vde_weights_late_segments_more():
    assert vde([1.0, 1.0, 0.5]) == pytest.approx(2 / 3 * 0.5)
    assert vde([1.0, 0.5, 1.0]) == pytest.approx(1 / 3 * 0.5)
    assert vde([0.8, 0.8, 0.8]) == 0
    assert vde([2.0, 2.0, 1.0], relative=True) == pytest.approx(2 / 3 * 1 / 3)


def test_vde_is_bounded_when_the_first_block_scores_0():
    """The old form divided by the first segment (floored at 1e-3): 0 -> 0.1 gave 66.7."""
    rng = np.random.default_rng(0)
    for series in ([0.0, 0.1, 0.1], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0], *rng.random((50, 24))):
        for relative in (False, True):
            value = vde(series, relative=relative)
            assert np.isfinite(value) and 0 <= value <= 1
    assert vde([0.0, 0.1, 0.1]) == pytest.approx(0.1)
    assert vde([0.0, 1.0, 1.0]) == vde([0.0, 0.3, 0.3], relative=True) == 1  # the bound
    assert vde([0.0, 0.0, 0.0], relative=True) == 0


def test_frechet_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) @ rng.normal(size=(5, 5))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu1, mu2 = a.mean(0), b.mean(0)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet(mu1, s1, mu2, psd_sqrt(s2)) == pytest.approx(want, rel=1e-6)


def test_latent_index_and_pooling():
    np.testing.assert_array_equal(latent_index(5, 5), np.arange(5))
    np.testing.assert_array_equal(latent_index(9, 3), [0, 1, 1, 1, 1, 2, 2, 2, 2])  # causal VAE
    np.testing.assert_array_equal(latent_index(6, 3), [0, 0, 1, 1, 2, 2])
    v = clip(frames=9)  # 9 pixel frames decoded from 3 latent frames (temporal factor 4)
    res = compute(MetricInput(frames=v, latents=torch.zeros(4, 3, 2, 2), prompt=PROMPT,
                              segment_frames=1), ["fidelity", "drift"])
    assert len(curve(res, "fidelity")) == 3 and len(curve(res, "drift")) == 3


def test_no_frames_skips_frame_metrics_with_reason():
    res = compute(MetricInput(latents=torch.zeros(4, 40, 2, 2), trace=trace_of(10), spec=SPEC))
    assert "decoded frames" in res.unavailable["drift"]
    assert "decoded frames" in res.unavailable["motion"]
    assert "kv_bytes" in res.values and "drift" not in res.values


def test_system_curves_come_from_the_trace():
    trace = trace_of(10)
    res = compute(MetricInput(trace=trace, spec=SPEC, latents=torch.zeros(4, 40, 2, 2)),
                  "system")
    steps, total = res.values["kv_bytes"]
    np.testing.assert_array_equal(steps, np.arange(0, 40, 4))
    np.testing.assert_array_equal(total, [b.total_bytes for b in trace.blocks])
    np.testing.assert_array_equal(curve(res, "kv_bytes/recent"), 32 * np.arange(10))
    np.testing.assert_array_equal(curve(res, "kv_tokens/sink"), np.full(10, 16))
    np.testing.assert_allclose(curve(res, "block_seconds/denoise"), 0.01)
    np.testing.assert_allclose(curve(res, "block_seconds"), 0.012)
    assert res.values["peak_kv_bytes"] == 64 + 32 * 9
    assert res.values["latency_growth"] == pytest.approx(1.0)
    assert res.values["peak_rss_bytes"] > 2**20
    if not torch.cuda.is_available():
        assert "CUDA" in res.unavailable["cuda_peak_bytes"]


def test_lpips_needs_real_backbone_weights(monkeypatch, tmp_path):
    from toolkit.metrics.features import lpips_backbone_file

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    frozen = clip(frames=8)[:1].repeat(8, 1, 1, 1)
    opts = {"lpips_net": "squeeze"}
    res = run(frozen, ["lpips_step"], options=opts)
    assert "not present" in res.unavailable["lpips_step"] and "lpips_step" not in res.values
    path = lpips_backbone_file("squeeze")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not weights")  # present but broken: never a random backbone
    assert "could not be read" in run(frozen, ["lpips_step"], options=opts).unavailable[
        "lpips_step"]
    torch.save({"features.0.bias": torch.zeros(3)}, path)  # weights of something else
    assert "lpips_step" in run(frozen, ["lpips_step"], options=opts).unavailable
    from torchvision.models import squeezenet1_1

    torch.manual_seed(0)
    trunk = squeezenet1_1().features.state_dict()
    torch.save({f"features.{k}": v for k, v in trunk.items()}, path)  # a loadable file
    res = run(frozen, ["lpips_step"], options=opts)
    lp = curve(res, "lpips_step")
    assert np.isnan(lp[0]) and np.all(lp[1:] == 0)  # identical frames: distance 0


def test_feature_backends_are_pluggable():
    @FEATURES.register("test-mean-rgb")
    class MeanRGB:
        def __call__(self, frames):
            return frames.mean((2, 3))

    try:
        v = clip(frames=40)
        res = run(v, ["drift"], feature="test-mean-rgb")
        means = v.numpy().mean((2, 3)).reshape(10, 4, 3).mean(1)
        np.testing.assert_allclose(curve(res, "drift"), np.linalg.norm(means - means[0], axis=1),
                                   rtol=1e-5, atol=1e-7)
    finally:
        FEATURES._items.pop("test-mean-rgb")


def test_same_video_same_metrics_and_fast():
    v = clip()
    start = time.perf_counter()
    a = compute(MetricInput(frames=v, prompt=PROMPT, spec=SPEC, trace=trace_of(FRAMES // 4)))
    assert time.perf_counter() - start < 10
    b = compute(MetricInput(frames=v.clone(), prompt=PROMPT, spec=SPEC,
                            trace=trace_of(FRAMES // 4)))
    for key, value in a.values.items():
        if METRICS.get(key.split("/")[0]).deterministic:
            if isinstance(value, tuple):
                np.testing.assert_array_equal(value[1], b.values[key][1])
            else:
                assert value == b.values[key] or (np.isnan(value) and np.isnan(b.values[key]))
