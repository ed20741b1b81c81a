"""Writing frames people look at: filmstrips (PNG) and videos (MP4), upscaled without blur."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(frames: torch.Tensor, scale: int = 1) -> np.ndarray:
    """Frames (F, 3, H, W) in [0, 1] -> (F, H*scale, W*scale, 3) uint8, nearest upscaling."""
    arr = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    return arr


def filmstrip(rows: Sequence[torch.Tensor], path: str | Path, scale: int = 4,
              gap: int = 2) -> Path:
    """Write rows of frames (each (F, 3, H, W)) as one PNG grid; returns the path."""
    imgs = [to_uint8(r, scale) for r in rows]
    h, w = imgs[0].shape[1:3]
    cols = max(len(r) for r in imgs)
    canvas = np.full((len(imgs) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(imgs):
        for j, frame in enumerate(row):
            canvas[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = frame
    path = Path(path)
    Image.fromarray(canvas).save(path)
    return path


def write_mp4(frames: torch.Tensor, path: str | Path, fps: int = 8, scale: int = 8) -> Path:
    """Write frames (F, 3, H, W) as an H.264 MP4 (sizes rounded up to even by upscaling)."""
    import imageio.v2 as imageio

    path = Path(path)
    arr = to_uint8(frames, scale)
    imageio.mimwrite(path, list(arr), fps=fps, codec="libx264", quality=8,
                     macro_block_size=1, ffmpeg_log_level="error")
    return path
