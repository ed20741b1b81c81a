"""PackForcing: invariants against exact references, partition bounds, positions, selection."""

import math
import re
from types import SimpleNamespace

import pytest
import torch

from strategies import Full, Sink
from strategies.packforcing import PackForcing
from toolkit.core.cache import BlockKV, FinishedBlock
from toolkit.core.rollout import rollout
from toolkit.core.rope import Rope, apply_rope, grid_positions, shift_time
from toolkit.core.sampling import SamplerConfig
from toolkit.core.testing import StrategyContract
from toolkit.models.zoo import tiny_random

FRAMES = 16


def test_identity_covering_budgets_equal_full(tiny):
    full = rollout(tiny, Full(), ["a", "b"], FRAMES, seed=1).latents
    for kw in ({"sink_frames": 2, "recent_frames": 2, "selection": "topk"},
               {"sink_frames": 0, "recent_frames": 0, "selection": "all"},
               {"sink_frames": 4, "recent_frames": 0, "selection": "recency"}):
        pf = PackForcing(compressor="identity", positions="absolute", capacity=8, top_k=8, **kw)
        got = rollout(tiny, pf, ["a", "b"], FRAMES, seed=1).latents
        diff = (got - full).abs().max().item()
        print(f"identity packforcing {kw} vs full: max abs diff {diff:.2e}")
        assert torch.allclose(got, full, atol=1e-5), kw


@pytest.mark.parametrize("sink_blocks", [1, 3])
def test_covering_budgets_make_every_position_mode_exact(tiny, sink_blocks):
    """Nothing evicted and everything selected: shift and repack move nothing, so = full.

    With a sink of several blocks this includes the blocks denoised while the sink still
    fills (the findings found the sink placed as if full there: 1x fidelity 0.36 vs 0.55).
    """
    full = rollout(tiny, Full(), ["a"], FRAMES, seed=3).latents
    for positions in ("shift", "repack"):
        pf = PackForcing(compressor="identity", positions=positions,
                         sink_frames=sink_blocks * tiny.spec.block_frames,
                         recent_frames=2, capacity=8, top_k=8)
        got = rollout(tiny, pf, ["a"], FRAMES, seed=3).latents
        assert torch.allclose(got, full, atol=1e-5), positions


def test_no_archive_equals_sink(tiny):
    sink = rollout(tiny, Sink(sink_frames=4, recent_frames=4), ["a"], FRAMES, seed=4).latents
    pf = PackForcing(sink_frames=4, recent_frames=4, capacity=0, selection="all",
                     positions="absolute")
    assert torch.equal(rollout(tiny, pf, ["a"], FRAMES, seed=4).latents, sink)


def test_compressed_mid_differs_from_full(tiny):
    full = rollout(tiny, Full(), ["a"], FRAMES, seed=1).latents
    got = rollout(tiny, PackForcing(sink_frames=2, recent_frames=2, capacity=8, top_k=8),
                  ["a"], FRAMES, seed=1).latents
    assert not torch.allclose(got, full, atol=1e-4)


@pytest.mark.parametrize("kw", [
    {},
    {"positions": "repack", "scope": "shared", "kv": "project", "compressor": "hr",
     "allow_random": True},
    {"positions": "absolute", "selection": "recency", "compressor": "pool_kv", "spatial": "grid"},
])
def test_partitions_stay_in_bounds_over_60_blocks(tiny, kw):
    pf = PackForcing(sink_frames=4, recent_frames=4, capacity=6, top_k=3, **kw)
    tpb, bf = tiny.spec.tokens_per_block, tiny.spec.block_frames
    records = []
    rollout(tiny, pf, ["a"], 60 * bf, seed=0, callbacks=[records.append])
    m = pf.compressor_module.tokens()
    for r in records:
        assert r.tokens["sink"] == min(r.index + 1, 2) * tpb
        assert r.tokens["recent"] == min(max(r.index - 1, 0), 2) * tpb
        assert r.tokens["pending"] == r.tokens["recent"] // tpb * m
        assert r.tokens["mid"] == min(max(r.index - 3, 0), 6) * m
        assert r.context_tokens <= 2 * tpb + 3 * m + 2 * tpb
        assert [len(s) for s in r.info["selected"]] == \
            [min(3, len(r.info["archive"]))] * tiny.spec.num_layers
    # the archive is full from block 9 on (2 sink, 2 recent, 6 mid): bytes stay flat
    assert records[8].total_bytes < records[9].total_bytes
    assert len({r.total_bytes for r in records[9:]}) == 1
    assert records[-1].info["evicted"] == 60 - 2 - 2 - 6 - 1  # block 59 not yet committed


