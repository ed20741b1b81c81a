"""Speed of the KV storage codecs: ms per block of a rollout under each codec against ``none``,
and the codec's own work per block (store one block, read every layer of it once).

All codecs of a strategy are timed in the same process, in turn, ``repeats`` rounds (the
fastest round of each kept: other load on the machine only slows), so the ratios are measured
side by side::

    rollbench bench model=world strategies=[sink,packforcing] codecs=[none,int8,int4,int2,residual2]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.table import Table

from toolkit.core.codecs import KVCodec
from toolkit.core.rollout import rollout


@dataclass
class CodecSpeed:
    """One strategy under one codec: rollout ms per block (and its ratio to ``none``), the
    codec's own ms per block (store + one read of every layer), peak held KV bytes."""

    strategy: str
    codec: str
    rollout_ms: float
    ratio: float
    codec_ms: float
    peak_bytes: int


def codec_ms(spec: Any, codec: KVCodec | None, repeats: int = 5, batch: int = 1) -> float:
    """ms to store one block's K and V (all layers) and read each layer back once."""
    if codec is None:
        return 0.0
    shape = (spec.num_layers, batch, spec.num_heads, spec.tokens_per_block, spec.head_dim)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(spec.torch_dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for t in (x, x):  # keys and values
            coded = codec.encode(t)
            for layer in range(spec.num_layers):
                codec.decode(coded, layer)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def measure(model: Any, make: Any, prompt: Any, codecs: Sequence[str], blocks: int,
            repeats: int = 2) -> list[CodecSpeed]:
    """Each codec's rollout ms per block (``make()`` builds the strategy), fastest of
    ``repeats`` rounds, after a warm-up; ratios against ``none`` (timed alongside)."""
    bf = model.spec.block_frames
    names = ["none", *[c for c in codecs if c != "none"]]
    built = {n: KVCodec.of(n) for n in names}
    rollout(model, make(), [prompt], 2 * bf, decode=False)  # warm-up
    best: dict[str, float] = {}
    peak: dict[str, int] = {}
    for _ in range(repeats):
        for name in names:
            start = time.perf_counter()
            out = rollout(model, make(), [prompt], blocks * bf, decode=False,
                          codec=built[name])
            ms = 1e3 * (time.perf_counter() - start) / blocks
            best[name] = min(best.get(name, float("inf")), ms)
            peak[name] = max(b.total_bytes for b in out.trace.blocks)
    strategy = out.trace.strategy
    return [CodecSpeed(strategy, built[n].label() if built[n] else "none", best[n],
                       best[n] / best["none"], codec_ms(model.spec, built[n]), peak[n])
            for n in names if n in codecs]


def speed_table(rows: Sequence[CodecSpeed], blocks: int) -> Table:
    table = Table(title=f"KV codecs: ms per block of a {blocks}-block rollout against none "
                        f"(same process, {torch.get_num_threads()} thread(s), fastest round)")
    for col in ("strategy", "codec", "ms/block", "x none", "codec ms/block (store + read)",
                "peak KV MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.strategy, r.codec, f"{r.rollout_ms:.1f}", f"{r.ratio:.3f}",
                      f"{r.codec_ms:.2f}", f"{r.peak_bytes / 2**20:.3f}")
    return table


def cmd_codec_speed(overrides: Sequence[str], names: Sequence[str], codecs: Sequence[str],
                    blocks: int) -> Table:
    """The table of ``rollbench bench ... codecs=[...]``: every strategy under every codec."""
    from toolkit.runs.config import build, build_strategy, compose_config
    from toolkit.runs.jobs import default_prompts

    rows, model = [], None
    for name in names:
        cfg = compose_config([*overrides, f"strategy={name}", "progress=false"])
        if model is None:
            model, _ = build(cfg)
        for codec in filter(None, map(KVCodec.of, codecs)):  # bad ones fail before timing
            codec.check(model.spec.head_dim)
        rows += measure(model, lambda cfg=cfg: build_strategy(cfg.strategy),
                        default_prompts(model, cfg)[0], codecs, blocks)
    return speed_table(rows, blocks)
