"""Does a memory-world model remember? Recall at 1x, with and without the needed blocks.

Gate clips: held-out 20-frame schedules (5 blocks of 4) drawn like the training clips that end
in a mid-only return, restricted to one layout so that one cache strategy can hide the needed
blocks from every clip of a batch: blocks 1-2 hold the returning sprite (not block 0, not block 3),
block 4 cuts back to it. Under ``full`` the last block sees everything; under ``Sink(sink=1 block,
window=1 block)`` it sees blocks 0 and 3 only: the needed blocks masked out, nothing else
changed for it. The analysers read the generated videos; recall compares the returning block's
sprite with the one the model itself drew before (``toolkit.worlds.memory.metrics``).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.core.cache import CacheStrategy
from toolkit.core.rollout import rollout
from toolkit.core.schedule import PromptSchedule
from toolkit.metrics import MetricInput, Unavailable
from toolkit.worlds.memory.metrics import chance, continuity, moment_rows
from toolkit.worlds.memory.scenes import ClipMix, Schedule, mid_return_clip, return_moments
from toolkit.worlds.sprites.sim import SPLIT_SEEDS, split_seed


def gate_clips(n: int, block_frames: int = 4, split: str = "heldout",
               seed: int = 0) -> list[Schedule]:
    """``n`` 5-block schedules whose last block returns to a sprite shown only in blocks 1-2."""
    mix = ClipMix(memory_share=1.0)
    rng = np.random.default_rng([split_seed(seed % SPLIT_SEEDS, split), 4])
    out = []
    while len(out) < n:
        sched = mid_return_clip(rng, 5, block_frames, mix.sink_blocks, mix.recent_blocks,
                                mix.process)
        last = next(m for m in return_moments(sched) if m.block == 4)
        if set(last.shown) <= {1, 2}:
            out.append(sched)
    return out


def as_prompt(sched: Schedule) -> PromptSchedule:
    """A schedule's shots as the rollout's prompt schedule (one shot per block)."""
    bf = sched.block_frames
    return PromptSchedule(tuple((b * bf, s) for b, s in enumerate(sched.shots)))


def recall_at_1x(model: Any, strategy: CacheStrategy, clips: list[Schedule],
                 seed: int = 0) -> dict[str, float]:
    """Recall of the clips' last blocks (the mid-only returns), one batch, one rollout.

    Returns, over the clips: ``colour`` / ``shape`` / ``identity`` (the returning sprite vs the
    one the model drew in block 1-2), ``truth`` (vs the sprite the prompt named), ``readable``
    (share of clips whose earlier blocks show a readable sprite), the chance levels of the same
    moments (``chance_colour``, ``chance_identity``: returns compared with other clips'
    sprites), and ``continuity_shape``: the model's own shape consistency across block
    boundaries without a cut (the ceiling of shape recall).
    """
    frames = len(clips[0].shots) * clips[0].block_frames
    with torch.no_grad():
        out = rollout(model, strategy, [as_prompt(s) for s in clips], frames, seed=seed)
    rows, cont = [], []
    for i, (video, sched) in enumerate(zip(out.frames, clips, strict=True)):
        inp = MetricInput(frames=video, prompt=as_prompt(sched), spec=model.spec)
        last = next(r for r in moment_rows(inp) if r["block"] == len(sched.shots) - 1)
        rows.append({**last, "intro": (i, last["intro"])})  # sprites of different clips differ
        with contextlib.suppress(Unavailable):  # no boundary without a cut shows a sprite
            cont.append(continuity.fn(inp)["shape"])
    readable = [r for r in rows if r["readable"]]
    try:
        odds = chance(rows)
    except Unavailable:  # fewer than two readable sprites: no chance level to compare with
        odds = {"": float("nan"), "colour": float("nan")}

    def mean(key: str, of: list[dict]) -> float:
        return float(np.mean([r[key] for r in of])) if of else float("nan")

    return {"colour": mean("colour", readable), "shape": mean("shape", readable),
            "identity": mean("identity", readable), "truth": mean("truth_identity", rows),
            "readable": len(readable) / len(rows), "chance_colour": odds["colour"],
            "chance_identity": odds[""],
            "continuity_shape": float(np.mean(cont)) if cont else float("nan"),
            "clips": float(len(rows))}


#: The memory model's gates (issue "A world that needs memory"), checked on the shipped weights.
USE_RATIO_GATE = 1.5  # base model: loss with the needed blocks hidden / with them in view
COMPRESSED_USE_GATE = 1.2  # each trained compressor: the same with its compressed mid hidden
COLOUR_GATE = 0.8  # colour recall of mid-only returns at 1x under `full`
SHAPE_MARGIN = 0.1  # shape recall within this of the model's own shape continuity
CHANCE_MARGIN = 0.15  # masked: colour recall at most this above the moments' chance level


def memory_gates(model: Any, clips: int = 64, seed: int = 0) -> dict[str, Any]:
    """Measure the base model's gates: context use on validation clips, recall at 1x with
    ``full`` and with the needed blocks masked out (``Sink(sink=1 block, window=0)``: the
    returning block sees only block 0, which never shows its sprite, and no block that saw
    the sprite relays it), on held-out gate clips. Returns measures and pass / fail per gate.
    """
    from toolkit.registry import STRATEGIES
    from toolkit.worlds.memory.train import MemoryTrainConfig, context_use
    from toolkit.worlds.sprites.train import teacher_forcing_layout

    Full, Sink = STRATEGIES.get("full"), STRATEGIES.get("sink")  # its reference strategies

    bf = model.spec.block_frames
    cfg = MemoryTrainConfig()
    pos, mask = teacher_forcing_layout(model, cfg.clip_frames)
    with model.attach():
        use = context_use(model, cfg, pos, mask, clips=clips)
    chosen = gate_clips(clips, bf, seed=seed)
    full = recall_at_1x(model, Full(), chosen, seed)
    masked = recall_at_1x(model, Sink(sink_frames=bf, recent_frames=0), chosen, seed)
    checks = {
        f"context use >= {USE_RATIO_GATE}": use["use_ratio"] >= USE_RATIO_GATE,
        f"colour recall (full) >= {COLOUR_GATE}": full["colour"] >= COLOUR_GATE,
        f"shape recall within {SHAPE_MARGIN} of shape continuity":
            full["shape"] >= full["continuity_shape"] - SHAPE_MARGIN,
        f"colour recall (needed blocks masked) <= chance + {CHANCE_MARGIN}":
            masked["colour"] <= masked["chance_colour"] + CHANCE_MARGIN,
    }
    # the shape gate measures memory only where the model draws shapes it keeps: say so
    shape_testable = full["continuity_shape"] >= 1 / 3 + SHAPE_MARGIN
    return {"context_use": use, "recall_full": full, "recall_masked": masked,
            "checks": checks, "passed": all(checks.values()), "clips": clips,
            "shape_testable": shape_testable,
            "chance": {"colour": 0.25, "shape": 1 / 3, "identity": 1 / 12}}


def record_gates(path: str | Path, clips: int = 64) -> dict[str, Any]:
    """Measure a memory model's gates and write them into its card (``gates``).

    Measured on one thread, as the tests re-measure them (same seed, same numbers).
    """
    from toolkit.models.weights import find_weights
    from toolkit.worlds.sprites.model import load_world

    path = find_weights(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gates = memory_gates(load_world(path), clips=clips)
    finally:
        torch.set_num_threads(threads)
    card_path = Path(path).with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["gates"] = gates
    card_path.write_text(json.dumps(card, indent=1))
    return gates
