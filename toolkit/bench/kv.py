"""KV memory of any strategy at a real model's scale, from its own bookkeeping on meta tensors.

``account`` binds the strategy to a spec-only model (``toolkit.models.specmodel``) and drives it
exactly as a rollout does, through the rollout's own block driver
(``toolkit.core.rollout.BlockDriver``: ``begin_block``; the strategy's context for every layer at
every denoising step and in the cache-fill pass, copied into the plan's buffer; the block's
K/V recorded; ``commit``; the block's ``BlockRecord``), with meta tensors of the true sizes:
no weights, no allocation, no arithmetic. Tokens and bytes
come from the strategy's ``footprint``; context sizes from what it hands the plan. With
``track=True`` every tensor the plan and the strategy make is counted while it lives
(``toolkit.bench.allocations.LiveBytes``): the peak working memory of the KV path per block, against
the KV a block needs (held when it starts + its own K/V). The transformer's other
activations and a compressor's own computation are not counted (compressors do not run on
meta tensors; their outputs have the declared size).

    rollbench memory model=wan-t2v-1.3b strategy=packforcing video.seconds=120
    rollbench memory model=wan-t2v-1.3b strategy=sink video.seconds=120 kv.codec=int2
    rollbench memory model=wan-t2v-1.3b video.seconds=120 strategies=[sink,packforcing] \
        codecs=[none,int8,int4,int2,residual2]

With a KV codec (``kv.codec``, ``toolkit.core.codecs``) the blocks are stored in its form
(meta tensors of the codes', steps' and shared components' exact sizes), and the held bytes
are set against the same strategy stored as made. ``strategies=`` with ``codecs=`` prints one
row per strategy and codec.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from toolkit.bench.allocations import LiveBytes
from toolkit.core.cache import CacheStrategy
from toolkit.core.codecs import KVCodec, storing
from toolkit.core.rollout import BlockDriver
from toolkit.core.spec import ModelSpec
from toolkit.core.trace import BlockRecord
from toolkit.errors import ConfigError
from toolkit.models.specmodel import SpecModel
from toolkit.registry import strategy_name
from toolkit.runs.config import build_codec, build_strategy, compose_config, video_frames

GB = 1e9  # reports use decimal gigabytes, as the paper does


@dataclass
class MemoryReport:
    """Per-block memory of a strategy on a model's true sizes."""

    strategy: str
    model: str
    spec: ModelSpec
    latent_frames: int
    blocks: list[BlockRecord] = field(default_factory=list)
    codec: str = "none"

    def attended(self, block: BlockRecord) -> int:
        """Tokens per layer a block attends: cached context plus the block itself."""
        return block.context_tokens + self.spec.tokens_per_block

    @property
    def peak(self) -> BlockRecord:
        """The block holding the most bytes (the first such)."""
        return max(self.blocks, key=lambda b: b.total_bytes)

    @property
    def peak_attended(self) -> int:
        return max(self.attended(b) for b in self.blocks)

    def gb(self, tokens: int) -> float:
        """GB of K/V over all layers for ``tokens`` per layer."""
        return tokens * self.spec.kv_bytes_per_token / GB

    @property
    def tracked(self) -> bool:
        return all(b.peak_bytes is not None for b in self.blocks)

    @property
    def peak_live(self) -> int:
        """The most bytes the KV path had alive in any block (tracked runs)."""
        return max(b.peak_bytes or 0 for b in self.blocks)

    @property
    def worst_ratio(self) -> BlockRecord:
        """The block with the highest peak / needed ratio (tracked runs)."""
        return max(self.blocks, key=lambda b: b.ratio or 0.0)


