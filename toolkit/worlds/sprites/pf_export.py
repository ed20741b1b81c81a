"""What ``rollbench train packforcing`` writes: the fine-tuned world weights and the compressor's
learned branch, with cards saying how they were made (``toolkit.worlds.sprites.pf_train``, whose
``PFTrainConfig`` the ``cfg`` arguments are)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from strategies.compressors import Compressor, compressor_class
from toolkit.models.trainer import base_card
from toolkit.worlds.sprites.model import (
    WEIGHTS_DIR,
    WorldConfig,
    WorldModel,
    save_world,
    sha256,
)
from toolkit.worlds.sprites.sim import FRAME_SIZE

WORLD_FILE = "world-model-pf.safetensors"
COMPRESSOR_FILE = "compressor-hr.safetensors"


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    root = WEIGHTS_DIR.parents[3]
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def file_names(cfg: Any, world_cfg: WorldConfig) -> tuple[str, str | None]:
    """Exported world weights and compressor weights (None: the compressor has no parameters).

    Sprite world: world-model-pf / compressor-hr; memory world: world-memory<tag>-pf-<compressor>
    / compressor-memory<tag>-<compressor>, one pair per trained variant, ``<tag>`` the initial
    weights' (``init=world-memory-v2.safetensors``: ``-v2``); ``-select`` ends the names of a
    run with the selection loss, ``-mixed`` of one mixing in in-clip steps.
    """
    learned = compressor_class(cfg.compressor).learned
    if world_cfg.world == "sprites":
        return WORLD_FILE, COMPRESSOR_FILE if learned else None
    name = cfg.compressor + ("-select" if cfg.candidates and cfg.select_weight > 0 else "") + (
        "-mixed" if cfg.candidates and cfg.packed_share < 1.0 else "")
    stem = Path(cfg.init).name.removesuffix(".safetensors")
    tag = stem.removeprefix("world-memory") if stem.startswith("world-memory") else ""
    return (f"world-memory{tag}-pf-{name}.safetensors",
            f"compressor-memory{tag}-{name}.safetensors" if learned else None)


def export(cfg: Any, model: WorldModel, compressor: Compressor,
           world_cfg: WorldConfig, history: list[dict[str, Any]], init_path: Path,
           init_card: dict[str, Any]) -> Path:
    """Write the fine-tuned world weights and the compressor's learned (hr) branch, with cards
    (names from ``file_names``)."""
    folder = Path(cfg.export) if cfg.export else Path(cfg.out) / "final"
    folder.mkdir(parents=True, exist_ok=True)
    world_file, comp_file = file_names(cfg, world_cfg)
    comp_path = compressor.save(folder / comp_file) if comp_file else None
    strategy = {"_target_": "packforcing", "sink_frames": cfg.sink_frames,
                "recent_frames": cfg.recent_frames, "compressor": cfg.compressor,
                "compress_time": cfg.compress_time, "compress_space": cfg.compress_space,
                "hr_channels": cfg.hr_channels, "kv": cfg.kv, "spatial": cfg.spatial,
                "compressor_weights": comp_file}
    last = history[-1] if history else {}
    evals = [r for r in history if "mid_use" in r or "return_ratio" in r]
    keys = ("gap_mid", "gap_nomid", "mid_use", "return_ratio", "colour_shown", "colour_hidden",
            "topk_hit", "chance_hit")
    card = {
        **base_card("packforcing", cfg, history),
        "final_losses": {k: last.get(k) for k in ("loss", "err_mid", "err_nomid")},
        "context_use": {k: evals[-1][k] for k in keys if evals and k in evals[-1]},
        "exported": "EMA weights" if cfg.ema > 0 else "raw weights",
        "init": {"file": _shown(init_path), "sha256": init_card.get("sha256"),
                 "steps": init_card.get("steps"),
                 "provisional": init_card.get("provisional", False)},
        "strategy": strategy,
        "frame_size": FRAME_SIZE,
    }
    if comp_path is not None:
        card["compressor"] = {"file": comp_file, "sha256": sha256(comp_path),
                              "name": cfg.compressor, "saved_branch": "hr"}
    world_path = save_world(model, world_cfg, folder / world_file, card)
    if comp_path is not None:
        world_card = json.loads(world_path.with_suffix(".json").read_text())
        comp_card = {**{k: v for k, v in card.items() if k != "compressor"},
                     "file": comp_file, "sha256": card["compressor"]["sha256"],
                     "world": {"file": world_file, "sha256": world_card["sha256"]}}
        comp_path.with_suffix(".json").write_text(json.dumps(comp_card, indent=1))
    return world_path
