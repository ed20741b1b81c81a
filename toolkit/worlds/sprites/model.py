"""The built-in world model: a fixed invertible latent and a tiny causal Wan.

Latent: ``pixel_unshuffle(2)`` of the 16x16 RGB frames (12 channels on an 8x8 grid), normalised
per channel. It is exactly invertible, so every analyser reads a decoded frame as well as the
original: the fallback the design allows in place of a learned VAE (see the card).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from toolkit.core.model import WanCausalModel
from toolkit.core.sampling import SamplerConfig
from toolkit.core.schedule import PromptSchedule
from toolkit.core.spec import ModelSpec
from toolkit.models.weights import find_weights, missing_weights
from toolkit.models.zoo import TokenPromptEncoder
from toolkit.worlds.memory.scenes import (
    SCENE_VOCAB_SIZE,
    Shot,
    batch_shots,
    instances_of,
    schedule_for_seed,
)
from toolkit.worlds.sprites import WEIGHTS_DIR
from toolkit.worlds.sprites.sim import (
    FRAME_SIZE,
    PROMPT_TOKENS,
    VOCAB_SIZE,
    Prompt,
    prompt_for_seed,
)

WORLDS = ("sprites", "scenes")


class PixelVAE(torch.nn.Module):
    """Invertible latent: pixel_unshuffle(factor), then per-channel normalisation.

    ``encode`` takes frames (B, F, 3, H, W) in [0, 1] and returns latents (B, C, F, h, w);
    ``decode`` is its exact inverse (clamped to [0, 1]).
    """

    def __init__(
        self, factor: int = 2, mean: list[float] | None = None, std: list[float] | None = None
    ) -> None:
        super().__init__()
        self.factor = factor
        channels = 3 * factor * factor
        self.register_buffer("mean", torch.tensor(mean or [0.0] * channels))
        self.register_buffer("std", torch.tensor(std or [1.0] * channels))

    @property
    def channels(self) -> int:
        return self.mean.numel()

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        b, f = frames.shape[:2]
        z = F.pixel_unshuffle(frames.flatten(0, 1).float(), self.factor)  # (B*F, C, h, w)
        z = (z - self.mean[:, None, None]) / self.std[:, None, None]
        return z.unflatten(0, (b, f)).transpose(1, 2).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float().transpose(1, 2)  # (B, F, C, h, w)
        b, f = z.shape[:2]
        z = z.flatten(0, 1) * self.std[:, None, None] + self.mean[:, None, None]
        return F.pixel_shuffle(z, self.factor).unflatten(0, (b, f)).clamp(0, 1)


@dataclass
class WorldConfig:
    """Architecture of the world model (the card records it; loading checks it)."""

    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 32
    ffn_dim: int = 512
    text_dim: int = 32
    freq_dim: int = 64
    block_frames: int = 4
    train_frames: int = 20
    vae_factor: int = 2
    sampler_steps: int = 8
    sampler_shift: float = 3.0
    sampler_mode: str = "euler"
    world: str = "sprites"  # sprites: one prompted sprite; scenes: the memory world

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"world={self.world!r}: allowed {list(WORLDS)}")

    @property
    def vocab(self) -> int:
        return VOCAB_SIZE if self.world == "sprites" else SCENE_VOCAB_SIZE

    def spec(self) -> ModelSpec:
        grid = FRAME_SIZE // self.vae_factor
        return ModelSpec(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            latent_channels=3 * self.vae_factor**2,
            latent_height=grid,
            latent_width=grid,
            block_frames=self.block_frames,
            train_frames=self.train_frames,
        )


class WorldModel(WanCausalModel):
    """The sprite world's causal Wan: prompts are ``toolkit.worlds.sprites.Prompt`` records (or
    their text)."""

    world = "sprites"  # its plug-in (``toolkit.plugins.WORLDS``): analysers, measures, report

    def encode_prompt(self, prompts: list[Any]) -> torch.Tensor:
        """Prompt records, or their text (parsed with ``Prompt.from_text``)."""
        return super().encode_prompt([Prompt.from_text(p) if isinstance(p, str) else p
                                      for p in prompts])

    def default_prompt(self, seed: int) -> Any:
        """The prompt of a run seed: drawn from the held-out split."""
        return prompt_for_seed(seed, "heldout")


class MemoryWorldModel(WanCausalModel):
    """The memory world's causal Wan: prompts are ``toolkit.worlds.memory.scenes.Shot`` records (or
    their text); a run seed's default prompt is a schedule of shots (``schedule_for_seed``)."""

    #: blocks of a default schedule (longer than any rollout the toolkit runs: 1,024 frames)
    SCHEDULE_BLOCKS = 256
    world = "memory"

    def encode_prompt(self, prompts: list[Any]) -> torch.Tensor:
        return super().encode_prompt([Shot.from_text(p) if isinstance(p, str) else p
                                      for p in prompts])

    def needed_blocks(self, schedules: tuple[PromptSchedule, ...], index: int) -> list[int]:
        """Earlier blocks that showed the sprite block ``index`` shows (the world's truth,
        for reference selections such as PackForcing's ``selection=truth``); one schedule for
        the whole batch."""
        inst = instances_of(batch_shots(schedules, index, self.spec.block_frames,
                                        "selection by the memory world's truth"))
        return [b for b in range(index) if inst[b] == inst[index]]

    def default_prompt(self, seed: int) -> PromptSchedule:
        """The held-out schedule of a run seed, one shot per block."""
        bf = self.spec.block_frames
        sched = schedule_for_seed(seed, self.SCHEDULE_BLOCKS, bf)
        return PromptSchedule(tuple((b * bf, shot) for b, shot in enumerate(sched.shots)))