# -- a stub model: no transformer, K/V crafted directly ------------------------------------
def _stub(spec):
    return SimpleNamespace(spec=spec, rope=Rope(spec), device=torch.device("cpu"), vae=None,
                           sampler=SamplerConfig(steps=2))


def _raw(spec, index, fill=None, seed=0):
    """Un-rotated keys (L, 1, H, N, D) of block ``index``: random, or a constant direction."""
    shape = (spec.num_layers, 1, spec.num_heads, spec.tokens_per_block, spec.head_dim)
    if fill is not None:
        return fill.expand(shape).clone()
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + index))


def _rotated(spec, raw, t0):
    cos, sin = (t[0].transpose(0, 1) for t in Rope(spec).cos_sin(
        grid_positions(spec, t0, spec.block_frames)))
    return apply_rope(raw, cos, sin)


def _commit(pf, spec, index, raw):
    t0 = float(index * spec.block_frames)
    kv = BlockKV(index, _rotated(spec, raw, t0), torch.zeros_like(raw), t0)
    latents = torch.zeros(1, spec.latent_channels, spec.block_frames, spec.latent_height,
                          spec.latent_width)
    pf.commit(FinishedBlock(index, latents, kv))


def test_incremental_sink_shift_equals_rerotation(tiny):
    spec = tiny.spec
    bf = spec.block_frames
    pf = PackForcing(sink_frames=4, recent_frames=2, capacity=3, top_k=2, compressor="identity",
                     positions="shift")
    pf.bind(_stub(spec))
    raws = {}
    for index in range(12):
        pf.begin_block(index)
        raws[index] = _raw(spec, index)
        _commit(pf, spec, index, raws[index])
    pf.begin_block(12)
    oldest = pf.info()["archive"][0]  # blocks 0, 1 sink; archive 8..10; recent 11
    assert oldest == 12 - 1 - 3 and pf.info()["evicted"] == 12 - 2 - 1 - 3
    for j, b in enumerate(pf._sink):
        t0 = float(oldest * bf - 4 + j * bf)
        assert b.t0 == t0
        err = (b.keys_at_t0(pf.rope) - _rotated(spec, raws[j], t0)).abs().max().item()
        print(f"sink block {j} shifted to {t0}: max abs diff {err:.2e}")
        assert err < 1e-5


def test_repack_places_selected_blocks_contiguously(tiny):
    spec = tiny.spec
    bf, tpb = spec.block_frames, spec.tokens_per_block
    pf = PackForcing(sink_frames=2, recent_frames=2, capacity=4, top_k=2, compressor="identity",
                     positions="repack", selection="recency")
    pf.bind(_stub(spec))
    raws = {}
    for index in range(7):  # sink 0; archive 1..5; recent 6
        pf.begin_block(index)
        raws[index] = _raw(spec, index)
        _commit(pf, spec, index, raws[index])
    pf.begin_block(7)
    q = torch.zeros(1, spec.num_heads, tpb, spec.head_dim)
    k, _ = pf.context(1, q, 0)
    assert pf.info()["selected"][0] == [4, 5]  # newest two of the archive 2..5
    # recent block 6 starts at frame 12; blocks 4, 5 packed before it; the sink before them
    expected = [(0, 12 - 3 * bf), (4, 12 - 2 * bf), (5, 12 - bf), (6, 12)]
    for n, (index, t0) in enumerate(expected):
        ref = _rotated(spec, raws[index], float(t0))[1]
        assert (k[:, :, n * tpb:(n + 1) * tpb] - ref).abs().max() < 1e-5, index


def test_selected_block_returns_when_its_affinity_rises(tiny):
    spec = tiny.spec
    # keys along the lowest-frequency time channel: RoPE turns them by < 0.02 rad here
    u = torch.zeros(spec.head_dim)
    u[spec.rope_split[0] - 2] = 1.0
    pf = PackForcing(sink_frames=0, recent_frames=0, capacity=8, top_k=1,
                     compressor="identity", positions="absolute")
    pf.bind(_stub(spec))
    fills = {0: 3.0 * u, 1: -3.0 * u}  # later blocks: zero keys (score 0)
    history = []
    for index in range(7):
        pf.begin_block(index)
        if index >= 2:
            sign = 1.0 if index % 2 == 0 else -1.0
            q = (sign * u).expand(1, spec.num_heads, spec.tokens_per_block, -1)
            for layer in range(spec.num_layers):
                pf.context(layer, q, 0)
            pf.context(0, -q, 1)  # later steps reuse the step-0 selection
            history.append(pf.info()["selected"])
        _commit(pf, spec, index, _raw(spec, index, fill=fills.get(index, 0.0 * u)))
    print("selected per block (per layer):", history)
    assert history == [[[0], [0]], [[1], [1]], [[0], [0]], [[1], [1]], [[0], [0]]]
    assert pf.info()["archive"] == list(range(7))


