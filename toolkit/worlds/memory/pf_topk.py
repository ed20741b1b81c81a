"""PackForcing's compressor fine-tune with top-k choosing, as at inference (memory world).

Inside a 5-block clip every mid block is attended (top-k has no choice), so the in-clip recipe
(``toolkit.worlds.sprites.pf_train``) never trains selection. Here a step is one return moment
packed as PackForcing packs it at 24x (``toolkit.worlds.memory.packed``): the sink block, M
archived candidates (the block that last showed the returning sprite at a uniformly random
slot, the others blocks that did not show it: other scenes, stale sprites of the same scene),
the recent block, and the return being made. Only the return is denoised (its loss), as the
cached rollout does it:

1. every candidate's clean latents are compressed (the strategy's compressor) and run through
   the model at timestep 0 (``token_kv``), all at ONE common position, the slot before the
   recent block (``score_positions=common``);
2. a scoring pass without gradients at the sampler's first noise level (the strategy scores at
   its first context request, denoising step 0) picks, per layer and sample, the ``top_k``
   candidates by the paper's affinity (``strategies.packforcing_select``: summed q . k over the
   scored heads, queries of the current block and of the recent block: ``queries=both``),
   layer by layer, so layer l's queries follow the picks of the layers below, as in a rollout;
3. the training pass (random noise level) attends, per layer, to the picked candidates'
   K/V moved to re-packed slots in index order (``positions=repack``), sink and recent at full
   resolution; gradients reach the compressor only through the picked K/V.

``select_weight`` > 0 adds a selection loss the paper does not have: cross-entropy of the
training pass's per-layer scores (mean logit per query-key pair) toward the candidates that
showed the sprite, so the compressor's keys and the model's queries learn to make top-k pick
them; 0 keeps the paper's objective.

Not matched to inference: the recent block's clean queries and K/V come from this pass with
the sink as its only context (at inference its cache-fill pass saw its own picks), and history
is ground truth (teacher forcing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from strategies.compressors import Compressor
from strategies.packforcing_select import query_sum, scored_heads
from toolkit.core.rope import grid_positions, shift_time
from toolkit.core.sampling import BlockSampler
from toolkit.worlds.memory.packed import Context, PackedMix, packed_context
from toolkit.worlds.memory.train import colour_hits
from toolkit.worlds.sprites.sim import SPLIT_SEEDS, split_seed


@dataclass(frozen=True)
class TopkSetup:
    """The packed layout of one step: ``candidates`` archived blocks, ``top_k`` attended."""

    candidates: int = 6
    top_k: int = 2
    score_heads: float = 0.5
    score_queries: int = 256
    kv: str = "transformer"
    spatial: str = "centres"

    def __post_init__(self) -> None:
        if not 1 <= self.top_k < self.candidates:
            raise ValueError(f"top_k={self.top_k} with candidates={self.candidates}: top-k must "
                             "choose, 1 <= top_k < candidates")


@dataclass
class TopkBatch:
    """Clean latents of [sink | candidates | recent | return] (B, C, F, H, W), per-block
    conditioning (B, blocks, L, C), which candidates showed the sprite (B, M) and the contexts."""

    x0: Tensor
    cond: Tensor
    needed: Tensor
    contexts: list[Context]


def sample_contexts(batch: int, candidates: int, block_frames: int, seed: int, split: str,
                    mix: PackedMix | None = None) -> list[Context]:
    """``batch`` packed return contexts of ``candidates + 3`` slots from the ``split``'s
    schedules (seeded)."""
    mix = mix or PackedMix(share=1.0, window_share=0.0)
    local = np.random.default_rng(seed).integers(0, SPLIT_SEEDS, size=batch)
    return [packed_context(np.random.default_rng([split_seed(int(s), split), 11]),
                           candidates + 3, block_frames, mix, 1.0) for s in local]


def make_topk_batch(model, contexts: list[Context], encode_shots) -> TopkBatch:
    videos = torch.stack([c.frames() for c in contexts]).to(model.device)
    x0 = model.vae.encode(videos)
    cond = encode_shots(model, [c.shots for c in contexts])
    shown = [[b in _shown_blocks(c) for b in c.slots[1:-2]] for c in contexts]
    return TopkBatch(x0, cond, torch.tensor(shown, device=x0.device), contexts)


def _returning(ctx: Context):
    """The sprite instance the context's last block returns to."""
    return ctx.sched.instances[ctx.sched.instance[ctx.slots[-1]]]


def _shown_blocks(ctx: Context) -> set[int]:
    """Blocks of the schedule that showed the sprite the context's last block returns to."""
    return {b for b in _returning(ctx).blocks if b < ctx.slots[-1]}