def build_world(cfg: WorldConfig, vae: PixelVAE | None = None,
                seed: int = 0) -> WorldModel | MemoryWorldModel:
    """A freshly initialised world model (training starts here)."""
    spec = cfg.spec()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=spec.patch,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        rope_max_seq_len=1024,
    )
    encoder = TokenPromptEncoder(vocab=cfg.vocab, length=PROMPT_TOKENS, dim=cfg.text_dim)
    sampler = SamplerConfig(steps=cfg.sampler_steps, shift=cfg.sampler_shift, mode=cfg.sampler_mode)
    cls = WorldModel if cfg.world == "sprites" else MemoryWorldModel
    model = cls(
        transformer,
        spec,
        encoder,
        vae=vae or PixelVAE(cfg.vae_factor),
        prediction="x0",
        sampler=sampler,
    )
    model.world_config = cfg
    return model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_world(model: WorldModel, cfg: WorldConfig, path: Path, card: dict[str, Any]) -> Path:
    """Write weights (safetensors) and a JSON card with config and sha256 beside them."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    card = {**card, "config": asdict(cfg), "sha256": sha256(path), "file": path.name}
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return path


def _recipe_of(name: str) -> str:
    """The command that makes a shipped world file (for the error when it is missing)."""
    if name.startswith("world-memory-pf-"):
        variant = name.removeprefix("world-memory-pf-").split(".")[0]
        return f"rollbench train packforcing init=world-memory.safetensors compressor={variant}"
    if name.startswith("world-memory"):
        return "rollbench train world-memory"
    if name.startswith("world-model-pf"):
        return "rollbench train packforcing"
    return "rollbench train world-model"


def load_world(
    path: str | Path | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    device: str = "cpu",
) -> WorldModel:
    """Load shipped (or given) world weights, checking the card's hash and config."""
    from safetensors.torch import load_file

    path = find_weights(path) if path else WEIGHTS_DIR / "world-model.safetensors"
    card_path = path.with_suffix(".json")
    if not path.exists() or not card_path.exists():
        raise FileNotFoundError(missing_weights(
            path, "world weights", f"they need their card {card_path.name} beside them; "
            f"re-create both with `{_recipe_of(path.name)}`"))
    card = json.loads(card_path.read_text())
    digest = sha256(path)
    if digest != card["sha256"]:
        raise ValueError(f"{path}: sha256 {digest} does not match its card ({card['sha256']})")
    cfg = WorldConfig(**card["config"])
    if steps is not None:
        cfg.sampler_steps = steps
    if sampler is not None:
        cfg.sampler_mode = sampler
    model = build_world(cfg)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the world config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.card = card
    failed = [name for key in ("gates", "gates_24x") for name, ok in
              (card.get(key) or {}).get("checks", {}).items() if not ok]
    if failed:  # shipped as a candidate: say so at every load
        warnings.warn(f"{path.name} fails its gates ({'; '.join(failed)}); see {card_path.name}",
                      stacklevel=2)
    return model.eval().to(device)
