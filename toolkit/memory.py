"""KV memory of any strategy at a real model's scale, from its own bookkeeping on meta tensors.

``account`` binds the strategy to a spec-only model (``toolkit.specmodel``) and drives it
exactly as a rollout does (``begin_block``; ``context`` for every layer at every denoising step
and in the cache-fill pass; ``commit`` of the block's per-layer K/V), with meta tensors of the
true sizes: no weights, no allocation, no arithmetic. Tokens and bytes come from the
strategy's ``footprint``; context sizes from what ``context`` returns.

    rollbench memory model=wan-t2v-1.3b strategy=packforcing video.seconds=120
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from toolkit.cache import BlockKV, CacheStrategy, FinishedBlock
from toolkit.config import ConfigError, build_strategy, compose_config
from toolkit.spec import ModelSpec
from toolkit.specmodel import SpecModel

GB = 1e9  # reports use decimal gigabytes, as the paper does


@dataclass
class BlockMemory:
    """One block of an accounted rollout.

    Attributes:
        index: block number.
        context_tokens: cached tokens attended per layer (the largest over layers and steps).
        tokens: tokens per layer held per partition after the block's commit.
        bytes: bytes (all layers, K and V) held per partition after the block's commit.
    """

    index: int
    context_tokens: int
    tokens: dict[str, int]
    bytes: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


@dataclass
class MemoryReport:
    """Per-block memory of a strategy on a model's true sizes."""

    strategy: str
    model: str
    spec: ModelSpec
    latent_frames: int
    blocks: list[BlockMemory] = field(default_factory=list)

    def attended(self, block: BlockMemory) -> int:
        """Tokens per layer a block attends: cached context plus the block itself."""
        return block.context_tokens + self.spec.tokens_per_block

    @property
    def peak(self) -> BlockMemory:
        """The block holding the most bytes (the first such)."""
        return max(self.blocks, key=lambda b: b.total_bytes)

    @property
    def peak_attended(self) -> int:
        return max(self.attended(b) for b in self.blocks)

    def gb(self, tokens: int) -> float:
        """GB of K/V over all layers for ``tokens`` per layer."""
        return tokens * self.spec.kv_bytes_per_token / GB


def account(model: Any, strategy: CacheStrategy, latent_frames: int, batch: int = 1
            ) -> MemoryReport:
    """Drive ``strategy`` over ``latent_frames`` on meta tensors of ``model``'s sizes.

    Args:
        model: a ``SpecModel`` or any model (only its spec and sampler are used).
        strategy: the cache strategy (its hyperparameters as configured).
        latent_frames: video length; a positive multiple of the block size.
        batch: videos per batch.
    """
    model = SpecModel.of(model)
    spec = model.spec
    bf = spec.block_frames
    if latent_frames < bf or latent_frames % bf:
        raise ConfigError(f"video.latent_frames={latent_frames}: must be a positive multiple "
                          f"of the block size {bf}")
    meta = {"device": "meta", "dtype": spec.torch_dtype}
    strategy.bind(model)
    report = MemoryReport(type(strategy).__name__, model.name, spec, latent_frames)
    q = torch.empty(batch, spec.num_heads, spec.tokens_per_block, spec.head_dim, **meta)
    latents = torch.empty(batch, spec.latent_channels, bf, spec.latent_height,
                          spec.latent_width, **meta)
    try:
        for index in range(latent_frames // bf):
            _block(strategy, report, index, q, latents, model.sampler.steps)
    except RuntimeError as err:
        if "meta" not in str(err):
            raise
        raise ConfigError(f"strategy {report.strategy} reads tensor values ({err}); meta tensors "
                          "have none. Accounting needs its sizes not to depend on values: give "
                          "it a path for meta tensors (e.g. PackForcing selects by recency "
                          "there, which has the same sizes)") from err
    return report


def _block(strategy: CacheStrategy, report: MemoryReport, index: int, q: torch.Tensor,
           latents: torch.Tensor, steps: int) -> None:
    """One block as the rollout drives it, on meta tensors; appends its ``BlockMemory``."""
    layers = report.spec.num_layers
    t0 = float(strategy.begin_block(index))
    context = 0
    for step in range(steps + 1):  # denoising steps, then the cache fill
        for layer in range(layers):
            context = max(context, strategy.context(layer, q, step)[0].shape[2])
    kv = torch.empty(layers, *q.shape, dtype=q.dtype, device="meta")  # (L, B, H, N, D)
    strategy.commit(FinishedBlock(index, latents, BlockKV(index, kv, torch.empty_like(kv), t0)))
    held = strategy.footprint()
    report.blocks.append(BlockMemory(index, context, {k: u.tokens for k, u in held.items()},
                                     {k: u.bytes for k, u in held.items()}))


def memory_table(report: MemoryReport) -> Table:
    """Tokens and GB per partition at the end and at the peak of held bytes."""
    s, last, peak = report.spec, report.blocks[-1], report.peak
    seconds = report.latent_frames / s.latent_fps
    table = Table(title=f"{report.strategy} on {report.model}: {report.latent_frames} latent "
                        f"frames ({seconds:g} s), {s.num_layers} layers, "
                        f"{s.tokens_per_frame:,} tokens/frame, {s.dtype}; peak held at block "
                        f"{peak.index}")
    for col in ("partition", "tokens/layer end", "GB end", "tokens/layer peak", "GB peak"):
        table.add_column(col, justify="right")
    for part in last.tokens | peak.tokens:
        table.add_row(part, f"{last.tokens.get(part, 0):,}",
                      f"{last.bytes.get(part, 0) / GB:.2f}", f"{peak.tokens.get(part, 0):,}",
                      f"{peak.bytes.get(part, 0) / GB:.2f}")
    table.add_row("total", f"{sum(last.tokens.values()):,}", f"{last.total_bytes / GB:.2f}",
                  f"{sum(peak.tokens.values()):,}", f"{peak.total_bytes / GB:.2f}")
    return table


def summary_lines(report: MemoryReport) -> list[str]:
    """Context sizes (cached + current block) and the full-history reference."""
    last = report.blocks[-1]
    full = report.latent_frames * report.spec.tokens_per_frame
    return [
        f"attended per layer (cached + current block): peak {report.peak_attended:,} tokens "
        f"= {report.gb(report.peak_attended):.2f} GB KV; final {report.attended(last):,} "
        f"tokens = {report.gb(report.attended(last)):.2f} GB",
        f"held KV: peak {report.peak.total_bytes / GB:.2f} GB, final "
        f"{last.total_bytes / GB:.2f} GB (1 GB = 10^9 bytes)",
        f"full history at this length: {full:,} tokens/layer = {report.gb(full):.2f} GB",
    ]


def cmd_memory(overrides: list[str]) -> int:
    """``rollbench memory [overrides]``: per-partition KV memory at the model's true sizes."""
    cfg = compose_config(overrides)
    strategy = build_strategy(cfg.strategy)
    model = SpecModel.of(instantiate(cfg.model))
    seconds = cfg.video.get("seconds")
    frames = model.spec.frames_for(float(seconds)) if seconds is not None \
        else int(cfg.video.latent_frames)
    report = account(model, strategy, frames)
    console = Console()
    console.print(memory_table(report))
    for line in summary_lines(report):
        console.print(line)
    return 0
