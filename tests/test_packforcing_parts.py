"""PackForcing's parts, each alone: the selectors, the placers and the compression."""

import math

import pytest
import torch

from strategies.packforcing_compress import Compression
from strategies.packforcing_place import PLACERS, Held, Placer, Repack, Shift
from strategies.packforcing_select import (
    SELECTORS,
    All,
    Recency,
    TopK,
    Truth,
    affinity,
    query_sum,
    scored_heads,
)
from toolkit.core.cache import BlockKV, FinishedBlock
from toolkit.core.rope import Rope, apply_rope, grid_positions, shift_time
from toolkit.core.timing import Timer
from toolkit.models.zoo import tiny_random


@pytest.fixture(scope="module")
def spec():
    return tiny_random(seed=0).spec


def block(spec, index, seed=0, raw=None):
    """A cached block at its generation position, keys rotated there."""
    shape = (spec.num_layers, 1, spec.num_heads, spec.tokens_per_block, spec.head_dim)
    if raw is None:
        raw = torch.randn(shape, generator=torch.Generator().manual_seed(seed + index))
    t0 = float(index * spec.block_frames)
    cos, sin = (t[0].transpose(0, 1) for t in Rope(spec).cos_sin(
        grid_positions(spec, t0, spec.block_frames)))
    return BlockKV(index, apply_rope(raw, cos, sin), torch.randn(shape), t0)


def held(spec, sink=(), mid=(), recent=(), index=None):
    blocks = [block(spec, i) for i in (*sink, *mid, *recent)]
    s, m = len(sink), len(mid)
    last = max((*sink, *mid, *recent), default=-1)
    return Held(blocks[:s], blocks[s:s + m], blocks[s + m:],
                last + 1 if index is None else index, spec.block_frames)


def queries(spec, seed=0):
    return torch.randn(1, spec.num_heads, spec.tokens_per_block, spec.head_dim,
                       generator=torch.Generator().manual_seed(100 + seed))


# -- selectors ---------------------------------------------------------------------------------
def test_selectors_are_registered_by_their_option_names():
    assert set(SELECTORS) == {"topk", "recency", "all", "truth"}
    assert set(PLACERS) == {"shift", "repack", "absolute"}


def test_every_selector_attends_every_candidate_up_to_top_k_and_newest_on_meta(spec):
    h = held(spec, sink=[0], mid=[1, 2, 3, 4, 5], recent=[6])
    meta = queries(spec).to("meta")
    for cls in (TopK, Recency, Truth):
        assert cls(5).choose(h, 0, queries(spec)) == [0, 1, 2, 3, 4]
        assert cls(2).choose(h, 0, meta) == [3, 4]  # sizes only: the newest top_k
        assert cls(2).count(5) == 2 and cls(7).count(5) == 5


def test_all_and_recency(spec):
    h = held(spec, mid=[1, 2, 3, 4], recent=[5])
    assert All(1).choose(h, 0, queries(spec)) == [0, 1, 2, 3] and All(1).count(4) == 4
    assert Recency(2).choose(h, 1, queries(spec)) == [2, 3]


def test_truth_picks_the_newest_needed_then_the_newest_others(spec):
    h = held(spec, mid=[1, 2, 3, 4, 5, 6], recent=[7])
    truth = Truth(3)
    truth.bind(spec.num_layers, None, Timer(), lambda index: [2, 4, 9] if index == 8 else [])
    assert truth.choose(h, 0, queries(spec)) == [1, 3, 5]  # blocks 2, 4 and the newest, 6
    truth.bind(spec.num_layers, None, Timer(), lambda index: None)
    with pytest.raises(ValueError, match=r"model\.needed_blocks"):
        truth.choose(h, 0, queries(spec))


def topk(spec, **kw):
    sel = TopK(**{"top_k": 2, **kw})
    sel.bind(spec.num_layers, Rope(spec), Timer())
    return sel


@pytest.mark.parametrize("score_positions", ["stored", "common"])
def test_topk_picks_the_largest_papers_affinity(spec, score_positions):
    h = held(spec, sink=[0], mid=[1, 2, 3, 4, 5], recent=[6])
    q, layer, heads = queries(spec), 1, scored_heads(spec.num_heads, 0.5)
    sel = topk(spec, queries="current", score_positions=score_positions, score_queries=3)
    ref = []
    for b in h.mid:
        k = b.keys[layer]
        if score_positions == "common":  # moved to the block before the recent window
            k = shift_time(k, Rope(spec), h.anchor - spec.block_frames - b.t0)
        rows = torch.linspace(0, spec.tokens_per_block - 1, 3).round().long()
        logits = q[:, heads][:, :, rows] @ k[:, heads].transpose(-1, -2)
        ref.append((logits / math.sqrt(spec.head_dim)).mean((0, 1)).sum())
    scores = sel.scores(h, layer, q)
    assert torch.allclose(scores, torch.stack(ref), rtol=1e-4, atol=1e-5)
    want = sorted(torch.stack(ref).argsort(descending=True)[:2].tolist())
    assert sel.choose(h, layer, q) == want


def test_topk_shared_scope_reuses_the_first_choice_until_the_next_block(spec):
    h = held(spec, mid=[1, 2, 3, 4, 5], recent=[6])
    sel = topk(spec, queries="current", scope="shared")
    first = sel.choose(h, 0, queries(spec, 0))
    assert all(sel.choose(h, layer, queries(spec, 9)) == first
               for layer in range(spec.num_layers))
    sel.begin_block()
    assert sel._shared is None and sel._sums is None


