"""The sprite world's frame feature (feature backend ``world``, the toolkit's default)."""

from __future__ import annotations

import numpy as np

from toolkit.metrics.features import FEATURES
from toolkit.worlds.sprites.analyse import _N_SPRITE, _NAMES, _UNKNOWN_ID, classify_pixels


@FEATURES.register("world")
class WorldFeatures:
    """A small hand-made feature of a world frame (D = 36), built from the analysers' classes.

    Parts (each pixel is classified to the nearest palette / background colour, or unknown):

    - colour make-up of the foreground (5): share of each palette colour and of unknown pixels
      among the non-background pixels (a recoloured sprite moves this by sqrt(2));
    - class fractions of the whole frame (7): palette, backgrounds, unknown;
    - palette centroids (8, weight ``centroid_weight``): mean (y, x) / size per colour, 0 if
      absent;
    - coarse spatial histogram (``grid`` x ``grid`` = 16, weight ``grid_weight``): foreground
      share per cell.

    Position enters with small weights, so a sprite moving as it should barely moves the
    segment means (drift), while identical positions still read as identical (repetition).
    """

    def __init__(self, grid: int = 4, centroid_weight: float = 0.05,
                 grid_weight: float = 0.05) -> None:
        self.grid, self.centroid_weight, self.grid_weight = grid, centroid_weight, grid_weight

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        f, _, h, w = frames.shape
        cls = classify_pixels(frames)  # (F, H, W)
        frac = np.stack([(cls == c).mean((1, 2)) for c in range(len(_NAMES) + 1)], 1)
        fg = (cls < _N_SPRITE) | (cls == _UNKNOWN_ID)
        fg_n = fg.sum((1, 2))[:, None]
        counts = frac[:, [*range(_N_SPRITE), _UNKNOWN_ID]] * (h * w)
        makeup = np.where(fg_n > 0, counts / np.maximum(fg_n, 1), 0.0)
        yy, xx = np.mgrid[0:h, 0:w]
        cen = []
        for c in range(_N_SPRITE):
            m = cls == c
            n = np.maximum(m.sum((1, 2)), 1)
            cen += [(m * yy).sum((1, 2)) / n / h, (m * xx).sum((1, 2)) / n / w]
        g = self.grid
        if h % g or w % g:
            raise ValueError(f"frame size {h}x{w} is not divisible by grid={g}")
        occ = fg.reshape(f, g, h // g, g, w // g).mean((2, 4)).reshape(f, -1)
        return np.concatenate([makeup, frac, self.centroid_weight * np.stack(cen, 1),
                               self.grid_weight * occ], 1).astype(np.float64)
