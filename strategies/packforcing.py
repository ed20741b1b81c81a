"""PackForcing's three-partition cache (Mao et al. 2026; /work/shared/PAPER.md).

- ``sink``: the first ``sink_frames`` at full resolution, never evicted;
- ``mid``: every block between sink and recent, COMPRESSED, in an archive of ``capacity``
  blocks (oldest evicted first); ``top_k`` of them are attended, chosen per block;
- ``recent``: the last ``recent_frames`` at full resolution (plus the block being denoised);
- ``pending``: compressed copies of the recent blocks, made at commit while the block is still
  recent ("dual-resolution shifting"), which slide into ``mid`` as the block ages out.

Choices the paper leaves open, all options here (defaults first):

- The block being denoised, and the recent blocks, always sit at their absolute frame index.
  ``positions``: ``shift`` keeps mid blocks where they were generated and moves the sink (time
  dims only, once per archive eviction) to end where the oldest kept block begins, closing
  the gap evictions open; ``repack`` re-places the selected mid blocks contiguously backwards
  from the recent window (in index order) and the sink before them, every block (per layer
  under ``per_layer`` selection); ``absolute``: nothing moves. Moved keys are rotated from
  their stored (generation) rotation when read, so a sink moved 85 times in a 120 s video is
  rounded once, not 85 times (``toolkit.core.rope.shift_drift``: 93 bf16 ulps otherwise).
- ``selection``: ``topk`` by the paper's affinity, scored once per block at its first context
  request (denoising step 0) and reused for the other steps and the cache-fill pass;
  ``recency`` (newest ``top_k``); ``all``; ``truth``: a selection oracle that picks the
  blocks the world says the current block needs (``model.needed_blocks``; memory world only),
  so a strategy's recall splits into "did it pick the block" and "could the model read it".
  Affinity of mid block m: sum over its keys j and
  over the scoring queries i, of the mean over the batch and ``score_heads`` (a fraction;
  evenly spaced) of the heads of q_i . k_j / sqrt(d); no softmax. Bilinear, so computed as
  (sum_i q_i) . (sum_j k_j). ``score_positions``: ``common`` scores every candidate's keys
  moved (time dims) to one common position, the block just before the recent window, so
  selection reads content, not RoPE phase (keys scored where they are stored pile up at ages
  of one and two periods of a time frequency); ``stored`` scores them at their generation
  positions (the behaviour of the committed findings pages). Rotation is linear, so the key
  sums are moved, not the keys. ``queries`` (``strategies.packforcing_select``): ``both``
  (the paper: up to
  ``score_queries`` evenly spaced queries of the current block at step 0 plus as many clean
  queries of each recent block from its cache-fill pass), ``current`` or ``recent``.
- ``scope``: ``per_layer`` (each layer its own selection) or ``shared`` (one for all layers,
  scored by the first layer asking, layer 0: the only one whose queries exist before every
  layer needs the selection).
- ``kv`` (token compressors): ``transformer`` = the compressed tokens run through the whole
  transformer at timestep 0, attending only to themselves, cross-attending to the prompt
  (``model.token_kv``); ``project`` = each layer's pre-attention AdaLN norm at timestep 0 and
  its K/V projection applied to the same tokens (``model.project_kv``). K/V compressors
  (``pool_kv``, ``identity``) ignore it.
- ``spatial``: RoPE rows/columns of compressed tokens at the ``centres`` of the covered
  full-resolution cells, or the coarse ``grid`` indices; time always at the covered frames'
  centre (see ``Compressor.positions``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from strategies.compressors import (
    KV_MODES,
    SPATIAL,
    Compressor,
    build_compressor,
    compressor_class,
)
from strategies.compressors.base import model_sha256
from strategies.compressors.lr import DECODES
from strategies.packforcing_select import QUERIES, affinity, query_sum, scored_heads
from toolkit.core.cache import (
    BlockKV,
    CacheStrategy,
    FinishedBlock,
    Usage,
    require_block_multiples,
    require_non_negative,
    usage,
)
from toolkit.core.rope import grid_positions, rotate_at, shift_time
from toolkit.core.spec import ModelSpec
from toolkit.core.timing import Timer
from toolkit.registry import STRATEGIES

SELECTIONS = ("topk", "recency", "all", "truth")
POSITIONS = ("shift", "repack", "absolute")
SCORE_POSITIONS = ("common", "stored")
SCOPES = ("per_layer", "shared")


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
        learned = compressor_class(self.compressor).learned  # unknown names fail here
        if self.compressor_weights is not None and not learned:
            raise ValueError(f"compressor_weights={self.compressor_weights!r}: compressor "
                             f"{self.compressor!r} has no parameters (learned: hr, dual)")
        self._module: Compressor | None = None
        self._module_key: tuple = ()

    def check(self, spec: ModelSpec) -> None:
        require_block_multiples(self, spec, "sink_frames", "recent_frames")
        self._build(spec, meta=True)  # rate checks only; no weights are read

    def _build(self, spec: ModelSpec, meta: bool) -> Compressor:
        with torch.device("meta") if meta else nullcontext():
            return build_compressor(self.compressor, spec, self.compress_time,
                                    self.compress_space, self.hr_channels,
                                    None if meta else self.compressor_weights,
                                    decode=self.lr_decode)

    @property
    def compressor_module(self) -> Compressor | None:
        """The bound compressor (an ``nn.Module``; kept across rollouts, so trainable)."""
        return self._module

    @property
    def recording(self) -> bool:
        """Whether recent blocks' queries are kept (``queries`` reads them)."""
        return self.queries != "current" and self.selection == "topk"

    def bind(self, model: Any, timer: Timer | None = None) -> None:
        """Build (or keep) the compressor for this model, check what it needs, then reset.

        On a meta model (memory accounting) compressors never run: their outputs are meta
        tensors of the declared size, so their runtime needs (VAE, trained weights...) are not
        checked.
        """
        meta = torch.device(getattr(model, "device", "cpu")).type == "meta"
        self.check(model.spec)
        key = (self.compressor, model.spec, self.compress_time, self.compress_space,
               self.hr_channels, self.compressor_weights, self.lr_decode, meta)
        if self.capacity and key != self._module_key:
            self._module = self._build(model.spec, meta)
            self._module_key = key
            if not meta:
                self._module.to(model.device).eval()
        if self.capacity and not meta:
            self._module.check_model(model)
            method = "token_kv" if self.kv == "transformer" else "project_kv"
            if self._module.kind == "tokens" and not hasattr(model, method):
                raise ValueError(f"kv={self.kv!r} needs model.{method} (a WanCausalModel)")
            problem = self._module.untrained_problem(model)
            if problem and not self.allow_random:
                raise ValueError(f"{problem}; give trained weights (strategy.compressor_weights"
                                 "=FILE) or set strategy.allow_random=true to run it anyway")
        super().bind(model, timer)

    def reset(self) -> None:
        self._sink: list[BlockKV] = []
        self._mid: list[BlockKV] = []
        self._recent: list[BlockKV] = []
        self._pending: dict[int, BlockKV] = {}
        self._queries: dict[int, Tensor] = {}  # recent block -> (L, B, h', D) query sums
        self._evicted, self._index = 0, -1
        if self._module is not None:
            self._module.reset()
        self._clear_block()

    def _clear_block(self) -> None:
        layers = self.spec.num_layers
        self._chosen: list[list[int] | None] = [None] * layers  # positions in the archive
        self._shared: list[int] | None = None
        self._sums: Tensor | None = None  # (n_mid, L, B, H, D) key sums, this block only
        self._fill: list[Tensor | None] = [None] * layers  # this block's clean query sums

    # -- per block ------------------------------------------------------------------------
    def begin_block(self, index: int) -> float:
        self._index = index
        self._clear_block()
        bf = self.spec.block_frames
        if self._sink and self.positions != "absolute":
            with self.timer.section("positions"):
                if self.positions == "shift":  # end where the oldest kept block begins
                    kept = self._mid + self._recent
                    end = (kept[0].index if kept else index) * bf
                else:  # repack: before the selected mid blocks, before the recent window
                    end = self._anchor() - self._n_selected() * bf
                start = end - len(self._sink) * bf  # the blocks in it: it may still fill
                for j, b in enumerate(self._sink):
                    b.move_to(float(start + j * bf))  # rotated when read (one rounding)
        return float(index * bf)

    def _anchor(self) -> int:
        """Where the recent window (or, without one, the current block) begins."""
        return (self._recent[0].index if self._recent else self._index) * self.spec.block_frames

    def _n_selected(self) -> int:
        n = len(self._mid)
        return n if self.selection == "all" else min(self.top_k, n)

    def context_parts(self, layer: int, q: Tensor, step: int, fill: bool = False
                      ) -> list[tuple[Tensor, Tensor]]:
        if fill and self.recording:  # the cache-fill pass: the block's clean queries
            self._fill[layer] = query_sum(q, self._heads(q), self.score_queries)
        if self._chosen[layer] is None:  # the block's first request (step 0): select
            self._chosen[layer] = self._select(layer, q)
        with self.timer.section("positions"):
            return self._parts(layer, self._chosen[layer])

    def _heads(self, q: Tensor) -> list[int]:
        return scored_heads(q.shape[1], self.score_heads)

    def _select(self, layer: int, q: Tensor) -> list[int]:
        n, k = len(self._mid), self.top_k
        if self.selection == "all" or n <= k:
            return list(range(n))
        if self.selection == "recency" or q.is_meta:  # meta: no values; same sizes
            return list(range(n - k, n))
        if self.selection == "truth":
            return self._truth(k)
        if self.scope == "shared" and self._shared is not None:
            return self._shared
        with self.timer.section("selection"):
            scores = self.scores(layer, q)
            order = torch.sort(scores, descending=True, stable=True).indices[:k]
            chosen = sorted(order.tolist())
        if self.scope == "shared":
            self._shared = chosen
        return chosen

    def _truth(self, k: int) -> list[int]:
        """The selection oracle: the newest archived blocks that showed what the current block
        needs, by the world's truth (``model.needed_blocks``), the newest others after them."""
        needed_blocks = getattr(self.model, "needed_blocks", None)
        if needed_blocks is None or not self.schedules:
            raise ValueError("selection='truth' needs a world whose model names the blocks a "
                             "block needs (model.needed_blocks, e.g. the memory world)")
        needed = set(needed_blocks(self.schedules, self._index))
        hits = [i for i, b in enumerate(self._mid) if b.index in needed]
        rest = [i for i in range(len(self._mid)) if i not in hits]
        return sorted((hits[::-1] + rest[::-1])[:k])

    def scores(self, layer: int, q: Tensor) -> Tensor:
        """Top-k scores (n_mid,) of the archive for the block with step-0 queries q, read
        as ``queries`` says (current block, recent blocks' clean queries, or both)."""
        heads = self._heads(q)
        qsum = None
        if self.queries != "recent" or not self._queries:
            qsum = query_sum(q, heads, self.score_queries)
        if self.queries != "current":
            for b in self._recent:
                if b.index in self._queries:
                    recent = self._queries[b.index][layer].to(q.device)
                    qsum = recent if qsum is None else qsum + recent
        return affinity(self._key_sums(layer, heads), qsum, q.shape[-1])

    def affinity(self, layer: int, q: Tensor) -> Tensor:
        """Scores (n_mid,) of the archived blocks for queries q (B, H, N, D) of ``layer``."""
        heads = self._heads(q)
        return affinity(self._key_sums(layer, heads), query_sum(q, heads, self.score_queries),
                        q.shape[-1])

    def _key_sums(self, layer: int, heads: list[int]) -> Tensor:
        if self._sums is None:
            sums = [b.keys.sum(-2).float() for b in self._mid]  # (L, B, H, D) each
            if self.score_positions == "common":  # the time dims of every sum moved to one place
                common = self._anchor() - self.spec.block_frames
                sums = [shift_time(s, self.rope, common - b.rotated_at)
                        for s, b in zip(sums, self._mid, strict=True)]
            self._sums = torch.stack(sums)
        index = torch.tensor(heads, device=self._sums.device)
        return self._sums[:, layer].index_select(2, index)  # (n_mid, B, h', D)

    def _parts(self, layer: int, chosen: list[int]) -> list[tuple[Tensor, Tensor]]:
        """Sink, selected mid, recent: one layer's K/V views (moved keys rotated on read)."""
        parts = [b.layer_kv(layer, self.rope) for b in self._sink]
        mid = [self._mid[i] for i in chosen]
        if mid and self.positions == "repack":
            bf = self.spec.block_frames
            start = self._anchor() - len(mid) * bf
            for j, b in enumerate(mid):
                delta = start + j * bf - b.t0
                k, v = b.stored_layer(layer)  # (a view, or decoded from the stored form)
                parts.append((shift_time(k, self.rope, delta), v))
        else:
            parts += [b.layer_kv(layer, self.rope) for b in mid]
        return parts + [b.layer_kv(layer, self.rope) for b in self._recent]

    def commit(self, block: FinishedBlock) -> None:
        fill, self._fill = self._fill, [None] * self.spec.num_layers
        self._clear_block()
        kv = block.kv
        meta = kv.is_meta
        if self.capacity and not meta:
            self._module.observe(block.latents, self.model)  # every block, in order
        if block.index < self.blocks_of(self.sink_frames):
            kv.partition = "sink"
            self._sink.append(kv)
            return
        kv.partition = "recent"
        self._recent.append(kv)
        if self.recording and all(f is not None for f in fill):
            self._queries[block.index] = torch.stack(fill)
        if self.capacity:
            self._pending[block.index] = self._compress(block)
        while len(self._recent) > self.blocks_of(self.recent_frames):
            old = self._recent.pop(0).index
            self._queries.pop(old, None)
            aged = self._pending.pop(old, None)
            if aged is not None:
                aged.partition = "mid"
                self._mid.append(aged)
        while len(self._mid) > self.capacity:
            self._mid.pop(0)
            self._evicted += 1

    def _compress(self, block: FinishedBlock) -> BlockKV:
        """The block's compressed stand-in: per-layer K/V rotated at the cells' positions."""
        module, kv = self._module, block.kv
        with self.timer.section("compression"):
            if kv.is_meta:  # accounting: the declared size, no values
                shape = (*kv.keys.shape[:3], module.tokens(self.spec), kv.keys.shape[-1])
                keys = torch.empty(shape, dtype=kv.dtype, device="meta")
                return BlockKV(block.index, keys, torch.empty_like(keys), kv.t0, "pending")
            pos = module.positions(self.spatial)
            pos[:, 0] += kv.t0
            if module.kind == "kv":
                keys, values = self._compress_kv(module, kv, pos)
            else:
                tokens = module.compress(block.latents, self.model)
                if self.kv == "project":
                    keys, values = self.model.project_kv(tokens, pos)
                elif block.cond is None:
                    raise ValueError("kv='transformer' needs the prompt conditioning "
                                     "(FinishedBlock.cond); use kv='project' or pass it")
                else:
                    keys, values = self.model.token_kv(tokens, pos, block.cond)
        return BlockKV(block.index, keys.to(kv.dtype), values.to(kv.dtype), kv.t0, "pending")

    def reencode(self, held: BlockKV, block: FinishedBlock) -> BlockKV | None:
        """A mid or pending stand-in compressed again from ``block`` (the re-cache at prompt
        switches, ``toolkit.core.recache``): the same compressor, positions and ``kv`` path."""
        if held.partition not in ("mid", "pending") or not self.capacity:
            return None
        return self._compress(block)

    def _compress_kv(self, module: Compressor, kv: BlockKV, pos: Tensor
                     ) -> tuple[Tensor, Tensor]:
        """A K/V compressor, one layer at a time (working copies of one layer only)."""
        full = grid_positions(self.spec, kv.rotated_at, self.spec.block_frames)
        keys, values = [], []
        for layer in range(self.spec.num_layers):
            k, v = (t.unsqueeze(0) for t in kv.stored_layer(layer))  # (1, B, H, N, D)
            raw = rotate_at(k, self.rope, full, inverse=True)
            k, v = module.compress_kv(raw, v)
            keys.append(rotate_at(k, self.rope, pos).to(kv.dtype))
            values.append(v.to(kv.dtype))
        return torch.cat(keys), torch.cat(values)

    # -- accounting -----------------------------------------------------------------------
    def footprint(self) -> dict[str, Usage]:
        held = self._sink + self._mid + self._recent + list(self._pending.values())
        out = usage(held, self.partitions)
        if self.recording:  # the recent blocks' summed queries (tokens: none)
            out["queries"] = Usage(0, sum(t.nbytes for t in self._queries.values()))
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
        module = self._module
        if module is None or not module.learned:
            return {}
        return {"compressor": self.compressor, "compressor_weights": module.weights_file,
                "compressor_sha256": module.weights_sha256,
                "compressor_trained_for": module.trained_for,
                "model_sha256": model_sha256(self.model), "allow_random": self.allow_random}
