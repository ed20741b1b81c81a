"""PackForcing's three-partition cache (Mao et al. 2026; /work/shared/PAPER.md).

- ``sink``: the first ``sink_frames`` at full resolution, never evicted;
- ``mid``: every block between sink and recent, COMPRESSED, in an archive of ``capacity``
  blocks (oldest evicted first); ``top_k`` of them are attended, chosen per block;
- ``recent``: the last ``recent_frames`` at full resolution (plus the block being denoised);
- ``pending``: compressed copies of the recent blocks, made at commit while the block is still
  recent ("dual-resolution shifting"), which slide into ``mid`` as the block ages out.

PackForcing composes three parts, each a small object tested alone: a selector
(``strategies.packforcing_select``: which archived blocks a block attends), a placer
(``strategies.packforcing_place``: where sink and selected blocks sit) and the compression
(``strategies.packforcing_compress``: the mid blocks' stand-ins). Choices the paper leaves open,
all options here (defaults first):

- ``positions`` (the placer): the block being denoised and the recent blocks always sit at
  their absolute frames; ``shift`` moves the sink to end where the oldest kept block begins,
  ``repack`` packs the selected mid blocks and the sink before the recent window, ``absolute``
  moves nothing. Moved keys are rotated from their stored rotation when read (one rounding).
- ``selection``: ``topk`` by the paper's affinity, scored once per block at its first context
  request (denoising step 0) and reused for the other steps and the cache-fill pass;
  ``recency`` (newest ``top_k``); ``all``; ``truth``: a selection oracle that picks the
  blocks the world says the current block needs (``model.needed_blocks``; memory world only),
  so a strategy's recall splits into "did it pick the block" and "could the model read it".
  Affinity (``strategies.packforcing_select``): the paper's summed q . k / sqrt(d) of a mid
  block's keys and the scoring queries, mean over batch and ``score_heads``, no softmax.
  ``score_positions``: ``common`` scores every candidate's keys moved (time dims) to the block
  just before the recent window, so selection reads content, not RoPE phase; ``stored`` at
  their generation positions (the behaviour of the committed findings pages). ``queries``:
  ``both`` (the paper: the current block's step-0 queries and the recent blocks' clean ones
  from their cache-fill pass), ``current`` or ``recent``.
- ``scope``: ``per_layer`` (each layer its own selection) or ``shared`` (one for all layers,
  scored by the first layer asking, layer 0: the only one whose queries exist before every
  layer needs the selection).
- ``kv`` (token compressors: ``transformer`` or ``project``) and ``spatial`` (``centres`` or
  ``grid``): how the compression makes a stand-in's K/V and positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from strategies.compressors import KV_MODES, SPATIAL, Compressor
from strategies.compressors.lr import DECODES
from strategies.packforcing_compress import Compression
from strategies.packforcing_place import PLACERS, POSITIONS, Held, Placer
from strategies.packforcing_select import QUERIES, SELECTIONS, SELECTORS, Selector, TopK
from toolkit.core.cache import (
    BlockKV,
    CacheStrategy,
    FinishedBlock,
    Usage,
    require_block_multiples,
    require_non_negative,
    usage,
)
from toolkit.core.spec import ModelSpec
from toolkit.core.timing import Timer
from toolkit.registry import STRATEGIES

SCORE_POSITIONS = ("common", "stored")
SCOPES = ("per_layer", "shared")
__all__ = ["POSITIONS", "SCOPES", "SCORE_POSITIONS", "SELECTIONS", "PackForcing"]


@STRATEGIES.register("packforcing")
@dataclass
class PackForcing(CacheStrategy):
    """Sink + compressed mid archive with dynamic top-k selection + recent window.

    Attributes:
        sink_frames: first latent frames kept at full resolution (paper 8); block multiple.
        recent_frames: last finished frames kept at full resolution (paper 4); block multiple.
        capacity: compressed blocks the mid archive holds (paper: unstated; 0 = no mid).
        top_k: mid blocks attended per block (paper 16); 1 <= top_k <= capacity.
        compressor: registered compressor (``hr``, ``lr``, ``dual``, ``pool``, ``pool_kv``,
            ``identity``) or ``module.Class``; ``lr`` / ``dual`` need a model with a VAE.
        compress_time: latent frames per compressed cell (paper 2); divides the block.
        compress_space: latent rows/columns per compressed cell side (paper 8); None = 8, or
            the largest power of two the latent grid allows if smaller.
        hr_channels: cap on the learned branch's stage widths (paper: 2048).
        compressor_weights: safetensors of a trained ``hr`` / ``dual`` branch.
        allow_random: run a learned compressor (``hr``, ``dual``) without trained weights, or
            with weights trained for other model weights (their card says which); otherwise
            that is an error.
        lr_decode: how ``lr`` / ``dual`` decode a block: ``stream`` (in the video's stream,
            with temporal context) or ``block`` (on its own); see ``LR``.
        selection: ``topk`` | ``recency`` | ``all`` | ``truth`` (the world's truth).
        queries: what scores top-k: ``both`` (paper) | ``current`` | ``recent``.
        scope: ``per_layer`` | ``shared``.
        positions: ``shift`` | ``repack`` | ``absolute``.
        kv: ``transformer`` | ``project``.
        spatial: ``centres`` | ``grid``.
        score_queries: most queries per block (current, and each recent one) scored (>= 1).
        score_heads: fraction of heads scored (paper 0.5), in (0, 1].
        score_positions: where candidates' keys are scored: ``common`` (one position for all,
            position-neutral) | ``stored`` (their generation positions).
    """

    sink_frames: int = 8
    recent_frames: int = 4
    capacity: int = 32
    top_k: int = 16
    compressor: str = "pool"
    compress_time: int = 2
    compress_space: int | None = None
    hr_channels: int = 16
    compressor_weights: str | None = None
    allow_random: bool = False
    lr_decode: str = "stream"
    selection: str = "topk"
    queries: str = "both"
    scope: str = "per_layer"
    positions: str = "shift"
    kv: str = "transformer"
    spatial: str = "centres"
    score_queries: int = 256
    score_heads: float = 0.5
    score_positions: str = "common"
    partitions: ClassVar[tuple[str, ...]] = ("sink", "mid", "recent", "pending")

    def __post_init__(self) -> None:
        for name, allowed in (("selection", SELECTIONS), ("positions", POSITIONS),
                              ("score_positions", SCORE_POSITIONS),
                              ("scope", SCOPES), ("kv", KV_MODES), ("spatial", SPATIAL),
                              ("queries", QUERIES), ("lr_decode", DECODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: allowed {list(allowed)}")
        require_non_negative(self, "sink_frames", "recent_frames", "capacity")
        if self.selection != "all":
            if self.capacity == 0:
                raise ValueError(f"capacity=0 with selection={self.selection!r}: no archive to "
                                 "select from; use selection='all' or capacity >= top_k >= 1")
            if not 1 <= self.top_k <= self.capacity:
                raise ValueError(f"top_k={self.top_k}: must be in [1, capacity={self.capacity}]")
        if self.score_queries < 1:
            raise ValueError(f"score_queries={self.score_queries}: must be >= 1")
        if not 0.0 < self.score_heads <= 1.0:
            raise ValueError(f"score_heads={self.score_heads}: must be in (0, 1]")
        self._compression = Compression(self.compressor, self.compress_time,
                                        self.compress_space, self.hr_channels,
                                        self.compressor_weights, self.allow_random,
                                        self.lr_decode, self.kv, self.spatial)
        self._selector: Selector = (TopK(self.top_k, self.queries, self.scope, self.score_queries,
                                         self.score_heads, self.score_positions)
                                    if self.selection == "topk"
                                    else SELECTORS[self.selection](self.top_k))
        self._placer: Placer = PLACERS[self.positions]()

    def check(self, spec: ModelSpec) -> None:
        require_block_multiples(self, spec, "sink_frames", "recent_frames")
        self._compression.build(spec, meta=True)  # rate checks only; no weights are read

    @property
    def compressor_module(self) -> Compressor | None:
        """The bound compressor (an ``nn.Module``; kept across rollouts, so trainable)."""
        return self._compression.module

    @property
    def recording(self) -> bool:
        """Whether recent blocks' queries are kept (``queries`` reads them)."""
        return self._selector.recording

    def bind(self, model: Any, timer: Timer | None = None) -> None:
        """Build (or keep) the compressor for this model, check what it needs, then reset
        (``Compression.bind``)."""
        self.check(model.spec)
        if self.capacity:
            self._compression.bind(model)
        super().bind(model, timer)
        self._selector.bind(self.spec.num_layers, self.rope, self.timer, self._needed)

    def _needed(self, index: int) -> list[int] | None:
        """The blocks block ``index`` needs, by the world's truth (None: no such world)."""
        needed_blocks = getattr(self.model, "needed_blocks", None)
        if needed_blocks is None or not self.schedules:
            return None
        return needed_blocks(self.schedules, index)

    def reset(self) -> None:
        self._sink: list[BlockKV] = []
        self._mid: list[BlockKV] = []
        self._recent: list[BlockKV] = []
        self._pending: dict[int, BlockKV] = {}
        self._evicted, self._index = 0, -1
        if self._compression.module is not None:
            self._compression.module.reset()
        self._selector.reset()
        self._chosen: list[list[int] | None] = [None] * self.spec.num_layers  # archive positions

    def _held(self) -> Held:
        """The partitions as the block being made sees them."""
        return Held(self._sink, self._mid, self._recent, self._index, self.spec.block_frames)

    # -- per block ------------------------------------------------------------------------
    def begin_block(self, index: int) -> float:
        self._index = index
        self._chosen = [None] * self.spec.num_layers
        self._selector.begin_block()
        if self._sink:
            with self.timer.section("positions"):
                self._placer.place_sink(self._held(), self._selector.count(len(self._mid)))
        return float(index * self.spec.block_frames)

    def context_parts(self, layer: int, q: Tensor, step: int, fill: bool = False
                      ) -> list[tuple[Tensor, Tensor]]:
        if fill:  # the cache-fill pass: the block's clean queries
            self._selector.observe(layer, q)
        held = self._held()
        if self._chosen[layer] is None:  # the block's first request (step 0): select
            self._chosen[layer] = self._selector.choose(held, layer, q)
        with self.timer.section("positions"):
            mid = self._placer.mid_parts(held, layer, [self._mid[i] for i in self._chosen[layer]],
                                         self.rope)
            return ([b.layer_kv(layer, self.rope) for b in self._sink] + mid
                    + [b.layer_kv(layer, self.rope) for b in self._recent])

    def scores(self, layer: int, q: Tensor) -> Tensor:
        """Top-k scores (n_mid,) of the archive for the block with step-0 queries q, read
        as ``queries`` says (current block, recent blocks' clean queries, or both)."""
        return self._scorer(self.queries).scores(self._held(), layer, q)

    def affinity(self, layer: int, q: Tensor) -> Tensor:
        """Scores (n_mid,) of the archived blocks for queries q (B, H, N, D) of ``layer``."""
        return self._scorer("current").scores(self._held(), layer, q)

    def _scorer(self, queries: str) -> TopK:
        """The top-k selector (another, bound alike, to score other queries or when
        ``selection`` is not ``topk``)."""
        if isinstance(self._selector, TopK) and self._selector.queries == queries:
            return self._selector
        scorer = TopK(self.top_k, queries, self.scope, self.score_queries, self.score_heads,
                      self.score_positions)
        scorer.bind(self.spec.num_layers, self.rope, self.timer)
        return scorer

    def commit(self, block: FinishedBlock) -> None:
        kv = block.kv
        self._chosen = [None] * self.spec.num_layers
        if self.capacity and not kv.is_meta:
            self._compression.module.observe(block.latents, self.model)  # every block, in order
        if block.index < self.blocks_of(self.sink_frames):
            self._selector.end_block(None)
            kv.partition = "sink"
            self._sink.append(kv)
            return
        self._selector.end_block(block.index)
        kv.partition = "recent"
        self._recent.append(kv)
        if self.capacity:
            self._pending[block.index] = self._compress(block)
        while len(self._recent) > self.blocks_of(self.recent_frames):
            old = self._recent.pop(0).index
            self._selector.forget(old)
            aged = self._pending.pop(old, None)
            if aged is not None:
                aged.partition = "mid"
                self._mid.append(aged)
        while len(self._mid) > self.capacity:
            self._mid.pop(0)
            self._evicted += 1

    def _compress(self, block: FinishedBlock) -> BlockKV:
        with self.timer.section("compression"):
            return self._compression.stand_in(block, self.model, self.rope)

    def reencode(self, held: BlockKV, block: FinishedBlock) -> BlockKV | None:
        """A mid or pending stand-in compressed again from ``block`` (the re-cache at prompt
        switches, ``toolkit.core.recache``): the same compressor, positions and ``kv`` path."""
        if held.partition not in ("mid", "pending") or not self.capacity:
            return None
        return self._compress(block)

    # -- accounting -----------------------------------------------------------------------
    def footprint(self) -> dict[str, Usage]:
        held = self._sink + self._mid + self._recent + list(self._pending.values())
        out = usage(held, self.partitions)
        queries = self._selector.nbytes()
        if queries is not None:  # the recent blocks' summed queries (tokens: none)
            out["queries"] = Usage(0, queries)
        return out

    def attended(self) -> list[list[int]] | None:
        full = [b.index for b in self._sink], [b.index for b in self._recent]
        return [sorted([*full[0], *(self._mid[i].index for i in c), *full[1]])
                for c in self._chosen if c is not None] or None

    def info(self) -> dict[str, Any]:
        return {"sink": [b.index for b in self._sink], "sink_t0": [b.t0 for b in self._sink],
                "archive": [b.index for b in self._mid],
                "recent": [b.index for b in self._recent],
                "selected": [[self._mid[i].index for i in c] for c in self._chosen
                             if c is not None],
                "evicted": self._evicted}

    def provenance(self) -> dict[str, Any]:
        """The learned compressor's weights (file, sha256, the model weights they were
        trained with) and the model's weights, when known; empty for training-free ones."""
        return self._compression.provenance(self.model)