def account(model: Any, strategy: CacheStrategy, latent_frames: int, batch: int = 1,
            track: bool = False, codec: Any = None) -> MemoryReport:
    """Drive ``strategy`` over ``latent_frames`` on meta tensors of ``model``'s sizes.

    Args:
        model: a ``SpecModel`` or any model (only its spec and sampler are used).
        strategy: the cache strategy (its hyperparameters as configured).
        latent_frames: video length; a positive multiple of the block size.
        batch: videos per batch.
        track: count the KV path's live bytes per block (``BlockRecord.peak_bytes``).
        codec: the KV storage codec (``toolkit.core.codecs``; None: stored as made).
    """
    model = SpecModel.of(model)
    spec = model.spec
    try:
        blocks = spec.check_blocks("video.latent_frames", latent_frames, positive=True)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    meta = {"device": "meta", "dtype": spec.torch_dtype}
    codec = KVCodec.of(codec)
    if codec is not None:
        codec.check(spec.head_dim)
    strategy.bind(model)
    report = MemoryReport(strategy_name(strategy), model.name, spec, latent_frames,
                          codec=codec.label() if codec is not None else "none")
    # q stands in for the block's queries, keys and values at every layer (same sizes)
    q = torch.empty(batch, spec.num_heads, spec.tokens_per_block, spec.head_dim, **meta)
    latents = torch.empty(batch, spec.latent_channels, spec.block_frames, spec.latent_height,
                          spec.latent_width, **meta)
    driver = BlockDriver(strategy, spec.num_layers, model.sampler.steps)
    driver.plan.attention = fused_attention
    tracker = LiveBytes() if track else None
    try:
        with tracker if tracker is not None else nullcontext(), storing(codec):
            for index in range(blocks):
                if tracker is not None:
                    tracker.reset_peak()
                driver.begin(index)
                for step in range(model.sampler.steps):
                    driver.step(step)
                    _attend_all(driver, q)
                with driver.filling():
                    _attend_all(driver, q)
                driver.commit(latents)
                record = driver.record()
                record.peak_bytes = None if tracker is None else tracker.peak
                report.blocks.append(record)
    except RuntimeError as err:
        if "meta" not in str(err):
            raise
        raise ConfigError(f"strategy {report.strategy} reads tensor values ({err}); meta tensors "
                          "have none. Accounting needs its sizes not to depend on values: give "
                          "it a path for meta tensors (e.g. PackForcing selects by recency "
                          "there, which has the same sizes)") from err
    return report


