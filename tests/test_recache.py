"""KV re-cache at prompt switches: exact against a fresh cache fill, and off by default."""

import pytest
import torch

from strategies.deepsink import DeepSink
from strategies.full import Full
from strategies.packforcing import PackForcing
from strategies.sink import Sink
from toolkit.core.rollout import BlockDriver, rollout
from toolkit.core.rope import grid_positions

SCHEDULE = [[[0, "a"], [8, "b"]]]  # tiny: blocks of 2 latent frames; the switch opens block 4


@torch.no_grad()
def fresh_fill(model, latents, indices, prompt):
    """A fresh ``Full`` cache filled with the given blocks' latents under ``prompt``, in order,
    each at its absolute position: the reference of a re-cache (independent of it)."""
    bf = model.spec.block_frames
    cond = model.encode_prompt([prompt])
    ref = Full()
    ref.bind(model)
    driver = BlockDriver(ref, model.spec.num_layers, model.sampler.steps)
    with model.attach() as slot:
        slot.plan = driver.plan
        for i in indices:
            t0 = driver.begin(i)
            with driver.filling():
                model.fill(latents[:, :, i * bf:(i + 1) * bf], grid_positions(model.spec, t0, bf),
                           cond)
            driver.commit(latents[:, :, i * bf:(i + 1) * bf], cond)
    return {b.index: b for b in ref.blocks}


class Snapshot(Sink):
    """A sink that copies what it holds when block ``at`` begins (after any re-cache)."""

    at: int = 4

    def begin_block(self, index):
        if index == self.at:
            self.held = {b.index: (b.keys.clone(), b.values.clone()) for b in self.blocks}
        return super().begin_block(index)


def test_recache_of_full_equals_a_fresh_fill_under_the_new_prompt(tiny):
    """With ``full`` and recache=switch, the whole cache after the rollout (blocks before the
    switch rebuilt, blocks after it made under the new prompt) equals a fresh block-causal
    fill of the same latents under the new prompt, exactly; with recache=none it does not."""
    strat = Full()
    out = rollout(tiny, strat, SCHEDULE, 12, seed=1, decode=False, recache="switch")
    ref = fresh_fill(tiny, out.latents, range(6), "b")
    for b in strat.blocks:
        assert torch.equal(b.keys, ref[b.index].keys) and torch.equal(b.values,
                                                                      ref[b.index].values)
    [done] = out.trace.meta["recache"]
    assert done["frame"] == 8 and done["blocks"] == 4 and done["stale"] == 0
    assert done["bytes"] == sum(strat.blocks[i].nbytes for i in range(4))
    assert done["work_bytes"] >= strat.blocks[0].nbytes
    assert out.trace.blocks[4].seconds["recache"] > 0

    kept = Full()
    plain = rollout(tiny, kept, SCHEDULE, 12, seed=1, decode=False)
    assert not torch.equal(kept.blocks[0].keys, fresh_fill(tiny, plain.latents, [0], "b")[0].keys)
    assert not torch.equal(plain.latents[:, :, 8:], out.latents[:, :, 8:])  # it changed the video


def test_recache_rebuilds_only_the_held_blocks_at_their_positions(tiny):
    """A sink + recent window holds blocks 0 and 3 at the switch: they are rebuilt as a fresh
    cache holding only them (block 3 attending to block 0 alone) under the new prompt."""
    strat = Snapshot(sink_frames=2, recent_frames=2)
    out = rollout(tiny, strat, SCHEDULE, 12, seed=2, decode=False, recache="switch")
    assert sorted(strat.held) == [0, 3]
    ref = fresh_fill(tiny, out.latents, [0, 3], "b")
    for i, (k, v) in strat.held.items():
        assert torch.equal(k, ref[i].keys) and torch.equal(v, ref[i].values)
    assert out.trace.meta["recache"][0]["blocks"] == 2


def test_recache_none_is_the_harness_of_before(tiny):
    """recache=none (the default) changes nothing: same latents, same cache, no re-cache facts;
    recache=switch without a switch does nothing either."""
    a, b = Snapshot(sink_frames=2, recent_frames=2), Snapshot(sink_frames=2, recent_frames=2)
    default = rollout(tiny, a, SCHEDULE, 12, seed=2, decode=False)
    none = rollout(tiny, b, SCHEDULE, 12, seed=2, decode=False, recache="none")
    assert torch.equal(default.latents, none.latents)
    assert "recache" not in default.trace.meta and "recache" not in none.trace.meta
    assert all("recache" not in r.seconds for r in none.trace.blocks)
    assert all(torch.equal(a.held[i][0], b.held[i][0]) for i in a.held)
    ref = fresh_fill(tiny, none.latents, [0], "a")  # block 0 still holds prompt a's K/V
    assert torch.equal(b.held[0][0], ref[0].keys)
    one = rollout(tiny, Full(), ["a"], 8, seed=2, decode=False, recache="switch")
    assert torch.equal(one.latents, rollout(tiny, Full(), ["a"], 8, seed=2, decode=False).latents)
    assert "recache" not in one.trace.meta


def test_recache_reencodes_stand_ins_through_the_strategy(tiny):
    """PackForcing's compressed mid / pending stand-ins are re-encoded by its own compressor;
    DeepSink's pruned mid blocks have no such path and are counted stale, never rebuilt as
    full blocks."""
    pf = PackForcing(sink_frames=2, recent_frames=2, capacity=4, top_k=2, compressor="pool_kv")
    out = rollout(tiny, pf, [[[0, "a"], [10, "b"]]], 14, seed=0, decode=False, recache="switch")
    [done] = out.trace.meta["recache"]
    assert done["reencoded"] >= 2 and done["stale"] == 0 and done["blocks"] == 2
    ds = DeepSink(sink_frames=2, recent_frames=2, mid_tokens=8)
    out = rollout(tiny, ds, [[[0, "a"], [10, "b"]]], 14, seed=0, decode=False, recache="switch")
    [done] = out.trace.meta["recache"]
    assert done["stale"] >= 1 and done["blocks"] >= 2  # sink and recent at least


def test_a_bad_recache_mode_is_named(tiny):
    with pytest.raises(ValueError, match=r"recache='always'.*\['none', 'switch'\]"):
        rollout(tiny, Full(), ["a"], 4, decode=False, recache="always")


def test_recache_in_the_config_keeps_old_run_keys():
    """``recache: none`` is left out of the run key (stored runs keep their keys); ``switch``
    enters it; a bad value is refused when the config is composed."""
    from toolkit.errors import ConfigError
    from toolkit.runs.config import compose_config
    from toolkit.runs.identity import canonical_config, run_key

    none = compose_config(["strategy=sink"])
    assert none.recache == "none" and "recache" not in canonical_config(none)
    switch = compose_config(["strategy=sink", "recache=switch"])
    assert run_key(switch) != run_key(none)
    with pytest.raises(ConfigError, match="recache='sometimes'"):
        compose_config(["recache=sometimes"])
