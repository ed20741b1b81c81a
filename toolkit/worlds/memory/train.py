"""Training recipe of the memory-world model (``rollbench train world-memory``).

Teacher forcing exactly as the world recipe (``toolkit.worlds.sprites.train``): one pass over
[clean clip | noisy clip], one noise level per block, every block attending the clean blocks
before it. What is new is the data and the conditioning: clips of the memory world
(``toolkit.worlds.memory.scenes``), each block under its own shot's prompt (cross-attention per
block), most of them ending in a cut back to a scene whose sprite was shown only in the clip's
middle blocks. The loop is the one trainer's (``toolkit.models.trainer``): this module writes
its hooks.

It starts from the shipped world model (same architecture; the prompt vocabulary grows by two
backgrounds, whose embeddings start as the mean of the world's two). Seeded and resumable: a
checkpoint every ``ckpt_every`` steps under ``out``, resumed when present.

The context-use diagnostic (``context_use``) is the gate of the memory model: on a fixed batch
of clips ending in a mid-only return, at full noise, the x0 error of the returning block with the
needed blocks hidden from it over the error with them in view, and the sprite colour read back
from the one-step prediction in both cases.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.core.attention import MaskedPlan
from toolkit.models import trainer
from toolkit.models.trainer import RUN_ONLY, Eval, Trainer, TrainSettings, base_card
from toolkit.worlds.memory.scenes import SCENE_BACKGROUNDS, ClipMix, Shot, sample_clips
from toolkit.worlds.sprites.model import (
    MemoryWorldModel,
    WorldConfig,
    build_world,
    load_world,
    save_world,
)
from toolkit.worlds.sprites.sim import PALETTE
from toolkit.worlds.sprites.train import (
    WorldHooks,
    loss_weights,
    noise_blocks,
    teacher_forcing_layout,
)

MEMORY_FILE = "world-memory.safetensors"


@dataclass
class MemoryTrainConfig(TrainSettings):
    """Hyperparameters of ``rollbench train world-memory`` (ablations/train/world-memory.yaml
    holds only what differs from these defaults).

    Attributes:
        init: world weights to start from ("": the shipped sprite world; memory-world weights
            are trained further as they are).
        steps: the shipped world-memory ran to 5000 (run D), resumed as run E to 6500
            (docs/memory-world.md).
        min_sigma_weight: loss weight floor of low-noise blocks (0.1 in pilots A-C; D, shipped,
            0.5).
        memory_share: share of clips whose last block is a mid-only return (the rest are
            plain draws of the schedule process).
        return_weight: loss weight of returning blocks (cuts back to a scene) over the others.
        eval_every: steps between context-use diagnostics (0: only at the end).
        packed_share: share of layout-matched packed contexts (``toolkit.worlds.memory.packed``:
            sink + chosen mid blocks + recent, the needed block at any mid slot); 0 trains on
            contiguous clips only (the first recipe).
        packed_two_needed, packed_window: ``PackedMix.two_needed`` / ``window_share``.
        layout_every: steps between validation layout recalls (oracle / wrong / swap / mirror
            on validation schedules, the EMA's samples; 0: never); each is saved under
            ``<out>/evals/`` so a checkpoint can be chosen on validation.
        layout_clips: validation contexts per layout.
    """

    init: str = ""
    steps: int = 6500
    batch: int = 16
    clip_frames: int = 20
    memory_share: float = 0.9
    return_weight: float = 5.0
    ema: float = 0.998
    min_sigma_weight: float = 0.5
    sigma_shift: float = 2.0
    eval_every: int = 250
    out: str = "runs/train/world-memory"
    export: str = ""  # directory of the final weights; empty: <out>/final
    export_from: str = "ema"  # ema | model
    packed_share: float = 0.0
    packed_two_needed: float = 0.3
    packed_window: float = 0.15
    layout_every: int = 0
    layout_clips: int = 48


def memory_model_from(world_path: str | Path | None, device: str = "cpu") -> MemoryWorldModel:
    """A memory-world model initialised from sprite-world weights (vocabulary mapped by name),
    or from memory-world weights as they are (to train a shipped memory model further)."""
    world = load_world(world_path, device=device)
    if world.card["config"].get("world") == "scenes":
        world.card = {"init": {"file": str(world_path), "sha256": world.card.get("sha256"),
                               "steps": world.card.get("steps")}}
        return world
    # sampled as Self-Forcing samples (x0 predicted, then noised afresh): on 128 validation gate
    # clips it brings back the shown colour in 0.76 of returns against 0.65 with the Euler step
    cfg = WorldConfig(**{**world.card["config"], "world": "scenes", "sampler_mode": "renoise"})
    model = build_world(cfg, copy.deepcopy(world.vae)).to(device)
    state = world.state_dict()
    old = state.pop("prompt_encoder.embed.weight")  # (20, text_dim): the world's tokens
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing != ["prompt_encoder.embed.weight"]:
        raise ValueError(f"cannot start a memory model from {world_path}: missing {missing}, "
                         f"unexpected {unexpected}")
    with torch.no_grad():
        emb = model.prompt_encoder.embed.weight
        # world layout: PAD, 3 counts, 2 backgrounds, 2 speeds, 12 sprites; scenes: 4 backgrounds
        emb[:4] = old[:4]
        emb[4:6] = old[4:6]
        emb[6:8] = old[4:6].mean(0, keepdim=True)
        emb[8:] = old[6:]
    model.card = {"init": {"file": str(world_path or "world-model.safetensors"),
                           "sha256": world.card.get("sha256")}}
    return model


def encode_shots(model: MemoryWorldModel, shots: list[list[Shot]]) -> torch.Tensor:
    """Per-block conditioning (B, blocks, L, C) of clips given as per-block shots."""
    b, nb = len(shots), len(shots[0])
    flat = model.encode_prompt([s for clip in shots for s in clip])
    return flat.unflatten(0, (b, nb))


def packed_batch(cfg: MemoryTrainConfig, model: MemoryWorldModel, step: int,
                 gen: torch.Generator):
    """Clean latents, noisy latents, per-block sigmas, shots and per-block loss weights of one
    step mixing packed contexts and plain clips (``toolkit.worlds.memory.packed``)."""
    from toolkit.worlds.memory.packed import PackedMix, sample_packed

    mix = PackedMix(share=cfg.packed_share, two_needed=cfg.packed_two_needed,
                    window_share=cfg.packed_window)
    videos, shots, weights = sample_packed(cfg.batch, cfg.clip_frames, model.spec.block_frames,
                                           cfg.seed * 1_000_003 + step, "train", mix,
                                           ClipMix(memory_share=cfg.memory_share),
                                           cfg.return_weight)
    x0 = model.vae.encode(videos.to(model.device))
    xt, sigma = noise_blocks(x0, model.spec.block_frames, cfg.sigma_shift, gen)
    return x0, xt, sigma, shots, weights


def make_batch(cfg: MemoryTrainConfig, model: MemoryWorldModel, step: int,
               gen: torch.Generator, mix: ClipMix | None = None, split: str = "train",
               batch: int | None = None):
    """Clean latents, noisy latents, per-block sigmas, shots and schedules of one step."""
    mix = mix or ClipMix(memory_share=cfg.memory_share)
    videos, shots, scheds = sample_clips(batch or cfg.batch, cfg.clip_frames,
                                         model.spec.block_frames,
                                         cfg.seed * 1_000_003 + step, split, mix)
    x0 = model.vae.encode(videos.to(model.device))
    xt, sigma = noise_blocks(x0, model.spec.block_frames, cfg.sigma_shift, gen)
    return x0, xt, sigma, shots, scheds


def predict(model: MemoryWorldModel, x0, xt, sigma, cond, pos, mask) -> torch.Tensor:
    """x0 predictions of the noisy clip in one teacher-forced pass (per-block prompts)."""
    spec = model.spec
    t_clean = torch.zeros(x0.shape[0], x0.shape[2] * spec.tokens_per_frame, device=x0.device)
    t_noisy = (1000 * sigma).repeat_interleave(spec.tokens_per_block, 1)
    segments = torch.cat([cond, cond], 1)  # clean blocks, then noisy blocks
    out = model.forward_tokens(torch.cat([x0, xt], 2), torch.cat([t_clean, t_noisy], 1), pos,
                               segments, plan=MaskedPlan(mask.to(x0.device)))
    return out[:, :, x0.shape[2]:].float()


def block_errors(pred: torch.Tensor, x0: torch.Tensor, block_frames: int) -> torch.Tensor:
    """Per-sample-per-block x0 errors (B, blocks)."""
    err = (pred - x0).pow(2).mean(1)
    return err.unflatten(1, (-1, block_frames)).mean((2, 3, 4))


def return_weights(scheds, blocks: int, weight: float) -> torch.Tensor:
    """(B, blocks) loss weights: ``weight`` on blocks that cut back to a scene, else 1."""
    from toolkit.worlds.memory.scenes import return_moments

    w = torch.ones(len(scheds), blocks)
    for i, s in enumerate(scheds):
        for m in return_moments(s):
            w[i, m.block] = weight
    return w


def hide_mask(mask: torch.Tensor, scheds, spec, frames: int) -> torch.Tensor:
    """Per-clip masks (B, 1, 2N, 2N): the last block's noisy queries no longer see the clean
    blocks that showed its sprite (the context-use ablation)."""
    from toolkit.worlds.memory.scenes import return_moments

    tpb, n = spec.tokens_per_block, frames * spec.tokens_per_frame
    last = frames // spec.block_frames - 1
    out = mask.repeat(len(scheds), 1, 1, 1)
    for i, s in enumerate(scheds):
        moment = next(m for m in return_moments(s) if m.block == last)
        for b in moment.shown:
            out[i, 0, n + last * tpb:n + (last + 1) * tpb, b * tpb:(b + 1) * tpb] = False
    return out


def colour_hits(frames: torch.Tensor, instances) -> list[bool]:
    """Whether each frame (B, 3, H, W) shows its sprite instance's colour: the nearest palette
    colour to the mean of the pixels that are not the scene's background (a one-step
    prediction at full noise is blurred, so the analysers' strict reading would miss sprites
    that are there)."""
    palette = torch.tensor(list(PALETTE.values()))
    hits = []
    for frame, inst in zip(frames, instances, strict=True):
        px = frame.flatten(1).T.cpu()  # (H*W, 3)
        fg = px[(px - torch.tensor(SCENE_BACKGROUNDS[inst.scene])).norm(dim=1) > 0.15]
        if len(fg) == 0:
            hits.append(False)
            continue
        near = (fg.mean(0) - palette).norm(dim=1).argmin().item()
        hits.append(list(PALETTE)[near] == inst.sprite.colour)
    return hits


def colour_recall(model: MemoryWorldModel, pred: torch.Tensor, scheds, block_frames: int) -> float:
    """Share of clips whose last block's predicted first frame shows the sprite's colour
    (``colour_hits``)."""
    last = pred.shape[2] // block_frames - 1
    frames = model.vae.decode(pred[:, :, last * block_frames][:, :, None])[:, 0]  # (B, 3, H, W)
    return float(np.mean(colour_hits(frames, [s.instances[s.instance[last]] for s in scheds])))


def context_use(model: MemoryWorldModel, cfg: MemoryTrainConfig, pos, mask,
                clips: int = 32) -> dict[str, float]:
    """The gate's diagnostic on a fixed validation batch of mid-only returns (full noise)."""
    gen = torch.Generator().manual_seed(99)
    mix = ClipMix(memory_share=1.0)
    x0, _, _, shots, scheds = make_batch(cfg, model, 10**7, gen, mix, "val", clips)
    nb = x0.shape[2] // model.spec.block_frames
    sigma = torch.full((clips, nb), 0.999, device=x0.device)
    xt = 0.001 * x0 + 0.999 * torch.randn(x0.shape, generator=gen).to(x0.device)
    with torch.no_grad():
        cond = encode_shots(model, shots)
        seen = predict(model, x0, xt, sigma, cond, pos, mask)
        hidden = predict(model, x0, xt, sigma, cond, pos, hide_mask(mask, scheds, model.spec,
                                                                    cfg.clip_frames))
    bf = model.spec.block_frames
    e_seen = block_errors(seen, x0, bf)[:, -1].mean().item()
    e_hidden = block_errors(hidden, x0, bf)[:, -1].mean().item()
    return {"use_ratio": e_hidden / e_seen, "err_seen": e_seen, "err_hidden": e_hidden,
            "colour_seen": colour_recall(model, seen, scheds, bf),
            "colour_hidden": colour_recall(model, hidden, scheds, bf)}


