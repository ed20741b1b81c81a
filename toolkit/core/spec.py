"""The model spec: every size in rollbench derives from it, never from literals."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of a chunk-wise causal Wan-style video model.

    Attributes:
        num_layers: transformer blocks, each holding one self-attention K/V cache.
        num_heads: attention heads per layer.
        head_dim: channels per head (Wan: 128, split 44/42/42 over time/height/width).
        latent_channels: channels of a latent frame.
        latent_height: latent rows per frame.
        latent_width: latent columns per frame.
        patch: (time, height, width) patch of the patch embedding; time must be 1.
        block_frames: latent frames denoised together (one block).
        rope_theta: RoPE base.
        dtype: name of the activation / cache dtype ("float32", "bfloat16", "float16").
        train_frames: latent frames of the clips the model was trained on (1x length).
        latent_fps: latent frames per second of video (Wan: 16 fps / 4x temporal VAE = 4).
    """

    num_layers: int
    num_heads: int
    head_dim: int
    latent_channels: int
    latent_height: int
    latent_width: int
    patch: tuple[int, int, int] = (1, 2, 2)
    block_frames: int = 4
    rope_theta: float = 10000.0
    dtype: str = "float32"
    train_frames: int = 20
    latent_fps: float = 4.0

    def __post_init__(self) -> None:
        if self.patch[0] != 1:
            raise ValueError(f"patch={self.patch}: the temporal patch must be 1 (one latent frame)")
        if self.latent_height % self.patch[1] or self.latent_width % self.patch[2]:
            raise ValueError(
                f"latent grid {self.latent_height}x{self.latent_width} is not divisible by "
                f"patch {self.patch[1:]}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: allowed {sorted(_DTYPES)}")
        if self.block_frames < 1:
            raise ValueError(f"block_frames={self.block_frames}: must be >= 1")

    @property
    def width(self) -> int:
        """Model width (heads x head dim)."""
        return self.num_heads * self.head_dim

    @property
    def grid(self) -> tuple[int, int]:
        """Token rows and columns per latent frame."""
        return self.latent_height // self.patch[1], self.latent_width // self.patch[2]

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def tokens_per_block(self) -> int:
        return self.tokens_per_frame * self.block_frames

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head dims rotated by time, height and width (Wan: h = w = 2 * (d // 6))."""
        hw = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * hw, hw, hw

    def blocks_of(self, frames: int) -> int:
        """Blocks holding ``frames`` latent frames (a partly filled block counts)."""
        return -(-frames // self.block_frames)

    def check_blocks(self, name: str, frames: int, positive: bool = False) -> int:
        """``frames`` in whole blocks; the one block-multiple check of rollbench.

        Raises:
            ValueError: naming ``name=frames`` and the nearest allowed values, unless ``frames``
                is a multiple of the block size (a positive one with ``positive``).
        """
        bf = self.block_frames
        if frames % bf == 0 and (frames > 0 or not positive):
            return frames // bf
        low = bf if positive else 0
        near = sorted({max(low, frames // bf * bf), max(low, (frames // bf + 1) * bf)})
        kind = "positive multiple" if positive else "multiple"
        raise ValueError(f"{name}={frames}: must be a {kind} of the block size {bf} "
                         f"(e.g. {' or '.join(map(str, near))})")

    def frames_for(self, seconds: float) -> int:
        """Latent frames of a video of ``seconds``, rounded up to whole blocks."""
        frames = seconds * self.latent_fps
        return int(-(-frames // self.block_frames) * self.block_frames)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V for one token over all layers."""
        itemsize = torch.empty((), dtype=self.torch_dtype).element_size()
        return 2 * self.num_layers * self.width * itemsize
