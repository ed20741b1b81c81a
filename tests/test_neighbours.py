"""Deep sink + pruning and the rolling anchor, pinned on the tiny seeded Wan."""

import torch

from strategies import DeepSink, Full, RollingAnchor
from toolkit.core.cache import BlockKV
from toolkit.core.rollout import rollout


def test_deepsink_with_room_for_everything_equals_full(tiny):
    full = rollout(tiny, Full(), ["x"], 16, seed=1).latents
    deep = rollout(tiny, DeepSink(sink_frames=2, recent_frames=2, mid_tokens=10**6), ["x"],
                   16, seed=1).latents
    assert torch.allclose(deep, full, atol=1e-6)


def test_deepsink_middle_stays_within_budget(tiny):
    budget, per_block = 20, tiny.spec.tokens_per_block
    out = rollout(tiny, DeepSink(sink_frames=2, recent_frames=2, mid_tokens=budget), ["x"],
                  48, seed=0)
    middle = [b.tokens["mid"] for b in out.trace.blocks]  # DeepSink's middle: the "mid" partition
    assert max(middle) <= budget + per_block
    assert middle[-1] >= budget  # the pool fills up, then is pruned back
    assert out.trace.blocks[-1].tokens["sink"] == per_block


def test_deepsink_keeps_the_most_attended_tokens(tiny):
    strategy = DeepSink(sink_frames=0, recent_frames=0, mid_tokens=3)
    strategy.bind(tiny)
    s = tiny.spec
    keys = torch.zeros(s.num_layers, 1, s.num_heads, 8, s.head_dim)
    keys[..., [1, 4, 6], 0] = 5.0  # these three tokens align with the queries
    block = BlockKV(0, keys, torch.zeros_like(keys), 0.0, partition="mid")
    strategy.blocks = [block]
    strategy.begin_block(1)
    q = torch.zeros(1, s.num_heads, 4, s.head_dim)
    q[..., 0] = 1.0
    for layer in range(s.num_layers):
        strategy.context(layer, q, step=0)
    strategy._prune([block], strategy._scores)
    assert block.tokens == 3 and torch.all(block.keys[..., 0] == 5.0)


def test_rolling_anchor_sits_right_before_the_window(tiny):
    bf = tiny.spec.block_frames
    out = rollout(tiny, RollingAnchor(sink_frames=bf, recent_frames=2 * bf), ["x"], 40)
    for record in out.trace.blocks[3:]:
        t0 = dict(zip(record.info["context_blocks"], record.info["context_t0"], strict=True))
        window = [t for i, t in t0.items() if i != 0]
        assert t0[0] == min(window) - bf
        assert record.t0 - t0[0] == 3 * bf  # constant distance to the current block
