"""The real Wan2.1-T2V-1.3B (Self-Forcing's base) as a rollbench model.

``wan_t2v`` builds a ``WanCausalModel`` (its schema: ``WanT2VConfig``) from a diffusers-format
directory (transformer/, vae/, text_encoder/, tokenizer/), optionally overwriting the
transformer with a causal checkpoint in the original Wan / Self-Forcing layout, or
(``weights="random"``) the real-size architecture with random weights and random prompt
embeddings for accounting without any download.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from toolkit.core.model import WanCausalModel
from toolkit.core.sampling import SamplerConfig
from toolkit.core.spec import _DTYPES, ModelSpec
from toolkit.errors import ConfigError
from toolkit.models.real.checkpoint import assign, load_checkpoint, read_folder
from toolkit.models.real.text import RandomPromptEncoder, UMT5PromptEncoder
from toolkit.models.real.vae import StreamingWanVAE

SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")
WEIGHTS = ("pretrained", "random")
SELF_FORCING_TIMESTEPS = (1000.0, 750.0, 500.0, 250.0)  # denoising_step_list, warped by shift
# diffusers' config of Wan-AI/Wan2.1-T2V-1.3B-Diffusers/transformer (1.42e9 parameters)
WAN_T2V_1_3B: dict[str, Any] = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128,
    "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960,
    "num_layers": 30, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
PROMPTS = (  # default prompts of run seeds (cycled), in the style of Self-Forcing's prompt set
    "A red fox trots through fresh snow in a pine forest at dawn, soft golden light, "
    "cinematic tracking shot.",
    "A busy city street at night in the rain, neon signs reflecting on wet asphalt, people "
    "with umbrellas walking past.",
    "Waves roll onto a rocky coastline under a cloudy sky, seagulls gliding above the surf.",
    "A chef slices vegetables on a wooden board in a sunlit kitchen, close-up, shallow depth "
    "of field.",
)


class WanT2VModel(WanCausalModel):
    """``WanCausalModel`` for diffusers-loaded Wan weights (real prompts, streaming VAE)."""

    def default_prompt(self, seed: int) -> str:
        """The prompt of a run seed (a fixed list, cycled)."""
        return PROMPTS[seed % len(PROMPTS)]


def cast_like_diffusers(transformer: WanTransformer3DModel, dtype: torch.dtype) -> None:
    """Cast parameters to ``dtype`` except those of the modules diffusers keeps in fp32 when
    loading with ``torch_dtype`` (``_keep_in_fp32_modules``, matched per name component)."""
    keep = set(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    for name, p in transformer.named_parameters():
        p.data = p.data.to(torch.float32 if keep & set(name.split(".")) else dtype)


def spec_for(transformer: WanTransformer3DModel, height: int, width: int, block_frames: int,
             dtype: str, spatial: int = 8, temporal: int = 4, fps: float = 16.0,
             train_frames: int = 21) -> ModelSpec:
    """The ``ModelSpec`` of a Wan transformer at a video resolution (pixels)."""
    cfg = transformer.config
    step = spatial * cfg.patch_size[1]
    if height % step or width % step:
        raise ConfigError(f"model.height={height} / model.width={width}: both must be multiples "
                          f"of {step} (VAE {spatial}x times patch {cfg.patch_size[1]})")
    return ModelSpec(num_layers=cfg.num_layers, num_heads=cfg.num_attention_heads,
                     head_dim=cfg.attention_head_dim, latent_channels=cfg.in_channels,
                     latent_height=height // spatial, latent_width=width // spatial,
                     patch=tuple(cfg.patch_size), block_frames=block_frames, dtype=dtype,
                     train_frames=train_frames, latent_fps=fps / temporal)


def check_dir(path: str | Path, need: Sequence[str] = SUBFOLDERS) -> Path:
    """The model directory, or an error naming it and the subfolders it lacks."""
    root = Path(path).expanduser()
    expected = ", ".join(f"{s}/" for s in SUBFOLDERS)
    if not root.is_dir():
        raise ConfigError(f"model.path={root}: no such directory; expected a diffusers-format "
                          f"Wan2.1-T2V-1.3B directory with {expected} (e.g. `huggingface-cli "
                          f"download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir {root}`)")
    missing = [s for s in need if not (root / s).is_dir()]
    if missing:
        hint = (" It looks like the original Wan layout (Wan2.1_VAE.pth): download the "
                "diffusers one, Wan-AI/Wan2.1-T2V-1.3B-Diffusers; a causal checkpoint goes to "
                "model.checkpoint." if (root / "Wan2.1_VAE.pth").exists() else "")
        raise ConfigError(f"model.path={root}: missing subfolder(s) "
                          f"{', '.join(s + '/' for s in missing)}; expected {expected}.{hint}")
    return root


def _plain(value: Any) -> Any:
    """Hydra containers (DictConfig / ListConfig) to plain Python."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _transformer(path: Path | None, weights: str, checkpoint: str | None, key: str | None,
                 config: Mapping[str, Any] | None, device: torch.device,
                 dtype: torch.dtype) -> WanTransformer3DModel:
    if path is not None:
        base = dict(WanTransformer3DModel.load_config(path / "transformer",
                                                      local_files_only=True))
    else:
        base = dict(WAN_T2V_1_3B)
    base.update(config or {})
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    with torch.device(device):  # initialise where it runs: no 5.7 GB fp32 copy on the CPU
        transformer = WanTransformer3DModel.from_config(base)
    cast_like_diffusers(transformer, dtype)  # what from_pretrained(torch_dtype=dtype) does
    if checkpoint is not None:
        load_checkpoint(transformer, checkpoint, key)
    elif weights == "pretrained":
        assign(transformer, *read_folder(path / "transformer"))
    return transformer


