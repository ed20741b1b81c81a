"""The README's picture of a return moment: what a strategy brings back when a scene comes back.

``python -m toolkit.worlds.memory.figure OUT.png`` rolls out the shipped memory models and draws,
per row, the last block that showed a sprite, then the block that cuts back to it:

- 1x: a held-out gate clip under ``full`` (the needed blocks are 1-2, the return is block 4);
- 24x: one held-out schedule of 480 latent frames under ``window``, ``sink`` and PackForcing,
  at the last mid-only return of the video whose sprite was last seen at least 3 blocks before.

The top row of each part is the simulator's truth.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from toolkit.core.rollout import rollout
from toolkit.runs.config import build_strategy, compose_config
from toolkit.worlds.memory.evaluate import as_prompt, gate_clips
from toolkit.worlds.memory.scenes import ReturnMoment, render, return_moments, schedule_for_seed
from toolkit.worlds.sprites.model import load_world

ROWS_24X = (("window", "window"), ("sink", "sink"), ("packforcing-memory", "packforcing"))


def _pair(frames: torch.Tensor, moment: ReturnMoment, bf: int) -> torch.Tensor:
    """The last block that showed the sprite, then the returning block: (2 bf, 3, H, W)."""
    return torch.cat([frames[moment.last * bf:(moment.last + 1) * bf],
                      frames[moment.block * bf:(moment.block + 1) * bf]])


def _model_and_strategy(preset: str) -> tuple[Any, Any]:
    cfg = compose_config(["model=world-memory-candidate", f"strategy={preset}"])
    model = load_world(cfg.model.path)
    return model, build_strategy(cfg.strategy)


def figure_rows(frames_24x: int = 480, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """(label, frames) rows: 1x truth and full, then 24x truth and each strategy."""
    rows = []
    clip = gate_clips(1, seed=seed)[0]
    moment = next(m for m in return_moments(clip) if m.block == 4)
    model, full = _model_and_strategy("full")
    bf = model.spec.block_frames
    gen = rollout(model, full, [as_prompt(clip)], len(clip.shots) * bf, seed=seed).frames[0]
    rows += [("1x truth", _pair(render(clip), moment, bf)), ("1x full", _pair(gen, moment, bf))]
    sched = schedule_for_seed(seed, frames_24x // bf, bf)
    late = [m for m in return_moments(sched) if m.needed_in(1, 1) == "mid" and m.gap >= 3]
    moment = late[-1]
    rows.append((f"24x truth (block {moment.block})", _pair(render(sched), moment, bf)))
    for preset, label in ROWS_24X:
        model, strategy = _model_and_strategy(preset)
        gen = rollout(model, strategy, [as_prompt(sched)], frames_24x, seed=seed).frames[0]
        rows.append((f"24x {label}", _pair(gen, moment, bf)))
    return rows


def draw(rows: list[tuple[str, torch.Tensor]], path: str | Path) -> Path:
    """One labelled row per (label, frames); a gap between the two blocks of each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9 + 1.6, len(rows) * 0.95))
    for r, (label, frames) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(frames[c].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == n // 2:
                for side in ("left",):
                    ax.spines[side].set_linewidth(3)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("last block that showed it", fontsize=8, loc="left")
    axes[0, n // 2].set_title("the cut back to its scene", fontsize=8, loc="left")
    fig.subplots_adjust(left=0.22, wspace=0.05, hspace=0.08)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":  # pragma: no cover - the README's figure
    torch.set_num_threads(1)
    print(draw(figure_rows(), sys.argv[1] if len(sys.argv) > 1 else "memory-return.png"))
