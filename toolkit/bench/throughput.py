"""Throughput: ms per block of a rollout against a plain torch loop of its linear layers.

A block costs ``steps`` denoising passes plus one cache-fill pass. Its linear layers alone
(per transformer layer: self-attention q / k / v / out, cross-attention q / out (the prompt's
K/V are computed once per rollout), the two feed-forward matrices; per pass: the timestep
MLP; per denoising pass: the output projection), run as a bare ``F.linear`` loop on inputs of
the same shapes and dtype with the model's own weights, are the floor any harness around this
model can reach without fusing or compiling them away. Both are timed in the same process,
one after the other, so the ratio is measured side by side::

    from toolkit.bench.throughput import cmd_throughput
    cmd_throughput(["model=world", "threads=1"])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from toolkit.core.cache import CacheStrategy
from toolkit.core.rollout import rollout


@dataclass
class Throughput:
    """ms per block of a rollout and of its linear-layer loop (same process, same threads)."""

    rollout_ms: float
    linear_ms: float
    blocks: int
    threads: int

    @property
    def ratio(self) -> float:
        """Rollout time over linear-loop time (1.0 = no overhead beyond the linear layers)."""
        return self.rollout_ms / self.linear_ms


def linear_plan(model: Any, batch: int = 1) -> list[tuple[Tensor, Tensor | None, Tensor, bool]]:
    """(weight, bias, input, denoise-only) for every linear layer one pass of ``model`` runs."""
    tf, spec = model.transformer, model.spec
    n = spec.tokens_per_block
    plan = []

    def add(layer: torch.nn.Linear, rows: int, denoise_only: bool = False) -> None:
        w = layer.weight.detach()
        x = torch.randn(batch, rows, w.shape[1], generator=torch.Generator().manual_seed(0))
        plan.append((w, None if layer.bias is None else layer.bias.detach(),
                     x.to(w.device, w.dtype), denoise_only))

    ce = tf.condition_embedder
    for lin in (ce.time_embedder.linear_1, ce.time_embedder.linear_2, ce.time_proj):
        add(lin, 1)
    for block in tf.blocks:
        a1, a2 = block.attn1, block.attn2
        for lin in (a1.to_q, a1.to_k, a1.to_v, a1.to_out[0], a2.to_q, a2.to_out[0],
                    block.ffn.net[0].proj, block.ffn.net[2]):
            add(lin, n)
    add(tf.proj_out, n, denoise_only=True)
    return plan


@torch.no_grad()
def linear_loop_ms(model: Any, blocks: int, batch: int = 1) -> float:
    """ms per block of the linear layers alone: ``steps`` denoising passes + one fill pass."""
    plan = linear_plan(model, batch)
    steps = model.sampler.steps

    def one_block() -> None:
        for p in range(steps + 1):
            for w, b, x, denoise_only in plan:
                if not (denoise_only and p == steps):
                    F.linear(x, w, b)

    one_block()  # warm-up
    start = time.perf_counter()
    for _ in range(blocks):
        one_block()
    return 1e3 * (time.perf_counter() - start) / blocks


def rollout_ms(model: Any, strategy: CacheStrategy, prompt: Any, blocks: int) -> float:
    """ms per block of a rollout of ``blocks`` blocks (after a two-block warm-up)."""
    bf = model.spec.block_frames
    rollout(model, strategy, [prompt], 2 * bf, decode=False)
    start = time.perf_counter()
    rollout(model, strategy, [prompt], blocks * bf, decode=False)
    return 1e3 * (time.perf_counter() - start) / blocks


def measure(model: Any, strategy: CacheStrategy, prompt: Any, blocks: int = 20,
            repeats: int = 3) -> Throughput:
    """Both timings side by side on the current torch thread count: ``repeats`` rounds of
    (rollout, linear loop), the fastest of each (other load on the machine only slows)."""
    roll, lin = [], []
    for _ in range(repeats):
        roll.append(rollout_ms(model, strategy, prompt, blocks))
        lin.append(linear_loop_ms(model, blocks))
    return Throughput(min(roll), min(lin), blocks, torch.get_num_threads())


def cmd_throughput(overrides: Sequence[str]) -> int:
    """``rollbench throughput [model=world] [strategy=window] [blocks=20] [threads=1]``.

    Prints ms per block of the rollout and of the plain linear loop, and their ratio.
    """
    from toolkit.errors import ConfigError
    from toolkit.runs.config import build, compose_config
    from toolkit.runs.jobs import console, default_prompts

    overrides = list(overrides)
    blocks = [o for o in overrides if o.startswith("blocks=")]
    overrides = [o for o in overrides if not o.startswith("blocks=")]
    n = int(blocks[-1].split("=", 1)[1]) if blocks else 20
    if n < 1:
        raise ConfigError(f"blocks={n}: must be >= 1")
    has_strategy = any(o.startswith("strategy=") for o in overrides)
    cfg = compose_config([*overrides, *([] if has_strategy else ["strategy=window"]),
                          "progress=false"])
    model, strategy = build(cfg)
    result = measure(model, strategy, default_prompts(model, cfg)[0], n)
    console.print(f"{type(model).__name__} {cfg.strategy.get('label') or cfg.strategy._target_}"
                  f", {n} blocks, {result.threads} thread(s): rollout "
                  f"{result.rollout_ms:.1f} ms/block; its linear layers as a plain torch loop "
                  f"{result.linear_ms:.1f} ms/block; ratio {result.ratio:.2f}x")
    return 0