@pytest.mark.parametrize("queries, picked", [("both", 2), ("recent", 2), ("current", 1)])
def test_topk_reads_the_recent_blocks_queries(tiny, queries, picked):
    """Mid block 2 holds what the recent block shows (keys along u; the recent block's clean
    queries along u); the current block's step-0 queries (noise) point elsewhere (-u, block
    1). The paper's reading (current + recent) and recent alone must pick block 2."""
    spec = tiny.spec
    u = torch.zeros(spec.head_dim)
    u[spec.rope_split[0] - 2] = 1.0  # the slowest time channel: RoPE barely turns it
    pf = PackForcing(sink_frames=0, recent_frames=spec.block_frames, capacity=4, top_k=1,
                     compressor="identity", positions="absolute", queries=queries)
    pf.bind(_stub(spec))
    fills = {1: -3.0 * u, 2: 3.0 * u}  # other blocks: zero keys
    shape = (1, spec.num_heads, spec.tokens_per_block, spec.head_dim)
    for index in range(6):
        pf.begin_block(index)
        if index == 5:  # the recent block's cache-fill pass: its clean queries along u
            for layer in range(spec.num_layers):
                pf.context_parts(layer, u.expand(shape), pf.fill_step, fill=True)
        _commit(pf, spec, index, _raw(spec, index, fill=fills.get(index, 0.0 * u)))
    assert pf.info()["archive"] == [1, 2, 3, 4] and pf.info()["recent"] == [5]
    assert set(pf.footprint()) == {"sink", "mid", "recent", "pending"} | \
        ({"queries"} if queries != "current" else set())
    pf.begin_block(6)
    for layer in range(spec.num_layers):
        pf.context_parts(layer, (-0.5 * u).expand(shape), 0)
    assert pf.info()["selected"] == [[picked]] * spec.num_layers


@pytest.mark.parametrize("score_positions", ["stored", "common"])
def test_affinity_is_the_papers_score(tiny, score_positions):
    """The paper's summed logits, with keys where they are stored or moved to the block just
    before the current one (``common``)."""
    spec = tiny.spec
    pf = PackForcing(sink_frames=0, recent_frames=0, capacity=4, top_k=1, compressor="identity",
                     score_queries=3, score_heads=0.5, score_positions=score_positions)
    pf.bind(_stub(spec))
    for index in range(4):
        pf.begin_block(index)
        _commit(pf, spec, index, _raw(spec, index, seed=7))
    q = torch.randn(2, spec.num_heads, spec.tokens_per_block, spec.head_dim)
    layer, h, n = 1, spec.num_heads, spec.tokens_per_block
    heads = list(range(0, h, 2))[: max(1, round(h * 0.5))]
    rows = torch.linspace(0, n - 1, 3).round().long()
    ref = []
    for b in pf._mid:
        k = b.keys[layer]
        if score_positions == "common":  # keys moved to the block before the current one
            common = pf._index * spec.block_frames - spec.block_frames
            k = shift_time(k, pf.rope, common - b.rotated_at)
        k = k[:, heads]  # (B, h', M, D)
        logits = q[:, heads][:, :, rows] @ k.transpose(-1, -2) / math.sqrt(spec.head_dim)
        ref.append(logits.mean((0, 1)).sum())  # mean over batch and heads, sum over i and j
    got = pf.affinity(layer, q)
    assert torch.allclose(got, torch.stack(ref), rtol=1e-4, atol=1e-5)


def test_trace_records_selection_and_timing(tiny):
    out = rollout(tiny, PackForcing(sink_frames=2, recent_frames=2, capacity=4, top_k=2),
                  ["a"], 20, seed=0)
    last = out.trace.blocks[-1]
    assert len(last.info["selected"]) == tiny.spec.num_layers
    assert all(len(s) == 2 and set(s) <= set(range(10)) for s in last.info["selected"])
    assert {"compression", "selection", "positions"} <= set(last.seconds)


