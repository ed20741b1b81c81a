"""Streaming decode (and encode) around diffusers' ``AutoencoderKLWan``.

``AutoencoderKLWan._decode`` runs its causal decoder one latent frame at a time, carrying a
feature cache (the last ``CACHE_T`` frames of every causal conv) from frame to frame. This wrapper
keeps that cache *between calls*, so a video can be decoded block by block as it is generated,
with the same numbers as one decode of the whole video and memory bounded by one block.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify
from torch import Tensor


class StreamingWanVAE(torch.nn.Module):
    """Wan VAE with normalised latents, frames in [0, 1] and a block-by-block decode stream.

    Latents are normalised as Wan's pipeline does: ``z_model = (z_vae - mean) / std``.
    Frames are (B, F, 3, H, W) in [0, 1]; T latent frames decode to ``1 + 4 (T - 1)`` frames.

    Args:
        vae: the diffusers ``AutoencoderKLWan``.
        block_frames: latent frames per decode call in ``decode`` (the rollout's block size).
        output_device: where decoded frames are put (the CPU keeps a long video off the GPU).
    """

    def __init__(self, vae: AutoencoderKLWan, block_frames: int = 3,
                 output_device: str | torch.device | None = "cpu") -> None:
        super().__init__()
        self.vae, self.block_frames = vae.eval(), block_frames
        self.output_device = output_device
        self._convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self._cache: list | None = None  # per-conv feature cache of the current stream

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def stream(self) -> StreamingWanVAE:
        """A decode stream of its own on the same VAE (its own causal cache; frames stay on the
        VAE's device), e.g. for a compressor decoding blocks while the video is generated."""
        return StreamingWanVAE(self.vae, self.block_frames, output_device=None)

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.vae.config.latents_std, dtype=like.dtype, device=like.device)
        return mean.view(shape), std.view(shape)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """Normalised latents (B, C, T, h, w) of frames (B, F, 3, H, W) in [0, 1] (the mode)."""
        x = (frames.to(self.vae.device, self.dtype) * 2 - 1).transpose(1, 2)  # (B, 3, F, H, W)
        z = self.vae.encode(x).latent_dist.mode().float()
        mean, std = self._stats(z)
        return (z - mean) / std

    def reset(self) -> None:
        """Start a new stream: the next block is the video's first."""
        self._cache = None

    @torch.no_grad()
    def decode_block(self, latents: Tensor) -> Tensor:
        """Decode the next latent frames (B, C, f, h, w) of the stream into frames (B, F, 3, H, W).

        The first call after ``reset`` decodes the video's first latent frame to one frame, as
        ``AutoencoderKLWan`` does; every other latent frame gives ``scale_factor_temporal``.
        """
        z = latents.to(self.vae.device, torch.float32)
        mean, std = self._stats(z)
        x = self.vae.post_quant_conv((z * std + mean).to(self.dtype))
        out = []
        for i in range(x.shape[2]):
            first = self._cache is None
            if first:
                self._cache = [None] * self._convs
            out.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=self._cache, feat_idx=[0],
                                        first_chunk=first))
        video = torch.cat(out, dim=2)
        if self.vae.config.patch_size is not None:
            video = unpatchify(video, patch_size=self.vae.config.patch_size)
        frames = ((video.float().clamp(-1, 1) + 1) / 2).transpose(1, 2)  # (B, F, 3, H, W)
        return frames.to(self.output_device) if self.output_device is not None else frames

    def decode(self, latents: Tensor) -> Tensor:
        """Decode a whole video (B, C, T, h, w) as one stream, ``block_frames`` at a time."""
        self.reset()
        try:
            chunks = [self.decode_block(latents[:, :, i:i + self.block_frames])
                      for i in range(0, latents.shape[2], self.block_frames)]
        finally:
            self.reset()
        return torch.cat(chunks, dim=1)
