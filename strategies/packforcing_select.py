"""PackForcing's dynamic top-k: which queries score the mid archive, and the affinity.

The paper scores archived block m by the affinity of its keys to *subsampled current and
recent* queries: sum over the keys j of m and the chosen queries i of the mean over batch and
scored heads of q_i . k_j / sqrt(d), no softmax. The score is bilinear, so it is computed from
two sums: (sum_i q_i) . (sum_j k_j). A block's queries therefore enter as one summed vector per
layer and scored head, which is all the strategy keeps of them.

- ``current``: the block being denoised, at its first context request (denoising step 0: the
  queries of pure noise under a few-step sampler);
- ``recent``: the blocks of the recent window, their clean queries from their own cache-fill
  pass (recorded then, as a sum); the current block's when there is no recent block yet;
- ``both``: the sum of the two (each block counted with up to ``score_queries`` queries).

The selectors (``PackForcing.selection``): :class:`TopK` (that affinity), :class:`Recency`
(the newest ``top_k``), :class:`All` and :class:`Truth` (the world's truth, an oracle), each
a small object asked per layer and block which archived blocks to attend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from toolkit.core.rope import Rope, shift_time
from toolkit.core.timing import Timer

if TYPE_CHECKING:
    from strategies.packforcing_place import Held

QUERIES = ("current", "recent", "both")
Needed = Callable[[int], Iterable[int] | None]  # block index -> the blocks it needs, or None


def scored_heads(heads: int, fraction: float) -> list[int]:
    """``round(heads * fraction)`` evenly spaced heads (at least one)."""
    count = max(1, round(heads * fraction))
    return [i * heads // count for i in range(count)]


def scored_rows(tokens: int, most: int) -> list[int]:
    """Up to ``most`` evenly spaced query rows of a block of ``tokens`` queries."""
    rows = torch.linspace(0, tokens - 1, min(tokens, most), dtype=torch.float64).round()
    return [int(r) for r in rows.tolist()]


def query_sum(q: Tensor, heads: list[int], most: int) -> Tensor:
    """Sum (B, h', D), in float32, of up to ``most`` evenly spaced queries of q (B, H, N, D)
    over the scored ``heads``."""
    rows = scored_rows(q.shape[2], most)
    picked = q[:, heads][:, :, rows]  # (B, h', n', D)
    return picked.float().sum(2)


def affinity(key_sums: Tensor, qsum: Tensor, head_dim: int) -> Tensor:
    """Scores (n_mid,) from key sums (n_mid, B, h', D) and a query sum (B, h', D): the paper's
    summed logits, averaged over batch and heads."""
    return (key_sums * qsum.to(key_sums.device)).sum(-1).mean((1, 2)) / math.sqrt(head_dim)


# -- selectors ---------------------------------------------------------------------------------
class Selector:
    """Which archived mid blocks a block attends (``PackForcing.selection``).

    ``choose`` is asked once per layer and block, at the block's first context request
    (denoising step 0), and answers sorted positions in the archive (``held.mid``). With at
    most ``top_k`` candidates every one is attended; on meta tensors (memory accounting: no
    values) the newest ``top_k``, the same sizes. A selector that reads queries keeps what it
    needs of them through ``observe`` (the cache-fill pass) and ``end_block``.

    Attributes:
        top_k: mid blocks attended per block.
    """

    name: ClassVar[str] = ""
    recording: ClassVar[bool] = False  # whether it reads the cache-fill pass's queries

    def __init__(self, top_k: int) -> None:
        self.top_k = top_k

    def count(self, candidates: int) -> int:
        """How many of ``candidates`` archived blocks a block attends."""
        return min(self.top_k, candidates)

    def choose(self, held: Held, layer: int, q: Tensor) -> list[int]:
        """Sorted archive positions attended by ``layer`` of block ``held.index``, whose
        step-0 queries are q (B, H, N, D)."""
        n = len(held.mid)
        if n <= self.top_k:
            return list(range(n))
        if q.is_meta:  # no values; same sizes
            return list(range(n - self.top_k, n))
        return self.pick(held, layer, q)

    def pick(self, held: Held, layer: int, q: Tensor) -> list[int]:
        """``top_k`` of more than ``top_k`` candidates (see :meth:`choose`)."""
        raise NotImplementedError

    def bind(self, layers: int, rope: Rope | None, timer: Timer,
             needed: Needed | None = None) -> None:
        """The model's layers and RoPE, the rollout's timer, and the blocks a block needs
        by the world's truth (``needed(index)``, None where the world does not say)."""

    def reset(self) -> None:
        """Forget everything (a new video)."""

    def begin_block(self) -> None:
        """A new block: its choices are made afresh."""

    def observe(self, layer: int, q: Tensor) -> None:
        """The cache-fill pass's clean queries of the block being made."""

    def end_block(self, recent: int | None) -> None:
        """The block is finished; ``recent``: its index when it enters the recent window."""

    def forget(self, index: int) -> None:
        """Block ``index`` left the recent window."""

    def nbytes(self) -> int | None:
        """Bytes of queries kept (None: it keeps none)."""
        return None


class All(Selector):
    """Every archived block."""

    name = "all"

    def count(self, candidates: int) -> int:
        return candidates

    def choose(self, held: Held, layer: int, q: Tensor) -> list[int]:
        return list(range(len(held.mid)))


class Recency(Selector):
    """The newest ``top_k``."""

    name = "recency"

    def pick(self, held: Held, layer: int, q: Tensor) -> list[int]:
        n = len(held.mid)
        return list(range(n - self.top_k, n))


class Truth(Selector):
    """The selection oracle: the newest archived blocks that showed what the current block
    needs, by the world's truth (``needed(index)``: ``model.needed_blocks``), the newest
    others after them; so a strategy's recall splits into "did it pick the block" and "could
    the model read it"."""

    name = "truth"

    def __init__(self, top_k: int) -> None:
        super().__init__(top_k)
        self.needed: Needed | None = None

    def bind(self, layers: int, rope: Rope | None, timer: Timer,
             needed: Needed | None = None) -> None:
        self.needed = needed

    def pick(self, held: Held, layer: int, q: Tensor) -> list[int]:
        needed = None if self.needed is None else self.needed(held.index)
        if needed is None:
            raise ValueError("selection='truth' needs a world whose model names the blocks a "
                             "block needs (model.needed_blocks, e.g. the memory world)")
        needed = set(needed)
        hits = [i for i, b in enumerate(held.mid) if b.index in needed]
        rest = [i for i in range(len(held.mid)) if i not in hits]
        return sorted((hits[::-1] + rest[::-1])[:self.top_k])


class TopK(Selector):
    """The paper's dynamic top-k by affinity (module docstring), scored once per block.

    Attributes:
        top_k: mid blocks attended per block.
        queries: what scores: ``both`` (paper) | ``current`` | ``recent``.
        scope: ``per_layer`` (each layer its own choice) or ``shared`` (the first layer
            asking, layer 0, chooses for all).
        score_queries: most queries per block scored.
        score_heads: fraction of heads scored, in (0, 1].
        score_positions: ``common`` (every candidate's key sum moved, time dims, to the block
            just before the recent window: content, not RoPE phase) or ``stored``.
    Bound to the model's layers (a block's clean queries are kept once every layer's are
    in), its RoPE (``common`` moves key sums with it) and the rollout's timer (``selection``).
    """

    name = "topk"

    def __init__(self, top_k: int, queries: str = "both", scope: str = "per_layer",
                 score_queries: int = 256, score_heads: float = 0.5,
                 score_positions: str = "common") -> None:
        super().__init__(top_k)
        self.queries, self.scope = queries, scope
        self.score_queries, self.score_heads = score_queries, score_heads
        self.score_positions = score_positions
        self.bind(0, None, Timer())
        self.reset()

    def bind(self, layers: int, rope: Rope | None, timer: Timer,
             needed: Needed | None = None) -> None:
        self.layers, self.rope, self.timer = layers, rope, timer

    @property
    def recording(self) -> bool:  # type: ignore[override]
        return self.queries != "current"

    def reset(self) -> None:
        self._queries: dict[int, Tensor] = {}  # recent block -> (L, B, h', D) query sums
        self.begin_block()

    def begin_block(self) -> None:
        self._fill: dict[int, Tensor] = {}  # this block's clean query sums, per layer
        self._shared: list[int] | None = None
        self._sums: Tensor | None = None  # (n_mid, L, B, H, D) key sums, this block only

    def pick(self, held: Held, layer: int, q: Tensor) -> list[int]:
        if self.scope == "shared" and self._shared is not None:
            return self._shared
        with self.timer.section("selection"):
            scores = self.scores(held, layer, q)
            order = torch.sort(scores, descending=True, stable=True).indices[:self.top_k]
            chosen = sorted(order.tolist())
        if self.scope == "shared":
            self._shared = chosen
        return chosen

    def heads(self, q: Tensor) -> list[int]:
        return scored_heads(q.shape[1], self.score_heads)

    def scores(self, held: Held, layer: int, q: Tensor) -> Tensor:
        """Scores (n_mid,) of the archive for the block with step-0 queries q, read as
        ``queries`` says (current block, recent blocks' clean queries, or both)."""
        heads = self.heads(q)
        qsum = None
        if self.queries != "recent" or not self._queries:
            qsum = query_sum(q, heads, self.score_queries)
        if self.queries != "current":
            for b in held.recent:
                if b.index in self._queries:
                    recent = self._queries[b.index][layer].to(q.device)
                    qsum = recent if qsum is None else qsum + recent
        return affinity(self.key_sums(held, layer, heads), qsum, q.shape[-1])

    def key_sums(self, held: Held, layer: int, heads: list[int]) -> Tensor:
        """The archive's key sums (n_mid, B, h', D) of ``layer``, made once per block."""
        if self._sums is None:
            sums = [b.keys.sum(-2).float() for b in held.mid]  # (L, B, H, D) each
            if self.score_positions == "common":  # the time dims of every sum moved to one place
                common = held.anchor - held.block_frames
                sums = [shift_time(s, self.rope, common - b.rotated_at)
                        for s, b in zip(sums, held.mid, strict=True)]
            self._sums = torch.stack(sums)
        index = torch.tensor(heads, device=self._sums.device)
        return self._sums[:, layer].index_select(2, index)  # (n_mid, B, h', D)

    def observe(self, layer: int, q: Tensor) -> None:
        if self.recording:
            self._fill[layer] = query_sum(q, self.heads(q), self.score_queries)

    def end_block(self, recent: int | None) -> None:
        fill = [self._fill.get(layer) for layer in range(self.layers)]
        if recent is not None and self.recording and all(f is not None for f in fill):
            self._queries[recent] = torch.stack(fill)
        self.begin_block()

    def forget(self, index: int) -> None:
        self._queries.pop(index, None)

    def nbytes(self) -> int | None:
        return sum(t.nbytes for t in self._queries.values()) if self.recording else None


SELECTORS: dict[str, type[Selector]] = {s.name: s for s in (TopK, Recency, All, Truth)}
SELECTIONS = tuple(SELECTORS)  # ("topk", "recency", "all", "truth")