@dataclass
class WanT2VConfig:
    """The real model's schema: Wan2.1-T2V (1.3B by default) sampled block by block,
    Self-Forcing style. The Hydra model node (``ablations/model/wan-t2v-1.3b-weights.yaml``)
    names these fields; values are checked on construction (``ConfigError`` naming the field).

    Attributes:
        path: diffusers-format directory with transformer/, vae/, text_encoder/, tokenizer/.
            None with ``weights="random"``: the built-in 1.3B config (``WAN_T2V_1_3B``).
        checkpoint: a causal checkpoint (``.pt`` / ``.safetensors``) in the original Wan /
            Self-Forcing layout (or diffusers naming) replacing the transformer's weights.
        weights: ``pretrained`` (from ``path`` / ``checkpoint``) or ``random`` (seeded random
            transformer, random prompt embeddings, no VAE: sizes and timings only).
        device: ``cpu`` or ``cuda[:i]``.
        dtype: transformer / KV-cache dtype (``bfloat16`` on GPUs).
        block_frames: latent frames per block (Self-Forcing: 3; PackForcing: 4).
        steps: denoising steps per block.
        timesteps: explicit timesteps before the shift (Self-Forcing's [1000, 750, 500, 250]);
            None: ``steps`` evenly spaced by the scheduler.
        shift: flow-matching timestep shift (5.0).
        sampler: ``renoise`` (Self-Forcing's predict-x0-then-renoise) or ``euler``.
        height: video height in pixels (480).
        width: video width in pixels (832).
        checkpoint_key: wrapper entry of the checkpoint (``generator_ema``, ``generator``);
            None takes ``generator_ema``, then ``generator``, else the top level.
        text_length: prompt tokens (Wan: 512).
        offload_text_encoder: keep UMT5 on the CPU except while encoding a new prompt.
        vae_dtype: dtype of the VAE (diffusers' Wan examples decode in float32).
        train_frames: latent frames of the training clips (Self-Forcing: 21 = 81 frames).
        fps: video frames per second (16); latent fps = fps / the VAE's temporal factor.
        config: transformer-config overrides (sizes other than 1.3B, e.g. tiny test models).
        seed: seed of the random weights.
    """

    path: str | None = None
    checkpoint: str | None = None
    weights: str = "pretrained"
    device: str = "cpu"
    dtype: str = "bfloat16"
    block_frames: int = 3
    steps: int = 4
    timesteps: Sequence[float] | None = SELF_FORCING_TIMESTEPS
    shift: float = 5.0
    sampler: str = "renoise"
    height: int = 480
    width: int = 832
    checkpoint_key: str | None = None
    text_length: int = 512
    offload_text_encoder: bool = True
    vae_dtype: str = "float32"
    train_frames: int = 21
    fps: float = 16.0
    config: Mapping[str, Any] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ConfigError(f"model.weights={self.weights!r}: allowed {list(WEIGHTS)}")
        for name in ("dtype", "vae_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ConfigError(f"model.{name}={getattr(self, name)!r}: allowed "
                                  f"{sorted(_DTYPES)}")
        if self.weights == "pretrained" and self.path is None:
            raise ConfigError("model.path is required with weights=pretrained (a "
                              "diffusers-format Wan2.1-T2V-1.3B directory); or use "
                              "weights=random for sizes only")
        if self.weights == "random" and self.checkpoint is not None:
            raise ConfigError("model.checkpoint needs weights=pretrained (random weights would "
                              "be replaced by the checkpoint's anyway)")
        if self.timesteps is not None:
            self.timesteps = tuple(float(t) for t in _plain(self.timesteps))
            if len(self.timesteps) != self.steps:
                raise ConfigError(f"model.timesteps={list(self.timesteps)} has "
                                  f"{len(self.timesteps)} entries but model.steps={self.steps}; "
                                  f"give {self.steps} timesteps or model.timesteps=null")
        self.config = _plain(self.config)


