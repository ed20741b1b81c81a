"""Model builders: a seeded random tiny Wan for tests, and the shared prompt-token encoder."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from diffusers import WanTransformer3DModel

from toolkit.core.model import WanCausalModel
from toolkit.core.sampling import SamplerConfig
from toolkit.core.spec import ModelSpec


class TokenPromptEncoder(torch.nn.Module):
    """Embeds prompts given as token lists, objects with ``.tokens()``, or strings (hashed).

    Args:
        vocab: vocabulary size.
        length: tokens per prompt (shorter ones are padded with token 0).
        dim: embedding width (the transformer's ``text_dim``).
    """

    def __init__(self, vocab: int, length: int, dim: int) -> None:
        super().__init__()
        self.vocab, self.length = vocab, length
        self.embed = torch.nn.Embedding(vocab, dim)

    def token_ids(self, prompts: list[Any]) -> torch.Tensor:
        rows = []
        for p in prompts:
            if hasattr(p, "tokens"):
                ids = list(p.tokens())
            elif isinstance(p, str):
                ids = [b % self.vocab for b in hashlib.sha256(p.encode()).digest()[: self.length]]
            else:
                ids = [int(i) for i in p]
            if len(ids) > self.length or any(not 0 <= i < self.vocab for i in ids):
                raise ValueError(f"prompt tokens {ids} do not fit length {self.length} / "
                                 f"vocabulary {self.vocab}")
            rows.append(ids + [0] * (self.length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    def forward(self, prompts: list[Any]) -> torch.Tensor:
        return self.embed(self.token_ids(prompts).to(self.embed.weight.device))


def wan_t2v_1_3b_spec(height: int = 480, width: int = 832, block_frames: int = 4,
                      dtype: str = "bfloat16") -> ModelSpec:
    """The true sizes of Wan2.1-T2V-1.3B (Self-Forcing's base): 30 layers, 12 x 128 heads,
    16-channel latents at 1/8 resolution, patch (1, 2, 2), 16 fps / 4x temporal VAE."""
    if height % 16 or width % 16:
        raise ValueError(f"resolution {width}x{height}: both sides must be multiples of 16")
    return ModelSpec(num_layers=30, num_heads=12, head_dim=128, latent_channels=16,
                     latent_height=height // 8, latent_width=width // 8,
                     block_frames=block_frames, dtype=dtype, train_frames=20, latent_fps=4.0)


def tiny_random(seed: int = 0, num_layers: int = 2, num_heads: int = 2, head_dim: int = 24,
                latent_channels: int = 4, latent_height: int = 4, latent_width: int = 4,
                block_frames: int = 2, train_frames: int = 8, text_dim: int = 16,
                ffn_dim: int = 64, steps: int = 2, shift: float = 5.0,
                sampler: str = "euler") -> WanCausalModel:
    """A seeded, randomly initialised tiny Wan (fp32, CPU): the model of the invariant tests."""
    spec = ModelSpec(num_layers=num_layers, num_heads=num_heads, head_dim=head_dim,
                     latent_channels=latent_channels, latent_height=latent_height,
                     latent_width=latent_width, block_frames=block_frames,
                     train_frames=train_frames)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=spec.patch, num_attention_heads=num_heads, attention_head_dim=head_dim,
        in_channels=latent_channels, out_channels=latent_channels, text_dim=text_dim,
        freq_dim=32, ffn_dim=ffn_dim, num_layers=num_layers, rope_max_seq_len=1024)
    encoder = TokenPromptEncoder(vocab=32, length=4, dim=text_dim)
    model = WanCausalModel(transformer, spec, encoder, vae=None, prediction="flow",
                           sampler=SamplerConfig(steps=steps, shift=shift, mode=sampler))
    return model.eval()


def tiny_wan(block_frames: int = 3, seed: int = 0, steps: int = 2) -> WanCausalModel:
    """A seeded tiny random Wan with a tiny random causal Wan VAE (``AutoencoderKLWan``: 1 + 4k
    pixel frames <-> 1 + k latent frames, 8x spatial), 32x32 pixels: 4x4 latents, 2x2 tokens
    per frame. For tests of what needs Wan's own VAE (``lr`` / ``dual`` compressors)."""
    from diffusers import AutoencoderKLWan

    from toolkit.models.real import StreamingWanVAE, spec_for

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=2,
        rope_max_seq_len=1024)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.7, 2.0, 1.0])
    spec = spec_for(transformer, 32, 32, block_frames, "float32", train_frames=8)
    model = WanCausalModel(transformer, spec, TokenPromptEncoder(vocab=32, length=4, dim=16),
                           vae=StreamingWanVAE(vae.eval(), block_frames), prediction="flow",
                           sampler=SamplerConfig(steps=steps, shift=5.0, mode="euler"))
    return model.eval()