class TopkPlan:
    """Attention of the packed pass: [sink | recent | return] tokens plus, per layer, the
    picked candidates' K/V moved from the common slot to re-packed slots.

    ``chosen`` None: pick per layer from this pass's queries (the scoring pass) and keep the
    picks; else use them. ``scores`` collects each layer's candidate scores (B, M).
    """

    def __init__(self, model, setup: TopkSetup, keys: Tensor, values: Tensor,
                 chosen: list[Tensor] | None = None, hide: bool = False) -> None:
        spec = model.spec
        self.setup, self.rope, self.bf = setup, model.rope, spec.block_frames
        self.tpb = spec.tokens_per_block
        self.keys, self.values = keys, values  # (L, B, M, H, per, D)
        self.chosen = chosen
        self.picked: list[Tensor] = []
        self.scores: list[Tensor] = []
        k, tpb = setup.top_k, self.tpb
        n = 3 * tpb
        mask = torch.zeros(n, n + k * keys.shape[4], dtype=torch.bool)
        mask[:tpb, :tpb] = True  # sink: itself
        mask[tpb:2 * tpb, :2 * tpb] = True  # recent: sink and itself
        mask[2 * tpb:, :] = True  # the return: everything
        if hide:
            mask[2 * tpb:, n:] = False
        self.mask = mask

    def _scores(self, layer: int, q: Tensor) -> Tensor:
        heads = scored_heads(q.shape[1], self.setup.score_heads)
        most = self.setup.score_queries
        tpb = self.tpb
        qsum = (query_sum(q[:, :, 2 * tpb:], heads, most)  # the return (current)
                + query_sum(q[:, :, tpb:2 * tpb], heads, most))  # the recent block
        ksum = self.keys[layer][:, :, heads].float().sum(-2)  # (B, M, h', D)
        pairs = ksum.new_tensor(min(tpb, most) * 2 * self.keys.shape[4])
        raw = (ksum * qsum[:, None]).sum(-1).mean(-1) / math.sqrt(q.shape[-1])
        return raw, raw / pairs  # summed affinity (B, M), and the mean logit per pair

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        raw, mean_logit = self._scores(layer, q)
        self.scores.append(mean_logit)
        if self.chosen is None:
            order = torch.sort(raw.detach(), dim=1, descending=True, stable=True).indices
            pick = order[:, :self.setup.top_k].sort(dim=1).values
            self.picked.append(pick)
        else:
            pick = self.chosen[layer]
        lk, lv = self.keys[layer], self.values[layer]  # (B, M, H, per, D)
        idx = pick[:, :, None, None, None].expand(-1, -1, *lk.shape[2:])
        sk, sv = lk.gather(1, idx), lv.gather(1, idx)  # (B, k, H, per, D)
        common = self.setup.top_k  # the slot before recent; picks go to slots 1..k
        moved = [shift_time(sk[:, j], self.rope, (1 + j - common) * self.bf)
                 for j in range(sk.shape[1])]
        sk = torch.cat(moved, dim=2)  # (B, H, k*per, D)
        sv = sv.transpose(1, 2).flatten(2, 3)
        k = torch.cat([k, sk.to(k.dtype)], dim=2)
        v = torch.cat([v, sv.to(v.dtype)], dim=2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask.to(q.device))


def candidate_kv(model, compressor: Compressor, setup: TopkSetup, batch: TopkBatch
                 ) -> tuple[Tensor, Tensor]:
    """Per-layer K/V (L, B, M, H, per, D) of every candidate's compressed tokens at the common
    slot (the strategy's commit path: compress, then ``token_kv`` or ``project_kv``)."""
    bf, m = model.spec.block_frames, setup.candidates
    b = batch.x0.shape[0]
    blocks = batch.x0[:, :, bf:(m + 1) * bf].unflatten(2, (m, bf)).transpose(1, 2)
    tokens = compressor.compress(blocks.flatten(0, 1), model)  # (B*M, per, width)
    pos = compressor.positions(setup.spatial).clone()
    pos[:, 0] += setup.top_k * bf
    if setup.kv == "transformer":
        keys, values = model.token_kv(tokens, pos, batch.cond[:, 1:m + 1].flatten(0, 1))
    else:
        keys, values = model.project_kv(tokens, pos)
    return (keys.unflatten(1, (b, m)), values.unflatten(1, (b, m)))


def _pass(model, setup: TopkSetup, batch: TopkBatch, current: Tensor, sigma: Tensor,
          plan: TopkPlan) -> Tensor:
    """x0 prediction (B, C, bf, H, W) of the return from noisy latents ``current``."""
    spec, bf, m, k = model.spec, model.spec.block_frames, setup.candidates, setup.top_k
    x = torch.cat([batch.x0[:, :, :bf], batch.x0[:, :, (m + 1) * bf:(m + 2) * bf], current], 2)
    tpb = spec.tokens_per_block
    t = torch.zeros(x.shape[0], 3 * tpb, device=x.device)
    t[:, 2 * tpb:] = 1000 * sigma[:, None]
    pos = torch.cat([grid_positions(spec, 0.0, bf), grid_positions(spec, (k + 1) * bf, bf),
                     grid_positions(spec, (k + 2) * bf, bf)])
    cond = batch.cond[:, [0, m + 1, m + 2]]
    out = model.forward_tokens(x, t, pos, cond, plan=plan)[:, :, 2 * bf:].float()
    return model.to_x0(out, current, sigma[:, None, None, None, None])