class MemoryHooks(WorldHooks):
    """``rollbench train world-memory``: the world recipe's teacher forcing on memory clips."""

    name = "world-memory"
    run_only = (*RUN_ONLY, "layout_every", "layout_clips")

    def build(self) -> dict[str, torch.nn.Module]:
        cfg = self.cfg
        if cfg.export_from not in ("ema", "model"):
            raise ValueError(f"export_from={cfg.export_from!r}: allowed ['ema', 'model']")
        self.model = memory_model_from(cfg.init or None, cfg.device).train()
        self.pos, self.mask = teacher_forcing_layout(self.model, cfg.clip_frames)
        return {"model": self.model}

    def loss(self, run: Trainer, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, model = self.cfg, self.model
        if cfg.packed_share > 0:
            x0, xt, sigma, shots, answer = packed_batch(cfg, model, step, run.gen)
        else:
            x0, xt, sigma, shots, scheds = make_batch(cfg, model, step, run.gen)
            answer = return_weights(scheds, sigma.shape[1], cfg.return_weight)
        pred = predict(model, x0, xt, sigma, encode_shots(model, shots), self.pos, self.mask)
        err = block_errors(pred, x0, model.spec.block_frames)
        weight = loss_weights(sigma, cfg.min_sigma_weight) * answer
        loss = (err * weight).mean()
        return loss, {"loss": loss.item()}

    def evaluations(self, run: Trainer) -> list[Eval]:
        cfg, ema = self.cfg, run.weights("model")

        def gate(step: int) -> dict[str, float]:  # the EMA's and the raw weights' context use
            row = {f"ema_{k}": v for k, v in context_use(ema, cfg, self.pos, self.mask).items()}
            row.update(context_use(self.model, cfg, self.pos, self.mask))
            self.model.train()
            return row

        evals = [Eval(cfg.eval_every, gate)]
        if cfg.layout_every:
            evals.append(Eval(cfg.layout_every,
                              lambda step: validate_layouts(cfg, ema, step, run.out)))
        return evals

    def export(self, run: Trainer) -> Path:
        final = run.weights("model", ema=self.cfg.export_from == "ema")
        return export(self.cfg, final.eval(), run.history, self.model.card["init"])


def train_memory(cfg: MemoryTrainConfig, log=print) -> Path:
    """Train (or resume) the memory-world model; returns the exported weights' path."""
    return Trainer(MemoryHooks(cfg), log).fit()


def validate_layouts(cfg: MemoryTrainConfig, ema: MemoryWorldModel, step: int,
                     out: Path) -> dict[str, float]:
    """Layout recall of the EMA weights on validation schedules; the weights are kept under
    ``<out>/evals/step-N.pt`` so the checkpoint is chosen on validation, not on held-out."""
    from toolkit.worlds.memory.packed import layout_recall

    was = ema.training
    scores = layout_recall(ema.eval(), n=cfg.layout_clips, split="val", seed=0)
    ema.train(was)
    (out / "evals").mkdir(exist_ok=True)
    torch.save({"ema": ema.state_dict(), "step": step, "val": scores},
               out / "evals" / f"step-{step}.pt")
    return {f"val_{k}": v for k, v in scores.items()}


def export_checkpoint(out: str | Path, folder: str | Path) -> Path:
    """Export the weights of ``<out>/checkpoint.pt`` (e.g. of a run still training) to
    ``folder``; the card says at which step, and ``provisional`` when the run is unfinished."""
    state = torch.load(Path(out) / "checkpoint.pt", weights_only=False, map_location="cpu")
    cfg = MemoryTrainConfig(**{**state["config"], "export": str(folder)})
    model = memory_model_from(cfg.init or None)
    model.load_state_dict(state["ema" if cfg.export_from == "ema" else "model"])
    path = export(cfg, model.eval(), state["history"], model.card["init"])
    card = json.loads(path.with_suffix(".json").read_text())
    card.update(steps_done=state["step"], provisional=state["step"] < cfg.steps)
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return path


def export_eval(out: str | Path, step: int, folder: str | Path, name: str = MEMORY_FILE,
                note: str = "") -> Path:
    """Export the EMA weights a run saved at a validation point (``<out>/evals/step-N.pt``)
    as ``folder/name`` with its card: the checkpoint chosen on validation schedules."""
    state = torch.load(Path(out) / "checkpoint.pt", weights_only=False, map_location="cpu")
    saved = torch.load(Path(out) / "evals" / f"step-{step}.pt", weights_only=False,
                       map_location="cpu")
    cfg = MemoryTrainConfig(**{**state["config"], "export": str(folder)})
    model = memory_model_from(cfg.init or None)
    model.load_state_dict(saved["ema"])
    history = [row for row in state["history"] if row["step"] <= step]
    path = export(cfg, model.eval(), history, model.card["init"], name)
    card = json.loads(path.with_suffix(".json").read_text())
    card.update(steps_done=step, chosen_on="validation layouts (val split) and 24x validation "
                "schedules", validation=saved["val"], notes=note,
                validation_curve=[{k: v for k, v in row.items() if k == "step" or
                                   k.startswith("val_")} for row in state["history"]
                                  if "val_oracle" in row])
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return path


def command(cfg: MemoryTrainConfig) -> str:
    """The ``rollbench train world-memory`` line re-creating this run."""
    return trainer.command("world-memory", cfg)


def export(cfg: MemoryTrainConfig, model: MemoryWorldModel, history: list[dict[str, Any]],
           init: dict[str, Any], name: str = MEMORY_FILE) -> Path:
    """Write world-memory.safetensors and its card (``recipe`` adds the gates to it)."""
    if cfg.export_from not in ("ema", "model"):
        raise ValueError(f"export_from={cfg.export_from!r}: allowed ['ema', 'model']")
    folder = Path(cfg.export) if cfg.export else Path(cfg.out) / "final"
    card = {**base_card("world-memory", cfg, history, keep=30), "init": init,
            "exported": cfg.export_from,
            "clip_mix": asdict(ClipMix(memory_share=cfg.memory_share))}
    return save_world(model, model.world_config, folder / name, card)

