"""Training recipe of the world model: teacher forcing matched to cached inference.

One pass sees a clip twice: its clean frames (timestep 0, the cache the model will read at
inference) and the same frames noised, one noise level per block. A noisy block attends the
clean blocks before it and itself; a clean block attends clean blocks up to itself. So every
block gets an x0 loss with clean history in one forward, exactly the situation of a cached
rollout. Seeded and resumable (a checkpoint every ``ckpt_every`` steps): hooks over the one
trainer (``toolkit.models.trainer``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toolkit.compat import moved_names
from toolkit.core.attention import MaskedPlan
from toolkit.core.rope import grid_positions
from toolkit.models.trainer import Eval, Hooks, Trainer, TrainSettings, base_card
from toolkit.worlds.sprites.model import PixelVAE, WorldConfig, WorldModel, build_world, save_world
from toolkit.worlds.sprites.sim import FRAME_SIZE, sample_batch


@dataclass
class TrainConfig(TrainSettings):
    """Hyperparameters of ``rollbench train world-model`` (ablations/train/world-model.yaml
    holds only what differs from these defaults).

    ``export_from``: ``model`` (the raw weights), because at 3,000 steps the 0.999 EMA (no
    warm-up) still lags (1x fidelity 0.29 against 0.52). ``threads``: 1, as the shipped weights
    were trained (the other recipes' default too).
    """

    model: WorldConfig = field(default_factory=WorldConfig)
    steps: int = 3000
    batch: int = 16
    clip_frames: int = 20
    max_sprites: int = 1
    min_sigma_weight: float = 0.1
    sigma_shift: float = 2.0
    out: str = "runs/train/world-model"
    export: str = ""  # where to write the final weights (.safetensors); empty: <out>/final
    export_from: str = "model"  # which weights to export: ema | model (the raw weights)


def norm_stats(n: int = 512, seed: int = 1234) -> tuple[list[float], list[float]]:
    """Per-channel mean / std of the pixel-unshuffled latent over simulated frames."""
    videos, _ = sample_batch(n, 4, seed, split="train", max_sprites=3)
    z = PixelVAE(2).encode(videos)  # (N, C, F, h, w)
    return z.mean((0, 2, 3, 4)).tolist(), z.std((0, 2, 3, 4)).clamp_min(1e-3).tolist()


def teacher_forcing_layout(model: WorldModel, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (2N, 3) and mask (2N, 2N) of [clean clip, noisy clip] token sequences."""
    spec = model.spec
    pos = grid_positions(spec, 0.0, frames)
    block = torch.arange(frames).repeat_interleave(spec.tokens_per_frame) // spec.block_frames
    clean_q = block[:, None] >= block[None, :]  # clean -> clean, causal incl. own block
    noisy_to_clean = block[:, None] > block[None, :]  # noisy -> strictly earlier clean blocks
    noisy_to_noisy = block[:, None] == block[None, :]  # noisy -> its own block
    top = torch.cat([clean_q, torch.zeros_like(clean_q)], 1)
    bottom = torch.cat([noisy_to_clean, noisy_to_noisy], 1)
    return torch.cat([pos, pos]), torch.cat([top, bottom])


def noise_blocks(x0: torch.Tensor, block_frames: int, shift: float,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise each block of clean latents x0 (B, C, F, h, w) at its own level.

    Returns the noisy latents and the per-block sigmas (B, blocks), drawn uniformly and shifted
    toward high noise as at sampling.
    """
    u = torch.rand(x0.shape[0], x0.shape[2] // block_frames, generator=gen)
    sigma = shift * u / (1 + (shift - 1) * u)
    sig_f = sigma.repeat_interleave(block_frames, 1)[:, None, :, None, None].to(x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    return (1 - sig_f) * x0 + sig_f * noise, sigma.to(x0.device)


def loss_weights(sigma: torch.Tensor, min_sigma: float) -> torch.Tensor:
    """x0-error weights 1 / max(sigma, min)^2, normalised to mean 1."""
    weight = 1.0 / sigma.clamp_min(min_sigma) ** 2
    return weight / weight.mean()


def make_batch(cfg: TrainConfig, model: WorldModel, step: int, gen: torch.Generator):
    """Clean latents, noisy latents, per-block sigmas and prompts for one step."""
    videos, prompts = sample_batch(
        cfg.batch, cfg.clip_frames, cfg.seed * 1_000_003 + step, max_sprites=cfg.max_sprites
    )
    x0 = model.vae.encode(videos)
    xt, sigma = noise_blocks(x0, model.spec.block_frames, cfg.sigma_shift, gen)
    return x0, xt, sigma, prompts


def losses(model: WorldModel, cfg: TrainConfig, x0, xt, sigma, prompts, pos, mask):
    """Per-sample-per-block weighted x0 errors (B, blocks) of one teacher-forced pass."""
    spec = model.spec
    tpb = spec.tokens_per_block
    cond = model.encode_prompt(prompts)
    t_clean = torch.zeros(cfg.batch, x0.shape[2] * spec.tokens_per_frame)
    t_noisy = (1000 * sigma).repeat_interleave(tpb, 1)
    timestep = torch.cat([t_clean, t_noisy], 1)
    out = model.forward_tokens(torch.cat([x0, xt], 2), timestep, pos, cond,
                               plan=MaskedPlan(mask))
    pred = out[:, :, x0.shape[2] :]  # x0 prediction of the noisy copy
    err = (pred - x0).pow(2).mean(1)  # (B, F, h, w)
    err = err.unflatten(1, (-1, spec.block_frames)).mean((2, 3, 4))  # (B, blocks)
    return err, loss_weights(sigma, cfg.min_sigma_weight)


def context_gap(model: WorldModel, cfg: TrainConfig, pos, mask) -> float:
    """Loss at full noise of blocks with clean history over the first block's (below 1: used)."""
    gen = torch.Generator().manual_seed(99)
    x0, _, _, prompts = make_batch(cfg, model, 10**7, gen)
    sigma = torch.full((cfg.batch, x0.shape[2] // model.spec.block_frames), 0.999)
    xt = 0.001 * x0 + 0.999 * torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        err, _ = losses(model, cfg, x0, xt, sigma, prompts, pos, mask)
    return (err[:, 1:].mean() / err[:, 0].mean()).item()


class WorldHooks(Hooks):
    """Hooks of a recipe that trains a world model (key ``model``): the model and its EMA copy
    are attached (``WorldModel.attach``) during the steps."""

    def attached(self, run: Trainer) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        for module in (run.modules["model"], run.ema.copies["model"]):
            stack.enter_context(module.attach())
        return stack


class WorldModelHooks(WorldHooks):
    """``rollbench train world-model``: teacher forcing from a freshly initialised world."""

    name = "world-model"
    log_last = True  # rows carry the logged step's loss (the shipped card's history)

    def build(self) -> dict[str, torch.nn.Module]:
        cfg = self.cfg
        if cfg.export_from not in ("ema", "model"):
            raise ValueError(f"export_from={cfg.export_from!r}: allowed ['ema', 'model']")
        mean, std = norm_stats()
        self.model = build_world(cfg.model, PixelVAE(cfg.model.vae_factor, mean, std),
                                 seed=cfg.seed)
        self.pos, self.mask = teacher_forcing_layout(self.model, cfg.clip_frames)
        return {"model": self.model}

    def loss(self, run: Trainer, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0, xt, sigma, prompts = make_batch(self.cfg, self.model, step, run.gen)
        err, weight = losses(self.model, self.cfg, x0, xt, sigma, prompts, self.pos, self.mask)
        loss = (err * weight).mean()
        return loss, {"loss": loss.item()}

    def evaluations(self, run: Trainer) -> list[Eval]:
        ema = run.weights("model")
        return [Eval(4 * self.cfg.log_every, lambda step: {
            "context_gap": context_gap(ema, self.cfg, self.pos, self.mask)})]

    def export(self, run: Trainer) -> Path:
        cfg = self.cfg
        out = Path(cfg.export) if cfg.export else run.out / "final" / "world-model.safetensors"
        final = run.weights("model", ema=cfg.export_from == "ema")
        card = {**base_card(self.name, cfg, run.history), "frame_size": FRAME_SIZE,
                "latent": "pixel_unshuffle(2), per-channel normalised (exactly invertible)",
                "exported": cfg.export_from, "eval_1x": quality(final, cfg)}
        run.emit({"eval_1x": card["eval_1x"]})
        return save_world(final, cfg.model, out, card)


def train(cfg: TrainConfig, log=print) -> Path:
    """Train (or resume) the world model; returns the exported weights' path."""
    return Trainer(WorldModelHooks(cfg), log).fit()


def quality(model: WorldModel, cfg: TrainConfig, seeds: int = 8) -> dict[str, float]:
    """Analyser scores at 1x (full history, held-out prompts) beside real clips'."""
    from toolkit.registry import STRATEGIES
    from toolkit.worlds.sprites.evaluate import evaluate

    model.eval()
    with torch.no_grad():
        res = evaluate(model, STRATEGIES.get("full")(), list(range(seeds)), cfg.clip_frames)
    return {**{f"generated_{k}": v for k, v in res["generated"].items()},
            **{f"real_{k}": v for k, v in res["real"].items()}, "seeds": seeds}


__getattr__ = moved_names(__name__)  # names that moved to the trainer (toolkit.compat)