@pytest.mark.parametrize("kw, needle", [
    ({"top_k": 40, "capacity": 32}, "top_k=40"),
    ({"capacity": 0}, "capacity=0 with selection='topk'"),
    ({"top_k": 0}, "top_k=0"),
    ({"positions": "rope"}, "positions='rope'"),
    ({"selection": "fifo"}, "selection='fifo'"),
    ({"scope": "global"}, "scope='global'"),
    ({"kv": "both"}, "kv='both'"),
    ({"spatial": "corner"}, "spatial='corner'"),
    ({"compressor": "hrr"}, "Did you mean 'hr'"),
    ({"compressor_weights": "w.safetensors"}, "has no parameters"),
    ({"score_heads": 0.0}, "score_heads=0.0"),
    ({"sink_frames": -4}, "sink_frames=-4"),
])
def test_bad_hyperparameters_fail_clearly(kw, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        PackForcing(**kw)


@pytest.mark.parametrize("kw, needle", [
    ({"sink_frames": 3}, "sink_frames=3: must be a multiple of the block size 2"),
    ({"recent_frames": 1}, "recent_frames=1"),
    ({"compress_space": 8}, "compress_space=8: allowed \\[2, 4\\]"),
    ({"compress_time": 4}, "compress_time=4: must divide the block size 2"),
])
def test_check_against_model_fails_clearly(tiny, kw, needle):
    with pytest.raises(ValueError, match=needle):
        PackForcing(**kw).check(tiny.spec)


def test_vae_compressors_fail_clearly_without_vae(tiny):
    for name in ("lr", "dual"):
        with pytest.raises(ValueError, match=f"compressor='{name}' needs a model with a VAE"):
            rollout(tiny, PackForcing(compressor=name), ["a"], 4)


class TestVariantContract(StrategyContract):
    """The contract suite on non-default variants (the defaults run in test_contract.py)."""

    @pytest.fixture(autouse=True, params=[
        {"positions": "repack", "scope": "shared", "compressor": "hr", "kv": "project",
         "allow_random": True},
        {"positions": "absolute", "selection": "recency", "compressor": "pool_kv",
         "capacity": 2, "top_k": 1, "sink_frames": 0, "recent_frames": 0},
    ])
    def _pick(self, request):
        self.kw = request.param

    def make_strategy(self):
        return PackForcing(**self.kw)


def test_compressor_module_survives_rebind():
    model = tiny_random(seed=0)
    pf = PackForcing(compressor="hr", allow_random=True)
    rollout(model, pf, ["a"], 4)
    module = pf.compressor_module
    rollout(model, pf, ["a"], 4)
    assert pf.compressor_module is module and any(p.requires_grad for p in module.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["shift", "repack"])
def test_world_24x_rollout_is_flat_and_selection_is_cheap(positions):
    """480 latent frames on the world architecture (random init: same sizes and speed)."""
    from toolkit.worlds.sprites.model import WorldConfig, build_world

    model = build_world(WorldConfig()).eval()
    pf = PackForcing(positions=positions)
    out = rollout(model, pf, [model.default_prompt(0)], 24 * model.spec.train_frames,
                  decode=False)
    blocks = out.trace.blocks
    totals = {}
    for b in blocks:
        for name, sec in b.seconds.items():
            totals[name] = totals.get(name, 0.0) + sec
    wall = sum(totals.values())
    print(f"\n{positions}: {len(blocks)} blocks, {1e3 * wall / len(blocks):.1f} ms/block; " +
          ", ".join(f"{k} {v:.2f} s ({100 * v / wall:.1f}%)" for k, v in totals.items()))
    full_at = 2 + pf.capacity  # after block i: sink 0-1, archive 2..i-1, recent i
    assert blocks[full_at - 1].total_bytes < blocks[full_at].total_bytes
    assert len({b.total_bytes for b in blocks[full_at:]}) == 1
    assert (totals["selection"] + totals["positions"]) / wall <= 0.05
    assert max(b.context_tokens for b in blocks) == 2 * 64 + 16 * 2 + 64


@pytest.mark.parametrize("compressor", ["lr", "dual", "hr", "pool", "pool_kv"])
def test_selfforcing_geometry_preset_runs_every_compressor_on_3_frame_blocks(compressor):
    """packforcing-selfforcing on a tiny random Wan with Wan's causal VAE, blocks of 3."""
    from toolkit.models.zoo import tiny_wan
    from toolkit.runs.config import build_strategy, compose_config

    model = tiny_wan(block_frames=3)
    extra = ["strategy.allow_random=true"] if compressor in ("hr", "dual") else []
    node = compose_config(["strategy=packforcing-selfforcing",
                           f"strategy.compressor={compressor}", *extra]).strategy
    pf = build_strategy(node)
    out = rollout(model, pf, ["a"], 24, seed=0)  # block 7 sees sink 0-2, archive 3-5, recent 6
    last = out.trace.blocks[-1]
    m = pf.compressor_module.tokens()
    assert m == 1 * 1 * 1  # one cell of 3 frames x 8x8 latents (here: the whole 4x4 grid)
    assert last.tokens["sink"] == 3 * model.spec.tokens_per_block
    assert last.info["archive"] == [3, 4, 5] and last.info["selected"][0] == [3, 4, 5]
    assert last.tokens["mid"] == 4 * m  # after block 7's commit: block 6 aged into mid
    assert torch.isfinite(out.latents).all() and out.frames.shape[1] == 1 + 4 * 23


def test_learned_compressors_without_fitting_weights_fail_unless_allowed(tiny, tmp_path):
    import json

    from strategies.compressors import build_compressor

    with pytest.raises(ValueError, match=r"compressor='hr' has no trained weights.*"
                                         r"strategy\.allow_random=true"):
        rollout(tiny, PackForcing(compressor="hr"), ["a"], 4)
    out = rollout(tiny, PackForcing(compressor="hr", allow_random=True), ["a"], 4)
    assert out.trace.meta["provenance"]["compressor_sha256"] is None
    weights = build_compressor("hr", tiny.spec).save(tmp_path / "hr.safetensors")
    pf = PackForcing(compressor="hr", compressor_weights=str(weights))
    prov = rollout(tiny, pf, ["a"], 4).trace.meta["provenance"]  # no card: nothing to contradict
    assert len(prov["compressor_sha256"]) == 64 and prov["compressor_trained_for"] is None
    weights.with_suffix(".json").write_text(json.dumps({"world": {"sha256": "a" * 64}}))
    tiny.card = {"sha256": "b" * 64}  # this model's weights, as a loaded world model knows them
    with pytest.raises(ValueError, match="were trained with model weights aaaaaaaaaaaa"):
        rollout(tiny, PackForcing(compressor="hr", compressor_weights=str(weights)), ["a"], 4)
    tiny.card = {"sha256": "a" * 64}
    prov = rollout(tiny, PackForcing(compressor="hr", compressor_weights=str(weights)), ["a"],
                   4).trace.meta["provenance"]
    assert prov["compressor_trained_for"] == prov["model_sha256"] == "a" * 64


def _archive_of_one_content(spec, score_positions, blocks=10):
    """A PackForcing archive whose mid blocks all hold the SAME un-rotated keys, each stored
    at its own generation position: they differ only in age."""
    pf = PackForcing(sink_frames=0, recent_frames=0, capacity=blocks, top_k=1,
                     compressor="identity", positions="absolute",
                     score_positions=score_positions)
    pf.bind(_stub(spec))
    raw = _raw(spec, 0, seed=11)
    for index in range(blocks):
        pf.begin_block(index)
        _commit(pf, spec, index, raw)
    pf.begin_block(blocks)
    return pf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_common_score_positions_are_flat_over_ages(tiny, seed):
    """Top-k reads content, not RoPE phase: candidates that differ only in age score alike
    under ``score_positions=common``; under ``stored`` their scores swing with age."""
    spec = tiny.spec
    q = torch.randn(1, spec.num_heads, spec.tokens_per_block, spec.head_dim,
                    generator=torch.Generator().manual_seed(seed))
    q = _rotated(spec, q[None].expand(spec.num_layers, -1, -1, -1, -1), 10.0 * spec.block_frames)[0]
    common = _archive_of_one_content(spec, "common").scores(0, q)
    stored = _archive_of_one_content(spec, "stored").scores(0, q)
    spread = lambda s: (s.max() - s.min()).item() / s.abs().max().item()  # noqa: E731
    print(f"score spread over ages: common {spread(common):.2e}, stored {spread(stored):.2e}")
    assert spread(common) < 1e-4
    assert spread(stored) > 1e-2


def test_score_positions_is_checked():
    with pytest.raises(ValueError, match=r"score_positions='nearest'.*common"):
        PackForcing(score_positions="nearest")