def _attend_all(driver: BlockDriver, q: torch.Tensor) -> None:
    """One pass of every layer through the driver's plan (q as queries, keys and values)."""
    for layer in range(driver.plan.num_layers):
        driver.plan.attend(layer, q, q, q)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What a fused attention kernel (flash / memory-efficient) allocates: its output. (On
    meta tensors ``scaled_dot_product_attention`` takes the unfused path, whose N x M score
    matrix no GPU kernel materialises.)"""
    return torch.empty_like(q)


def memory_table(report: MemoryReport) -> Table:
    """Tokens and GB per partition at the end and at the peak of held bytes."""
    s, last, peak = report.spec, report.blocks[-1], report.peak
    seconds = report.latent_frames / s.latent_fps
    stored = "" if report.codec == "none" else f" stored as {report.codec}"
    table = Table(title=f"{report.strategy}{stored} on {report.model}: {report.latent_frames} "
                        f"latent frames ({seconds:g} s), {s.num_layers} layers, "
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
    """Context sizes (cached + current block), the full-history reference, working memory."""
    last = report.blocks[-1]
    full = report.latent_frames * report.spec.tokens_per_frame
    lines = [
        f"attended per layer (cached + current block): peak {report.peak_attended:,} tokens "
        f"= {report.gb(report.peak_attended):.2f} GB KV; final {report.attended(last):,} "
        f"tokens = {report.gb(report.attended(last)):.2f} GB",
        f"held KV: peak {report.peak.total_bytes / GB:.2f} GB, final "
        f"{last.total_bytes / GB:.2f} GB (1 GB = 10^9 bytes)",
        f"full history at this length: {full:,} tokens/layer = {report.gb(full):.2f} GB",
    ]
    if report.tracked:
        lines.append(transient_line(report))
    return lines


def size(nbytes: float) -> str:
    """Bytes in decimal units: GB, MB or kB."""
    for unit, scale in (("GB", GB), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes / 1e3:.1f} kB"


def transient_line(report: MemoryReport) -> str:
    """Peak working memory of the KV path against the KV it works with (tracked runs)."""
    worst = report.worst_ratio
    return (f"working memory of the KV path (the rollout's own code on meta tensors): peak "
            f"{size(report.peak_live)} live; worst block {worst.index}: "
            f"{size(worst.peak_bytes)} = {worst.ratio:.3f}x the KV it works with "
            f"(held at its start {size(worst.start_bytes)} + its own "
            f"{size(worst.own_bytes)}); peak / peak held "
            f"{report.peak_live / max(1, report.peak.total_bytes):.3f}x")


def transient_table(reports: dict[str, MemoryReport]) -> Table:
    """One row per strategy: held KV, peak working bytes and their ratios (tracked runs)."""
    s = next(iter(reports.values())).spec
    table = Table(title=f"working memory of the KV path ({s.num_layers} layers, "
                        f"{s.tokens_per_frame:,} tokens/frame, {s.dtype}; meta tensors)")
    for col in ("strategy", "peak held", "peak live", "worst block: peak / (held at its "
                "start + its own K/V)", "peak live / peak held"):
        table.add_column(col, justify="right")
    for name, r in reports.items():
        table.add_row(name, size(r.peak.total_bytes), size(r.peak_live),
                      f"{r.worst_ratio.ratio:.3f}",
                      f"{r.peak_live / max(1, r.peak.total_bytes):.3f}")
    return table


def working_memory_table(overrides: Sequence[str], names: Sequence[str]) -> Table:
    """``transient_table`` of strategies ``names`` at the sizes and length of a run config
    (``rollbench bench``'s overrides): each accounted on meta tensors, tracked."""
    reports = {}
    model = None
    for name in names:
        cfg = compose_config([*overrides, f"strategy={name}"])
        model = model or SpecModel.of(instantiate(cfg.model))
        reports[name] = account(model, build_strategy(cfg.strategy),
                                video_frames(cfg, model.spec), track=True)
    return transient_table(reports)


def codec_table(overrides: Sequence[str], names: Sequence[str], codecs: Sequence[str]
                ) -> Table:
    """Peak held KV of each strategy stored by each codec, and its share of the same strategy
    stored as made (accounted on meta tensors at the sizes of the run config)."""
    rows, model = [], None
    for name in names:
        base = None
        for codec in ["none", *[c for c in codecs if c != "none"]]:
            cfg = compose_config([*overrides, f"strategy={name}", f"kv.codec={codec}"])
            model = model or SpecModel.of(instantiate(cfg.model))
            report = account(model, build_strategy(cfg.strategy), video_frames(cfg, model.spec),
                             codec=build_codec(cfg))
            held = report.peak.total_bytes
            base = base or held
            if codec in codecs:
                rows.append((name, report.codec, f"{held / GB:.3f}", f"{held / base:.4f}",
                             f"1/{base / held:.2f}"))
    s = model.spec
    table = Table(title=f"KV stored per codec: {model.name}, {s.num_layers} layers, "
                        f"{s.tokens_per_frame:,} tokens/frame, {s.dtype} (meta tensors)")
    for col in ("strategy", "codec", "peak held GB", "share of none", "as a fraction"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def _listed(overrides: list[str], key: str) -> tuple[list[str], list[str] | None]:
    """``key=[a,b]`` (or ``key=a,b``) taken out of the overrides."""
    found = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    rest = [o for o in overrides if not o.startswith(f"{key}=")]
    return rest, found[-1].strip("[]").split(",") if found else None


def cmd_memory(overrides: list[str]) -> int:
    """``rollbench memory [overrides]``: per-partition KV memory at the model's true sizes;
    ``strategies=[...] codecs=[...]``: the table of stored bytes per strategy and codec."""
    overrides, names = _listed(list(overrides), "strategies")
    overrides, codecs = _listed(overrides, "codecs")
    console = Console()
    if codecs is not None:
        cfg = compose_config(overrides)
        names = names or [str(cfg.strategy.get("label") or cfg.strategy._target_)]
        for codec in codecs:  # a typo fails before any accounting
            build_codec(compose_config([*overrides, f"kv.codec={codec}"]))
        console.print(codec_table(overrides, names, codecs))
        return 0
    cfg = compose_config(overrides)
    strategy = build_strategy(cfg.strategy)
    model = SpecModel.of(instantiate(cfg.model))
    codec = build_codec(cfg)
    report = account(model, strategy, video_frames(cfg, model.spec), track=True, codec=codec)
    console.print(memory_table(report))
    for line in summary_lines(report):
        console.print(line)
    if codec is not None:
        plain = account(model, build_strategy(cfg.strategy), video_frames(cfg, model.spec))
        held, made = report.peak.total_bytes, plain.peak.total_bytes
        console.print(f"stored as {report.codec}: peak held {held / GB:.3f} GB = "
                      f"{held / made:.4f}x (1/{made / held:.2f}) of the same strategy stored "
                      f"as made ({made / GB:.3f} GB)")
    return 0