def wan_t2v(config: WanT2VConfig | str | None = None, /, **kwargs: Any) -> WanT2VModel:
    """Wan2.1-T2V (1.3B by default) sampled block by block, Self-Forcing style.

    ``wan_t2v(WanT2VConfig(...))``; or, as before, the path (positional) and the config's fields
    as keywords: ``wan_t2v(path, device="cuda")`` is ``wan_t2v(WanT2VConfig(path, device=...))``
    (Hydra's ``_target_: toolkit.models.real.wan_t2v`` calls it that way).
    """
    if isinstance(config, WanT2VConfig):
        cfg = replace(config, **kwargs)
    else:  # the old call: the path positional (or a keyword), the rest keywords
        cfg = WanT2VConfig(**kwargs) if config is None else WanT2VConfig(config, **kwargs)
    run = torch.device(cfg.device)
    if run.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device}: no CUDA device is visible on this machine")
    root = None if cfg.path is None else check_dir(
        cfg.path, SUBFOLDERS if cfg.weights == "pretrained" else ("transformer",))
    torch.manual_seed(cfg.seed)
    tdtype = _DTYPES[cfg.dtype]
    transformer = _transformer(root, cfg.weights, cfg.checkpoint, cfg.checkpoint_key,
                               cfg.config, run, tdtype)
    vae, encoder = None, RandomPromptEncoder(cfg.text_length, transformer.config.text_dim, run,
                                             tdtype)
    spatial, temporal = 8, 4
    if cfg.weights == "pretrained":
        from transformers import AutoTokenizer, UMT5EncoderModel

        raw_vae = AutoencoderKLWan.from_pretrained(root / "vae",
                                                   torch_dtype=_DTYPES[cfg.vae_dtype],
                                                   local_files_only=True).to(run)
        spatial = raw_vae.config.scale_factor_spatial
        temporal = raw_vae.config.scale_factor_temporal
        vae = StreamingWanVAE(raw_vae, block_frames=cfg.block_frames)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        umt5 = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=tdtype,
                                                local_files_only=True)
        encoder = UMT5PromptEncoder(tokenizer, umt5, cfg.text_length, run,
                                    cfg.offload_text_encoder, tdtype)
    spec = spec_for(transformer, cfg.height, cfg.width, cfg.block_frames, cfg.dtype, spatial,
                    temporal, cfg.fps, cfg.train_frames)
    sampling = SamplerConfig(steps=cfg.steps, shift=cfg.shift, mode=cfg.sampler,
                             timesteps=cfg.timesteps)
    model = WanT2VModel(transformer, spec, encoder, vae=vae, prediction="flow", sampler=sampling)
    return model.eval()
