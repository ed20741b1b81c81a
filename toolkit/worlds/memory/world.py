"""The memory world as a plug-in: what the toolkit asks of it (``toolkit.plugins.World``).

Its runs are schedules of one shot per block; its own measures (``metrics``: recall of returning
sprites against each run's chance level) have a metric set, a line after each run and a section
in the report. Its analysers (``shot_report``, ``attributes``) read each shot's stretch of a run
against the shot, so prompt fidelity per span and the switch measures apply to its cuts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from toolkit.models.recipes import Recipe
from toolkit.plugins import Section, World
from toolkit.worlds import install
from toolkit.worlds.memory import WEIGHTS_DIR
from toolkit.worlds.memory import metrics as _metrics  # noqa: F401  (registers its measures)
from toolkit.worlds.memory.scenes import SCENE_BACKGROUNDS, Shot
from toolkit.worlds.sprites.analyse import analyse_video
from toolkit.worlds.sprites.sim import SPEEDS

#: ``tracking.metrics=memory``: the recall measures with the generic motion, boundary and
#: system measures.
MEMORY_SET = ["recall", "recall_kappa", "recall_beyond", "recall_curve", "recall_gap",
              "recall_chance", "recall_swap", "selection", "recall_truth", "recall_position",
              "recall_within", "recall_moments", "continuity", "scene_fidelity",
              "scene_speed_ratio", "scene_frozen", "motion", "dynamic_degree", "discontinuity",
              "boundary_change", "boundary_jump", "cache_events", "rope_power", "kv_bytes",
              "kv_tokens", "context_tokens", "block_seconds", "peak_kv_bytes",
              "seconds_per_block", "latency_growth", "peak_rss_bytes", "cuda_peak_bytes"]

#: The report's recall table.
RECALL = ("recall_kappa/beyond_colour", "recall_kappa/colour", "recall_beyond/colour",
          "recall/colour", "recall_chance/colour", "recall_gap/2_colour", "recall_gap/3_colour",
          "recall_gap/4-8_colour", "recall_gap/9_up_colour", "recall_swap/needed",
          "recall_beyond/count", "recall_beyond/unreadable")
RECALL_NOTE = ("Recall: share of cuts back to a scene whose sprite shows the colour the model drew "
               "before. Headline: kappa = (recall - chance) / (1 - chance), chance the run's own "
               "(`recall_chance`: returns compared with what was drawn for other sprites), so a "
               "model that draws one colour scores 0. `beyond`: sprite last shown 4+ blocks back "
               "(outside the default windows and recent partitions); `recall_gap/N`: by blocks "
               "since last shown (2, 3, 4-8, 9+); `recall_swap/needed`: swap returns showing the "
               "needed block's colour. Read every strategy between `oracle` (the needed blocks "
               "kept) and `oracle-wrong` (the same layout with wrong blocks).")


def claims(prompt: Any) -> bool:
    """A prompt schedule whose prompts are shots (or their text), or one shot."""
    segments = getattr(prompt, "segments", None)
    try:
        if not segments:
            return isinstance(prompt, Shot) or (isinstance(prompt, str)
                                                and bool(Shot.from_text(prompt)))
        return all(isinstance(p, Shot) or Shot.from_text(str(p)) for _, p in segments)
    except ValueError:
        return False


def prompt_of(prompt: Any) -> Any:
    """A shot from a shot or its text; a schedule as it is (its measures read it whole)."""
    if isinstance(prompt, str):
        return Shot.from_text(prompt)
    return prompt


def shot_report(frames: Any, shot: Shot) -> dict[str, np.ndarray]:
    """Per frame of a stretch of one shot: ``background_ok`` (the shot's scene), and on a shot
    that introduces a sprite ``colours_ok`` / ``shapes_ok`` (a sprite of its colour / shape is
    read; NaN on other shots, which name none), ``match`` (both, and the scene) and ``speed``:
    the largest sprite's centroid displacement from frame ``t - w`` over w, ``w = min(3, t)``,
    for w >= 2 only (NaN otherwise; as ``scene_speeds``)."""
    obs = analyse_video(frames, SCENE_BACKGROUNDS)
    n = len(obs)
    scene = np.array([o.background == shot.scene for o in obs], dtype=float)
    colour, shape = np.full(n, np.nan), np.full(n, np.nan)
    if shot.sprite is not None:
        colour = np.array([any(s.colour == shot.sprite.colour for s in o.sprites) for o in obs],
                          dtype=float)
        shape = np.array([any(s.shape == shot.sprite.shape for s in o.sprites) for o in obs],
                         dtype=float)
    match = scene if shot.sprite is None else scene * np.array(
        [any(s.colour == shot.sprite.colour and s.shape == shot.sprite.shape
             for s in o.sprites) for o in obs], dtype=float)
    cen = np.array([max(o.sprites, key=lambda s: s.area).centroid if o.sprites
                    else (np.nan, np.nan) for o in obs])
    speed = np.full(n, np.nan)
    for t in range(2, n):
        w = min(3, t)
        speed[t] = np.hypot(*(cen[t] - cen[t - w])) / w
    return {"match": match, "background_ok": scene, "colours_ok": colour, "shapes_ok": shape,
            "speed": speed}


def attributes(shot: Shot) -> dict[str, Any]:
    """What a shot asks for: its scene (background) and speed (px/frame), and the colour and
    shape of the sprite it introduces (a shot that introduces none names none)."""
    out: dict[str, Any] = {"background": shot.scene, "speed": SPEEDS[shot.speed]}
    if shot.sprite is not None:
        out.update(colour=(shot.sprite.colour,), shape=(shot.sprite.shape,))
    return out


def recall_line(scalars: Mapping[str, float]) -> str | None:
    """One line of a run's recall: chance-corrected (kappa) and beyond the recent blocks,
    beside the raw colour recall and its own chance level (None without recall)."""
    if "recall" not in scalars:
        return None

    def get(key: str) -> str:
        return f"{scalars[key]:.2f}" if key in scalars else "-"

    return (f"recall (colour) kappa {get('recall_kappa/colour')}, beyond (4+ blocks back) "
            f"{get('recall_kappa/beyond_colour')}; raw colour {get('recall/colour')} at chance "
            f"{get('recall_chance/colour')}, beyond {get('recall_beyond/colour')}; over "
            f"{scalars.get('recall_moments', 0):.0f} returns, "
            f"{scalars.get('recall_beyond/count', 0):.0f} readable beyond")


#: The figures the docs quote (``rollbench docs``), made by :mod:`.docfigures`.
_DOCS = "toolkit.worlds.memory.docfigures"
FIGURES = {
    "memory-returns": f"{_DOCS}:memory_returns",
    "memory-colour": f"{_DOCS}:memory_colour",
    "memory-gates-table": f"{_DOCS}:memory_gates_table",
    "compressor-use": f"{_DOCS}:compressor_use",
    "memory-v2-gates-24x": f"{_DOCS}:memory_v2_gates_24x",
    "memory-v2-gates-1x": f"{_DOCS}:memory_v2_gates_1x",
    "memory-selection-24x": f"{_DOCS}:memory_selection_24x",
    "memory-v2-validation": f"{_DOCS}:memory_v2_validation",
    "memory-ladder": f"{_DOCS}:memory_ladder",
    "memory-pf-v2-val": f"{_DOCS}:memory_pf_v2_val"}


WORLD = install(World(
    name="memory",
    description="a video that cuts between scenes which come back; recall of what only mid "
                "history showed",
    claims=claims, prompt_of=prompt_of, report=shot_report, attributes=attributes,
    weights=WEIGHTS_DIR,
    presets=("world-memory-candidate",),
    recipes={"world-memory": Recipe("toolkit.worlds.memory.train:MemoryTrainConfig",
                                    "toolkit.worlds.memory.recipe:train_memory")},
    strategies=("full", "sink"),
    metric_sets={"memory": MEMORY_SET},
    summary=recall_line,
    columns=(("recall/mid", "recall (mid)"), ("recall_chance", "recall chance")),
    sections=(Section("Recall (memory world)", RECALL, RECALL_NOTE,
                      curves=(("recall_curve", "recall of returning sprites (binned)", False),
                              ("scene_fidelity", "scene fidelity (memory world)", False)),
                      sparse=("recall_curve",)),),
    figures=FIGURES,
))