def topk_step(model, compressor: Compressor, setup: TopkSetup, batch: TopkBatch,
              gen: torch.Generator, sigma_shift: float, hide: bool = False,
              sigma: Tensor | None = None) -> dict[str, Tensor]:
    """One packed step: the picks (scoring pass, no gradients), then the training pass.

    Returns ``pred`` (the return's x0 prediction), ``err`` (B,) its x0 error, ``sigma`` (B,),
    ``picks`` (L, B, k), ``hit`` (L, B): a needed candidate among the picks, and ``scores``
    (L, B, M): the training pass's mean logits (for the selection loss).
    """
    bf, m = model.spec.block_frames, setup.candidates
    keys, values = candidate_kv(model, compressor, setup, batch)
    x0 = batch.x0[:, :, (m + 2) * bf:]
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    first = torch.full((b,), BlockSampler(model.sampler).sigmas[0], device=x0.device)
    with torch.no_grad():
        scoring = TopkPlan(model, setup, keys.detach(), values.detach())
        _pass(model, setup, batch, (1 - first)[:, None, None, None, None] * x0
              + first[:, None, None, None, None] * noise, first, scoring)
    picks = scoring.picked
    if sigma is None:
        u = torch.rand(b, generator=gen).to(x0.device)
        sigma = sigma_shift * u / (1 + (sigma_shift - 1) * u)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    s = sigma[:, None, None, None, None]
    plan = TopkPlan(model, setup, keys, values, chosen=picks, hide=hide)
    pred = _pass(model, setup, batch, (1 - s) * x0 + s * noise, sigma, plan)
    hit = torch.stack([batch.needed.gather(1, p).any(1) for p in picks])
    return {"pred": pred, "err": (pred - x0).pow(2).mean((1, 2, 3, 4)), "sigma": sigma,
            "picks": torch.stack(picks), "hit": hit, "scores": torch.stack(plan.scores)}


def selection_loss(scores: Tensor, needed: Tensor) -> Tensor:
    """Cross-entropy of per-layer candidate scores (L, B, M) toward the needed candidates
    (B, M): minus the log of the softmax mass on them, mean over layers and samples."""
    logp = scores.float().log_softmax(-1)
    mass = logp.masked_fill(~needed[None], float("-inf")).logsumexp(-1)
    return -mass.mean()


def return_colours(model, pred: Tensor, contexts: list[Context]) -> float:
    """Share of contexts whose return's predicted first frame shows its sprite's colour
    (``toolkit.worlds.memory.train.colour_hits``)."""
    frames = model.vae.decode(pred[:, :, :1])[:, 0]  # (B, 3, H, W)
    return float(np.mean(colour_hits(frames, [_returning(c) for c in contexts])))


def topk_use(model, compressor: Compressor, setup: TopkSetup, encode_shots, n: int = 32,
             seed: int = 0) -> dict[str, float]:
    """Selection and reading on ``n`` fixed validation contexts at full noise: ``topk_hit``
    (a needed candidate picked, share of layer x context), ``chance_hit`` (the share random
    picking gets), ``return_ratio`` (loss with the picks hidden over loss with them) and the
    colour read from the one-step prediction with (``colour_shown``) and without
    (``colour_hidden``) the picks."""
    contexts = sample_contexts(n, setup.candidates, model.spec.block_frames, 10**6 + seed, "val")
    batch = make_topk_batch(model, contexts, encode_shots)
    full = torch.full((n,), 0.999, device=batch.x0.device)
    with torch.no_grad():
        shown = topk_step(model, compressor, setup, batch, torch.Generator().manual_seed(seed),
                          1.0, sigma=full)
        hidden = topk_step(model, compressor, setup, batch, torch.Generator().manual_seed(seed),
                           1.0, hide=True, sigma=full)
    m, k = setup.candidates, setup.top_k
    miss = [math.comb(m - int(c), k) / math.comb(m, k) for c in batch.needed.sum(1).tolist()]
    return {"topk_hit": shown["hit"].float().mean().item(),
            "chance_hit": 1 - float(np.mean(miss)),
            "return_ratio": (hidden["err"].mean() / shown["err"].mean()).item(),
            "colour_shown": return_colours(model, shown["pred"], contexts),
            "colour_hidden": return_colours(model, hidden["pred"], contexts)}
