"""Packed top-k training of PackForcing's compressor (``toolkit.worlds.memory.pf_topk``): the
pass attends to the picked candidates at re-packed slots exactly as keys made there, picks are
the top-k of the paper's affinity per sample and layer, the selection loss is the
cross-entropy it says, and a tiny run exports weights named after its initial model."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from strategies.packforcing_layout import PackPlan
from strategies.packforcing_select import affinity, query_sum, scored_heads
from toolkit.core.rope import shift_time
from toolkit.worlds.memory.pf_topk import (
    TopkPlan,
    TopkSetup,
    _pass,
    candidate_kv,
    make_topk_batch,
    sample_contexts,
    selection_loss,
)
from toolkit.worlds.memory.train import encode_shots
from toolkit.worlds.sprites.model import load_world
from toolkit.worlds.sprites.pf_train import (
    PFTrainConfig,
    build_modules,
    train_packforcing,
    validate,
)

INIT = "world-memory-v2.safetensors"


@pytest.fixture(scope="module")
def packed():
    model, comp = build_modules(PFTrainConfig(init=INIT, compressor="dual", batch=2))
    model.eval(), comp.eval()
    setup = TopkSetup(candidates=6, top_k=2)
    batch = make_topk_batch(model, sample_contexts(2, 6, model.spec.block_frames, 3, "val"),
                            encode_shots)
    return model, comp, setup, batch


def test_contexts_hold_the_needed_block_among_the_candidates(packed):
    model, _, setup, batch = packed
    assert batch.x0.shape[2] == (setup.candidates + 3) * model.spec.block_frames
    assert batch.needed.shape == (2, setup.candidates) and batch.needed.any(1).all()
    for c in batch.contexts:  # sink = block 0, recent = the block before the return
        assert c.slots[0] == 0 and c.slots[-2] == c.slots[-1] - 1


def test_pass_equals_keys_made_at_their_repacked_slots(packed):
    """Candidates' K/V are made once at the common slot and moved; the pass must equal one
    whose picked candidates were compressed and run through the model at slots 1..k."""
    model, comp, setup, batch = packed
    bf, per = model.spec.block_frames, comp.tokens(model.spec)
    picks = torch.tensor([[1, 4], [0, 5]])  # per sample, in index order
    xt = torch.randn(batch.x0[:, :, :bf].shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.6, 0.9])
    with torch.no_grad(), model.attach():
        keys, values = candidate_kv(model, comp, setup, batch)
        plan = TopkPlan(model, setup, keys, values, chosen=[picks] * model.spec.num_layers)
        got = _pass(model, setup, batch, xt, sigma, plan)
        direct_k, direct_v = [], []
        for j in range(setup.top_k):
            tokens = torch.cat([comp.compress(batch.x0[i:i + 1, :, (1 + c) * bf:(2 + c) * bf],
                                              model) for i, c in enumerate(picks[:, j].tolist())])
            pos = comp.positions(setup.spatial).clone()
            pos[:, 0] += (1 + j) * bf
            cond = torch.stack([batch.cond[i, 1 + c] for i, c in enumerate(picks[:, j].tolist())])
            k, v = model.token_kv(tokens, pos, cond)
            direct_k.append(k)
            direct_v.append(v)
        ref_plan = PackPlan(plan.mask, torch.cat(direct_k, 3), torch.cat(direct_v, 3))
        ref = _pass(model, setup, batch, xt, sigma, ref_plan)
    assert per * setup.top_k == plan.mask.shape[1] - 3 * model.spec.tokens_per_block
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
    with torch.no_grad(), model.attach():  # and the picks matter
        other = _pass(model, setup, batch, xt, sigma, TopkPlan(
            model, setup, keys, values, chosen=[picks.flip(0)] * model.spec.num_layers))
    assert (other - got).abs().max() > 1e-3


def test_picks_are_the_top_k_of_the_papers_affinity_per_sample():
    """Synthetic q and keys: sample 0's queries align with candidate 2, sample 1's with 4; the
    picks are each sample's top-2 of ``affinity`` (current + recent queries, scored heads), and
    the attended keys are the picked ones moved to slots 1, 2."""
    model = load_world(INIT)
    spec, tpb = model.spec, model.spec.tokens_per_block
    setup = TopkSetup(candidates=5, top_k=2, score_queries=7)
    g = torch.Generator().manual_seed(1)
    h, d, per = spec.num_heads, spec.head_dim, 3
    keys = torch.randn(1, 2, 5, h, per, d, generator=g)
    values = torch.randn(1, 2, 5, h, per, d, generator=g)
    q = torch.randn(2, h, 3 * tpb, d, generator=g)
    heads = scored_heads(h, setup.score_heads)
    for i, aligned in ((0, 2), (1, 4)):  # the scored queries' sum, as every key of one candidate
        qsum = (query_sum(q[i:i + 1, :, 2 * tpb:], heads, 7)
                + query_sum(q[i:i + 1, :, tpb:2 * tpb], heads, 7))[0]
        keys[0, i, aligned, heads] += 5 * qsum[:, None] / qsum.norm(dim=-1)[:, None, None]
    kv = torch.randn(2, h, 3 * tpb, d, generator=g)
    plan = TopkPlan(model, setup, keys, values)
    out = plan.attend(0, q, kv, kv)
    for i, aligned in ((0, 2), (1, 4)):
        qsum = (query_sum(q[i:i + 1, :, 2 * tpb:], heads, 7)
                + query_sum(q[i:i + 1, :, tpb:2 * tpb], heads, 7))
        scores = affinity(keys[0, i][:, heads].sum(-2)[:, None], qsum, d)
        want = sorted(torch.topk(scores, 2).indices.tolist())
        assert plan.picked[0][i].tolist() == want and aligned in want
        moved = torch.cat([shift_time(keys[0, i, c], model.rope, (1 + j - 2) * spec.block_frames)
                           for j, c in enumerate(want)], 1)
        ref = F.scaled_dot_product_attention(
            q[i:i + 1], torch.cat([kv[i:i + 1], moved[None]], 2),
            torch.cat([kv[i:i + 1], values[0, i, want].transpose(0, 1).flatten(1, 2)[None]], 2),
            attn_mask=plan.mask)
        assert torch.allclose(out[i:i + 1], ref, atol=1e-5)


def test_selection_loss_is_the_cross_entropy_toward_the_needed():
    scores = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])  # (L=1, B=2, M=3)
    needed = torch.tensor([[True, False, False], [False, True, True]])
    p0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    want = -(math.log(p0) + math.log(2 / 3)) / 2
    assert selection_loss(scores, needed).item() == pytest.approx(want, rel=1e-6)
    assert selection_loss(scores * 3, needed) < selection_loss(scores, needed)  # sharper, right


def test_topk_run_exports_weights_named_after_its_init(tmp_path):
    cfg = PFTrainConfig(init=INIT, candidates=6, top_k=2, select_weight=1.0, steps=2, batch=2,
                        log_every=1, eval_every=0, out=str(tmp_path / "a"))
    path = train_packforcing(cfg, log=lambda _: None)
    assert path.name == "world-memory-v2-pf-dual-select.safetensors"
    assert (path.parent / "compressor-memory-v2-dual-select.safetensors").is_file()
    card = load_world(path=path).card
    assert {"topk_hit", "chance_hit", "return_ratio"} <= set(card["context_use"])
    assert 0.0 <= card["context_use"]["topk_hit"] <= 1.0
    assert card["train"]["candidates"] == 6 and "select" in card["history"][0]


def test_topk_settings_are_validated():
    model, _ = build_modules(PFTrainConfig(init=INIT, compressor="lr", batch=2))
    with pytest.raises(ValueError, match="top_k=6 with candidates=6"):
        validate(PFTrainConfig(candidates=6, top_k=6), model.spec)
    sprites, _ = build_modules(PFTrainConfig(compressor="lr", batch=2))
    with pytest.raises(ValueError, match="candidates=6: packed top-k training needs the memory"):
        validate(replace(PFTrainConfig(), candidates=6), sprites.spec, memory=False)
