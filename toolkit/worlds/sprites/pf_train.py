"""``rollbench train packforcing``: fine-tune a world model together with PackForcing's
compressor, end-to-end inside the world model's own x0 objective (PAPER.md, Training).

The data follow the starting weights: the sprite world (one prompt per clip), or the memory world
(``init=world-memory.safetensors``: a shot per block, clips ending in a cut back to a scene whose
sprite only the mid blocks showed, so the compressed mid history is what the last block needs).

One teacher-forced pass per step, as ``toolkit.worlds.sprites.train``, on 20-latent-frame clips
(5 blocks of 4), with the three partitions active INSIDE the clip. Queries are [clean clip |
noisy clip] (timestep 0 | one noise level per block); keys are [clean clip | noisy clip |
compressed mid blocks]. Noisy block b sees exactly what the cached PackForcing rollout gives it
(``contexts``):

- ``b < sink``: the clean blocks before it (all in the sink), and itself;
- otherwise: the sink's clean blocks, the COMPRESSED K/V of mid blocks ``sink .. b-recent-1``,
  the clean recent blocks ``b-recent .. b-1``, and itself.

With the defaults (sink = recent = 1 block) blocks 0-2 see only full-resolution context and
blocks 3 and 4 see sink 0, compressed 1 (.. 2), recent b-1: the two blocks whose history holds
a mid partition.

Clean block b (whose K/V the next blocks read) sees by default (``clean_context=strategy``) the
same context as its noisy twin, with its clean self: at inference the cache-fill pass of a block
runs under the strategy's context for that block, so a cached clean block's K/V were computed
with the compressed mid in view. ``causal`` gives clean blocks the full clean history instead
(the world recipe's layout).

Compressed K/V: each mid block's clean latents go through the compressor (``hr``: learned;
``dual``: hr + the training-free lr branch, the paper's default), then through the model exactly
as the strategy does at inference: ``kv=transformer`` runs the tokens through every layer at
timestep 0 attending only to themselves (``model.token_kv``), ``kv=project`` applies each layer's
K/V projection (``model.project_kv``). Their positions are the strategy's: the compressor's cell
positions (``spatial``) at the block's generation time. Inside a 5-block clip nothing is ever
evicted and every mid block is selected (top_k >= 2), so ``shift``, ``repack`` and ``absolute``
all place every block at its generation position. Gradients reach the compressor only through
those K/V. No separate compressor loss. The compressed tokens' K/V come from their own small
passes (one per mid block, the strategy's code path) appended to every layer's keys by
``PackPlan``: the same numbers as putting the tokens in the sequence with a self-only mask, but
``kv=project`` works too.

Not matched to inference: history is ground truth, not generated (teacher forcing, as the world
recipe); top-k selection, archive evictions and the sink shift never occur inside one clip
(weights are meant for any sink / recent / top-k at inference; the compressor's rate, width, kv
and spatial must match the training run's).

Seeded; resumable (``<out>/checkpoint.pt`` every ``ckpt_every`` steps, resumed when present);
JSON-line log rows with the context-use diagnostic; exports the fine-tuned world weights
(``save_world``: loadable with ``load_world(path=...)``) and the compressor's hr weights
(``Compressor.save``: ``strategy.compressor_weights=...``) with cards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from strategies.compressors import (
    KV_MODES,
    SPATIAL,
    Compressor,
    build_compressor,
    compressor_class,
)
from strategies.packforcing_layout import Layout, block_errors, contexts, pack_layout, predict
from toolkit.compat import moved_names
from toolkit.models import trainer
from toolkit.models.trainer import CHECKPOINT, Eval, Trainer, TrainSettings
from toolkit.models.weights import find_weights
from toolkit.worlds.memory.pf_topk import (
    TopkSetup,
    make_topk_batch,
    sample_contexts,
    selection_loss,
    topk_step,
    topk_use,
)
from toolkit.worlds.memory.scenes import ClipMix, sample_clips
from toolkit.worlds.memory.train import colour_recall, encode_shots, return_weights
from toolkit.worlds.sprites.model import (
    WEIGHTS_DIR,
    WorldConfig,
    WorldModel,
    load_world,
)
from toolkit.worlds.sprites.pf_export import (  # noqa: F401 (file names: part of this API)
    COMPRESSOR_FILE,
    WORLD_FILE,
    _shown,
    export,
    file_names,
)
from toolkit.worlds.sprites.sim import sample_batch
from toolkit.worlds.sprites.train import WorldHooks, loss_weights, noise_blocks

CLEAN_CONTEXTS = ("strategy", "causal")


@dataclass
class PFTrainConfig(TrainSettings):
    """Hyperparameters of ``rollbench train packforcing`` (ablations/train/packforcing.yaml
    holds only what differs from these defaults).

    Attributes:
        init: world weights to start from ("": the shipped ones, via ``load_world``).
        sink_frames / recent_frames: partitions inside the clip (block multiples); a mid must
            exist: sink + recent <= clip - 2 blocks.
        compressor: a token compressor: ``hr`` or ``dual`` (learned), or ``lr`` (no
            parameters: only the generator learns to read it); compress_time / compress_space /
            hr_channels as the strategy's (the saved weights fit only that rate and width;
            compress_space None: the paper's 8, here 2 tokens per mid block).
        kv / spatial: as the strategy's (its defaults: transformer / centres).
        clean_context: ``strategy`` (clean blocks see what their cache-fill pass sees at
            inference) or ``causal`` (full clean history, as the world recipe).
        lr / compressor_lr: peak learning rates of the generator (the world recipe's final
            rate: its peak 5e-4 x 0.1) and of the compressor (randomly initialised, it learns
            from scratch); AdamW, linear warm-up, cosine to ``min_lr_ratio``.
        ema: EMA decay of both modules (0: off); the EMA copies are exported.
        eval_every: steps between context-use diagnostics (0: only at the end).
        memory_share / return_weight: memory world only: share of clips ending in a mid-only
            return, and the loss weight of returning blocks (as its base recipe).
        candidates / top_k / select_weight: memory world only: ``candidates`` > 0 trains on
            packed return contexts where top-k picks ``top_k`` of that many archived blocks,
            scored as at inference (``toolkit.worlds.memory.pf_topk``; clip_frames and the
            partitions are then the packed layout's); ``select_weight`` > 0 adds its selection
            loss. 0: the in-clip recipe. ``packed_share`` < 1 mixes in in-clip steps (a seeded
            share of the steps), which train reading compressed blocks on every block.
    """

    init: str = ""
    batch: int = 8
    clip_frames: int = 20
    max_sprites: int = 1
    sink_frames: int = 4
    recent_frames: int = 4
    compressor: str = "dual"
    compress_time: int = 2
    compress_space: int | None = None
    hr_channels: int = 16
    kv: str = "transformer"
    spatial: str = "centres"
    clean_context: str = "strategy"
    lr: float = 5e-5
    compressor_lr: float = 1e-3
    ema: float = 0.99
    min_sigma_weight: float = 0.1
    sigma_shift: float = 2.0
    eval_every: int = 250
    out: str = "runs/train/packforcing"
    export: str = ""  # directory of the final weights; empty: <out>/final
    memory_share: float = 0.9
    return_weight: float = 5.0
    candidates: int = 0
    top_k: int = 2
    select_weight: float = 0.0
    packed_share: float = 1.0


def memory_world(model: WorldModel) -> bool:
    """Whether a world model is the memory world's (its data are scenes with shots)."""
    return model.world_config.world == "scenes"


def make_batch(cfg: PFTrainConfig, model: WorldModel, step: int, gen: torch.Generator,
               memory_share: float | None = None):
    """Clean latents, noisy latents, per-block sigmas, conditioning and (memory world) the
    clips' schedules: the world's own sampling, on a data stream of its own.

    Conditioning: (B, L, C) for the sprite world; (B, blocks, L, C) for the memory world.
    """
    seed, bf = (cfg.seed + 7919) * 1_000_003 + step, model.spec.block_frames
    if memory_world(model):
        share = cfg.memory_share if memory_share is None else memory_share
        mix = ClipMix(share, model.spec.blocks_of(cfg.sink_frames),
                      model.spec.blocks_of(cfg.recent_frames))
        videos, shots, scheds = sample_clips(cfg.batch, cfg.clip_frames, bf, seed, mix=mix)
        cond = encode_shots(model, shots)
    else:
        videos, prompts = sample_batch(cfg.batch, cfg.clip_frames, seed,
                                       max_sprites=cfg.max_sprites)
        cond, scheds = model.encode_prompt(prompts), None
    x0 = model.vae.encode(videos.to(model.device))
    xt, sigma = noise_blocks(x0, bf, cfg.sigma_shift, gen)
    return x0, xt, sigma, cond, scheds


def context_use(model: WorldModel, compressor: Compressor, cfg: PFTrainConfig,
                layout: Layout) -> dict[str, float]:
    """Losses at full noise on a fixed batch (below 1: the context is used).

    ``gap_mid``: blocks with compressed mid in their history over the first block;
    ``gap_nomid``: blocks with history but no mid over the first block; ``mid_use``: the mid
    blocks' loss with their compressed tokens over the same loss with the tokens hidden.
    Memory world (on clips that all end in a mid-only return): ``return_ratio``, the last
    block's loss with the compressed mid hidden over the loss with it (the gate: >= 1.2), and
    the colour read from its one-step prediction with (``colour_shown``) and without
    (``colour_hidden``) the compressed mid.
    """
    gen = torch.Generator().manual_seed(99)
    x0, _, _, cond, scheds = make_batch(cfg, model, 10**7, gen, memory_share=1.0)
    nb = model.spec.blocks_of(x0.shape[2])
    sigma = torch.full((x0.shape[0], nb), 0.999, device=x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    xt = 0.001 * x0 + 0.999 * noise
    with torch.no_grad():
        shown = predict(model, compressor, layout, x0, xt, sigma, cond, cfg.kv)
        hidden = predict(model, compressor, layout, x0, xt, sigma, cond, cfg.kv,
                         layout.without_mid())
    err, dropped = block_errors(model, shown, x0), block_errors(model, hidden, x0)
    row = {}
    if scheds is not None:
        row = {"return_ratio": (dropped[:, -1].mean() / err[:, -1].mean()).item(),
               "colour_shown": colour_recall(model, shown, scheds, model.spec.block_frames),
               "colour_hidden": colour_recall(model, hidden, scheds, model.spec.block_frames)}
    err, dropped = err.mean(0), dropped.mean(0)
    first = err[0]
    hist = torch.tensor([len(s) + len(m) + len(r) > 0 for s, m, r in layout.ctx])
    nomid = hist & ~layout.has_mid.to(hist.device)
    mid = layout.has_mid.to(err.device)
    row.update({"gap_mid": (err[mid].mean() / first).item(),
                "mid_use": (err[mid].mean() / dropped[mid].mean()).item()})
    if nomid.any():
        row["gap_nomid"] = (err[nomid.to(err.device)].mean() / first).item()
    return row


def topk_setup(cfg: PFTrainConfig) -> TopkSetup:
    return TopkSetup(cfg.candidates, cfg.top_k, kv=cfg.kv, spatial=cfg.spatial)


def step_loss(cfg: PFTrainConfig, model: WorldModel, compressor: Compressor,
              layout: Layout | None, step: int, gen: torch.Generator
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one step and its logged parts: the in-clip pass (``layout``), or a packed
    top-k step (``candidates`` > 0, on a ``packed_share`` of the steps)."""
    packed = cfg.candidates > 0 and (
        cfg.packed_share >= 1.0
        or np.random.default_rng([cfg.seed, step, 17]).random() < cfg.packed_share)
    if packed:
        contexts = sample_contexts(cfg.batch, cfg.candidates, model.spec.block_frames,
                                   (cfg.seed + 7919) * 1_000_003 + step, "train")
        batch = make_topk_batch(model, contexts, encode_shots)
        out = topk_step(model, compressor, topk_setup(cfg), batch, gen, cfg.sigma_shift)
        loss = (out["err"] * loss_weights(out["sigma"], cfg.min_sigma_weight)).mean()
        stats = {"err_return": loss.item(), "topk_hit": out["hit"].float().mean().item()}
        if cfg.select_weight > 0:
            select = selection_loss(out["scores"], batch.needed)
            loss = loss + cfg.select_weight * select
            stats["select"] = select.item()
        return loss, {"loss": loss.item(), **stats}
    x0, xt, sigma, cond, scheds = make_batch(cfg, model, step, gen)
    err = block_errors(model, predict(model, compressor, layout, x0, xt, sigma, cond, cfg.kv), x0)
    weight = loss_weights(sigma, cfg.min_sigma_weight)
    if scheds is not None and cfg.return_weight != 1.0:
        weight = weight * return_weights(scheds, err.shape[1], cfg.return_weight)
    loss = (err * weight).mean()
    has_mid = layout.has_mid.to(err.device)
    return loss, {"loss": loss.item(), "err_mid": err[:, has_mid].mean().item(),
                  "err_nomid": err[:, ~has_mid].mean().item()}


def diagnostics(model: WorldModel, compressor: Compressor, cfg: PFTrainConfig,
                layout: Layout | None) -> dict[str, float]:
    """``context_use`` of the in-clip recipe, and ``topk_use`` of the packed one."""
    row = {} if layout is None else context_use(model, compressor, cfg, layout)
    if cfg.candidates:  # the packed diagnostic's names win: it is the layout of inference
        row.update(topk_use(model, compressor, topk_setup(cfg), encode_shots))
    return row


# -- the recipe --------------------------------------------------------------------------------
def validate(cfg: PFTrainConfig, spec, memory: bool = True) -> None:
    """Raise ValueError for settings the in-clip partitions cannot realise."""
    if compressor_class(cfg.compressor).kind != "tokens":
        raise ValueError(f"compressor={cfg.compressor!r} compresses K/V, which no model pass "
                         "trains through; train a token compressor: hr, dual or lr")
    for name, value, allowed in (("kv", cfg.kv, KV_MODES), ("spatial", cfg.spatial, SPATIAL),
                                 ("clean_context", cfg.clean_context, CLEAN_CONTEXTS)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r}: allowed {list(allowed)}")
    bf = spec.block_frames
    names = ("clip_frames", "sink_frames", "recent_frames")
    for name in names:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name}={getattr(cfg, name)}: must be >= 0")
    blocks = [spec.check_blocks(name, getattr(cfg, name)) for name in names]
    if not any(mid for _, mid, _ in contexts(*blocks)):
        raise ValueError(f"sink_frames={cfg.sink_frames} + recent_frames={cfg.recent_frames} "
                         f"leave no mid partition inside a {cfg.clip_frames}-frame clip: they "
                         f"must total at most clip_frames - 2 blocks ({cfg.clip_frames - 2 * bf})")
    if cfg.batch < 1 or cfg.steps < 1:
        raise ValueError("batch and steps must be >= 1")
    if cfg.candidates:
        if not 0.0 < cfg.packed_share <= 1.0:
            raise ValueError(f"packed_share={cfg.packed_share}: must be in (0, 1]")
        if not memory:
            raise ValueError(f"candidates={cfg.candidates}: packed top-k training needs the "
                             "memory world (init=world-memory-...); 0 trains in-clip")
        topk_setup(cfg)  # top_k must choose: 1 <= top_k < candidates


def command(cfg: PFTrainConfig) -> str:
    """The ``rollbench train packforcing`` line re-creating this run (overrides of the
    defaults)."""
    return trainer.command("packforcing", cfg)


def build_modules(cfg: PFTrainConfig) -> tuple[WorldModel, Compressor]:
    """The world model to fine-tune (``init`` or the shipped weights) and a seeded compressor."""
    model = load_world(cfg.init or None, device=cfg.device)
    compressor = build_compressor(cfg.compressor, model.spec, cfg.compress_time,
                                  cfg.compress_space, cfg.hr_channels, seed=cfg.seed)
    return model.train(), compressor.to(model.device).train()


class PackForcingHooks(WorldHooks):
    """``rollbench train packforcing``: the world model and the compressor, each with its EMA."""

    name = "packforcing"
    ema_keys: ClassVar[dict[str, str]] = {"model": "ema_model", "compressor": "ema_compressor"}

    def build(self) -> dict[str, torch.nn.Module]:
        cfg = self.cfg
        self.model, self.compressor = build_modules(cfg)
        validate(cfg, self.model.spec, memory_world(self.model))
        self.init_path = (find_weights(cfg.init) if cfg.init
                          else WEIGHTS_DIR / "world-model.safetensors")
        self.init_card = dict(self.model.card)
        return {"model": self.model, "compressor": self.compressor}

    def param_groups(self, modules: dict[str, torch.nn.Module]) -> list[dict[str, Any]]:
        groups = [{"params": list(self.model.parameters()), "lr": self.cfg.lr}]
        if any(True for _ in self.compressor.parameters()):  # lr has none: the generator learns
            groups.append({"params": list(self.compressor.parameters()),
                           "lr": self.cfg.compressor_lr})
        return groups

    def check(self, state: dict[str, Any]) -> None:
        ours = self.init_card.get("sha256")
        if state.get("init_sha256", ours) != ours:
            raise ValueError(f"{Path(self.cfg.out) / CHECKPOINT} continues a fine-tune of other "
                             f"world weights (sha256 {state['init_sha256'][:12]}...) than "
                             f"{_shown(self.init_path)} ({(ours or '')[:12]}...): remove it, or "
                             "set out=")

    def extra_state(self) -> dict[str, Any]:
        return {"init_sha256": self.init_card.get("sha256")}

    def started(self, run: Trainer) -> None:
        cfg = self.cfg
        self.layout = None if cfg.candidates and cfg.packed_share >= 1.0 else pack_layout(
            self.model.spec, self.compressor, cfg.clip_frames, cfg.sink_frames,
            cfg.recent_frames, cfg.spatial, cfg.clean_context)
        run.emit({"layout": layout_row(cfg, self.layout)})

    def loss(self, run: Trainer, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return step_loss(self.cfg, self.model, self.compressor, self.layout, step, run.gen)

    def evaluations(self, run: Trainer) -> list[Eval]:
        return [Eval(self.cfg.eval_every, lambda step: diagnostics(
            run.weights("model"), run.weights("compressor"), self.cfg, self.layout))]

    def export(self, run: Trainer) -> Path:
        model, compressor = run.weights("model"), run.weights("compressor")
        return export(self.cfg, model.eval(), compressor.eval(),
                      WorldConfig(**self.init_card["config"]), run.history, self.init_path,
                      self.init_card)


def layout_row(cfg: PFTrainConfig, layout: Layout | None) -> dict[str, Any]:
    """What a run trains on: the packed top-k setting, or the in-clip partitions per block."""
    if cfg.candidates:
        return {"candidates": cfg.candidates, "top_k": cfg.top_k,
                "packed_share": cfg.packed_share}
    return {"blocks": [{"block": b, "sink": s, "mid": m, "recent": r}
                       for b, (s, m, r) in enumerate(layout.ctx)],
            "compressed_tokens_per_block": layout.per_block,
            "queries": int(layout.mask.shape[0]), "keys": int(layout.mask.shape[1])}


def train_packforcing(cfg: PFTrainConfig, log=print) -> Path:
    """Fine-tune (or resume) world model + compressor; returns the exported world weights."""
    return Trainer(PackForcingHooks(cfg), log).fit()


__getattr__ = moved_names(__name__)  # names that moved to the trainer (toolkit.compat)