def test_topk_keeps_recent_blocks_queries_from_the_fill_pass(spec):
    sel = topk(spec, queries="recent", score_queries=4)
    q = [queries(spec, layer) for layer in range(spec.num_layers)]
    for layer in range(spec.num_layers):
        sel.observe(layer, q[layer])
    sel.end_block(6)  # block 6 enters the recent window: its summed clean queries are kept
    heads = scored_heads(spec.num_heads, 0.5)
    kept = torch.stack([query_sum(x, heads, 4) for x in q])
    assert torch.equal(sel._queries[6], kept) and sel.nbytes() == kept.nbytes
    h = held(spec, mid=[1, 2, 3, 4, 5], recent=[6])
    ref = affinity(sel.key_sums(h, 1, heads), kept[1], spec.head_dim)
    assert torch.equal(sel.scores(h, 1, queries(spec, 50)), ref)  # the current block's unread
    sel.observe(0, q[0])
    sel.end_block(7)  # a fill pass that missed layers keeps nothing
    assert 7 not in sel._queries
    sel.forget(6)
    assert sel.nbytes() == 0
    assert topk(spec, queries="current").nbytes() is None


# -- placers -----------------------------------------------------------------------------------
def test_held_anchor_is_the_recent_window_or_the_current_block(spec):
    bf = spec.block_frames
    assert held(spec, sink=[0], mid=[3], recent=[5, 6]).anchor == 5 * bf
    assert held(spec, sink=[0], mid=[3], index=9).anchor == 9 * bf


def test_absolute_moves_nothing(spec):
    h = held(spec, sink=[0, 1], mid=[4, 6], recent=[8])
    Placer().place_sink(h, 2)
    assert [b.t0 for b in h.sink] == [0.0, spec.block_frames]
    parts = Placer().mid_parts(h, 0, h.mid, Rope(spec))
    assert all(torch.equal(k, b.keys[0]) for (k, _), b in zip(parts, h.mid, strict=True))


def test_shift_ends_the_sink_where_the_oldest_kept_block_begins(spec):
    bf = spec.block_frames
    h = held(spec, sink=[0, 1], mid=[4, 6], recent=[8])
    Shift().place_sink(h, 1)
    assert [b.t0 for b in h.sink] == [2.0 * bf, 3.0 * bf]
    alone = held(spec, sink=[0], index=5)
    Shift().place_sink(alone, 0)
    assert alone.sink[0].t0 == 4.0 * bf


def test_repack_places_the_chosen_blocks_contiguously_before_the_recent_window(spec):
    bf, rope = spec.block_frames, Rope(spec)
    h = held(spec, sink=[0], mid=[2, 5, 7], recent=[9, 10])
    chosen = [h.mid[0], h.mid[2]]
    Repack().place_sink(h, len(chosen))
    assert h.sink[0].t0 == 9 * bf - 3 * bf
    for layer in range(spec.num_layers):
        parts = Repack().mid_parts(h, layer, chosen, rope)
        for j, ((k, v), b) in enumerate(zip(parts, chosen, strict=True)):
            at = 9 * bf - (2 - j) * bf  # 7 and 8 blocks' frames
            ref = shift_time(b.keys[layer], rope, at - b.t0)
            assert torch.equal(k, ref) and torch.equal(v, b.values[layer])


# -- compression -------------------------------------------------------------------------------
def compression(**kw):
    args = {"compressor": "identity", "compress_time": 2, "compress_space": None,
            "hr_channels": 16, "weights": None, "allow_random": False, "lr_decode": "stream",
            "kv": "transformer", "spatial": "centres", **kw}
    return Compression(**args)


def test_identity_stand_in_is_the_block_itself_and_the_module_is_kept():
    model = tiny_random(seed=0)
    comp = compression()
    comp.bind(model)
    module = comp.module
    comp.bind(model)
    assert comp.module is module and comp.provenance(model) == {}
    kv = block(model.spec, 3)
    latents = torch.zeros(1, model.spec.latent_channels, model.spec.block_frames,
                          model.spec.latent_height, model.spec.latent_width)
    out = comp.stand_in(FinishedBlock(3, latents, kv), model, model.rope)
    assert out.partition == "pending" and out.index == 3 and out.t0 == kv.t0
    assert torch.allclose(out.keys, kv.keys, atol=1e-5) and torch.equal(out.values, kv.values)


def test_pool_stand_in_runs_the_tokens_through_the_model_and_needs_the_prompt():
    model = tiny_random(seed=0)
    spec = model.spec
    comp = compression(compressor="pool", kv="transformer")
    comp.bind(model)
    kv = block(spec, 2)
    latents = torch.randn(1, spec.latent_channels, spec.block_frames, spec.latent_height,
                          spec.latent_width)
    with pytest.raises(ValueError, match="needs the prompt conditioning"):
        comp.stand_in(FinishedBlock(2, latents, kv), model, model.rope)
    cond = model.encode_prompt(["x"])
    out = comp.stand_in(FinishedBlock(2, latents, kv, cond=cond), model, model.rope)
    tokens = comp.module.tokens(spec)
    assert out.keys.shape == (spec.num_layers, 1, spec.num_heads, tokens, spec.head_dim)
    pos = comp.module.positions("centres")
    pos[:, 0] += kv.t0
    keys, _ = model.token_kv(comp.module.compress(latents, model), pos, cond)
    assert torch.equal(out.keys, keys.to(kv.dtype))
    meta = BlockKV(2, kv.keys.to("meta"), kv.values.to("meta"), kv.t0)
    sized = comp.stand_in(FinishedBlock(2, latents, meta), model, model.rope)
    assert sized.is_meta and sized.tokens == tokens


def test_compression_checks_its_options():
    with pytest.raises(ValueError, match="has no parameters"):
        compression(compressor="pool", weights="w.safetensors")
    with pytest.raises(Exception, match="Did you mean 'hr'"):
        compression(compressor="hrr")
