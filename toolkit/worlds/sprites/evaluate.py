"""How good is a world model? Prompt fidelity, identity and motion read back by the analysers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from toolkit.core.cache import CacheStrategy
from toolkit.core.rollout import rollout
from toolkit.worlds.sprites.analyse import FROZEN_SPEED, video_report
from toolkit.worlds.sprites.sim import Prompt, prompt_for_seed, simulate, split_seed

__all__ = ["FROZEN_SPEED", "evaluate", "summarise"]


def summarise(videos: torch.Tensor, prompts: list[Prompt], block_frames: int) -> dict[str, float]:
    """Fidelity and motion statistics of videos (N, T, 3, H, W) against their prompts."""
    rows = [video_report(v, p) for v, p in zip(videos, prompts, strict=True)]
    cat = {k: np.concatenate([r[k] for r in rows]) for k in
           ("match", "count_ok", "colours_ok", "shapes_ok", "background_ok")}
    speed = np.concatenate([r["speed"][1:] for r in rows])
    boundary = []  # did the sprite keep its colour/shape across each block boundary?
    for r in rows:
        ok = r["match"]
        for t in range(block_frames, len(ok), block_frames):
            boundary.append(bool(ok[t - 1] and ok[t]))
    out = {f"{k}_frac": float(v.mean()) for k, v in cat.items()}
    seen = speed[np.isfinite(speed)]  # frames where a sprite was found twice
    out["speed_px"] = float(seen.mean()) if seen.size else float("nan")
    out["frozen_frac"] = float((seen < FROZEN_SPEED).mean()) if seen.size else float("nan")
    out["boundary_kept_frac"] = float(np.mean(boundary)) if boundary else float("nan")
    return out


def evaluate(model: Any, strategy: CacheStrategy, seeds: list[int], frames: int,
             split: str = "heldout", seed: int = 0) -> dict[str, Any]:
    """Generate one video per prompt seed (one batch) and compare with simulator clips."""
    prompts = [prompt_for_seed(s, split) for s in seeds]
    out = rollout(model, strategy, prompts, frames, seed=seed)
    real = simulate(prompts, [split_seed(s, split) for s in seeds], frames * 1)
    return {"generated": summarise(out.frames, prompts, model.spec.block_frames),
            "real": summarise(real, prompts, model.spec.block_frames),
            "frames": out.frames, "prompts": prompts, "trace": out.trace}
