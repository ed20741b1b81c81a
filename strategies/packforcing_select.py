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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

QUERIES = ("current", "recent", "both")


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
