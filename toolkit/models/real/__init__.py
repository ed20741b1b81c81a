"""Real Wan2.1 / Self-Forcing models: loading, checkpoint conversion, UMT5 prompts, streaming VAE.

    from toolkit.models.real import wan_t2v
    model = wan_t2v("~/models/Wan2.1-T2V-1.3B-Diffusers", checkpoint="self_forcing_dmd.pt",
                    device="cuda")

Hydra: ``model=wan-t2v-1.3b model.path=DIR [model.checkpoint=FILE]``; ``weights=random`` builds
the real-size architecture with random weights (no download) for memory / latency accounting.
"""

from toolkit.models.real.builder import (
    SELF_FORCING_TIMESTEPS,
    SUBFOLDERS,
    WAN_T2V_1_3B,
    WanT2VConfig,
    WanT2VModel,
    cast_like_diffusers,
    check_dir,
    spec_for,
    wan_t2v,
)
from toolkit.models.real.checkpoint import (
    CheckpointError,
    assign,
    load_checkpoint,
    read_folder,
    read_state,
    to_diffusers,
)
from toolkit.models.real.text import RandomPromptEncoder, UMT5PromptEncoder
from toolkit.models.real.vae import StreamingWanVAE

__all__ = [
    "SELF_FORCING_TIMESTEPS",
    "SUBFOLDERS",
    "WAN_T2V_1_3B",
    "CheckpointError",
    "RandomPromptEncoder",
    "StreamingWanVAE",
    "UMT5PromptEncoder",
    "WanT2VConfig",
    "WanT2VModel",
    "assign",
    "cast_like_diffusers",
    "check_dir",
    "load_checkpoint",
    "read_folder",
    "read_state",
    "spec_for",
    "to_diffusers",
    "wan_t2v",
]
