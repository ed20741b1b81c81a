"""Selection at 24x on the memory world's model: does PackForcing's top-k hold the block a
return needs, and can the model read it? (``python -m toolkit.worlds.memory.hits``)

Every arm is PackForcing as ``packforcing-memory-zeroshot`` lays it out (sink 1 block, top-2 of
16 compressed mid blocks re-packed, recent 1 block) at 480 latent frames on the memory world's
schedules (``--split``: ``val`` to choose, ``heldout`` to report), with one selection or one
set of weights per arm:

- zero-shot on ``model=world-memory`` (lr compressor): built-in top-k scored at one common
  position (default) and at the stored positions, recency, and the selection oracle
  (``selection=truth``);
- the compressor fine-tunes of ``rollbench train packforcing init=world-memory-v2.safetensors
  candidates=6`` (top-k choosing among 6 archived blocks in training; ``-select``: with the
  selection loss), with their own world weights, top-k and truth.

Per arm: the ``selection`` metric's hit rates and recall given a hit / a miss, and colour recall
with its kappa (chance the run's own, weighted as the gates weigh it). ``--out`` writes JSON;
the default artifact ``docs/artifacts/memory-selection-24x.json`` feeds the README's table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ARTIFACT = Path(__file__).resolve().parents[3] / "docs" / "artifacts" / "memory-selection-24x.json"
ZERO_SHOT = "world-memory-v2.safetensors"
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "topk (common)": (ZERO_SHOT, {}),
    "topk (stored)": (ZERO_SHOT, {"score_positions": "stored"}),
    "recency": (ZERO_SHOT, {"selection": "recency"}),
    "truth": (ZERO_SHOT, {"selection": "truth"}),
}
#: compressor fine-tunes with top-k in the loop: (world weights, compressor, compressor weights)
FINE_TUNES = {
    "dual": ("world-memory-v2-pf-dual.safetensors", "dual",
             "compressor-memory-v2-dual.safetensors"),
    "dual-select": ("world-memory-v2-pf-dual-select.safetensors", "dual",
                    "compressor-memory-v2-dual-select.safetensors"),
    "lr-select": ("world-memory-v2-pf-lr-select.safetensors", "lr", None),
    "dual-select-mixed": ("world-memory-v2-pf-dual-select-mixed.safetensors", "dual",
                          "compressor-memory-v2-dual-select-mixed.safetensors"),
    "lr-select-mixed": ("world-memory-v2-pf-lr-select-mixed.safetensors", "lr", None),
}


def fine_tune_arms(folder: str | None = None, names: Sequence[str] | None = None
                   ) -> dict[str, tuple[str, dict[str, Any]]]:
    """Top-k and truth arms of the fine-tunes ``names`` (all: None), their weights by name
    or in ``folder``."""
    out = {}
    for name, (world, comp, weights) in FINE_TUNES.items():
        if names is not None and name not in names:
            continue
        where = (lambda f: str(Path(folder) / f)) if folder else (lambda f: f)
        extra = {"compressor": comp,
                 "compressor_weights": where(weights) if weights else None}
        out[f"topk, fine-tuned {name}"] = (where(world), extra)
        out[f"truth, fine-tuned {name}"] = (where(world), {**extra, "selection": "truth"})
    return out


def strategy_for(extra: dict[str, Any]):
    from omegaconf import OmegaConf

    from toolkit.registry import STRATEGIES
    from toolkit.runs.config import ABLATIONS

    preset = OmegaConf.to_container(OmegaConf.load(
        ABLATIONS / "strategy" / "packforcing-memory-zeroshot.yaml"))
    base = {k: v for k, v in preset.items() if k not in ("label", "_target_")}
    return STRATEGIES.get("packforcing")(**{**base, **extra})


def arm_seed(world: str, extra: dict[str, Any], seed: int, split: str, frames: int
             ) -> tuple[list[dict], dict[str, float]]:
    """Recall rows and selection of one rollout of one schedule."""
    from toolkit.core.rollout import rollout
    from toolkit.metrics import MetricInput
    from toolkit.worlds.memory.evaluate import as_prompt
    from toolkit.worlds.memory.metrics import moment_rows, selection
    from toolkit.worlds.memory.scenes import schedule_for_seed
    from toolkit.worlds.sprites.model import load_world

    model = load_world(world) if Path(world).name == world else load_world(path=world)
    bf = model.spec.block_frames
    sched = schedule_for_seed(seed, frames // bf, bf, split)
    prompt = as_prompt(sched)
    with torch.no_grad():
        run = rollout(model, strategy_for(extra), [prompt], frames, seed=seed)
    inp = MetricInput(frames=run.frames[0], trace=run.trace, prompt=prompt, spec=model.spec)
    rows = moment_rows(inp)
    for r in rows:
        r["intro"] = (seed, r["intro"])
    return rows, selection.fn(inp)


def _jobs(jobs: list[tuple[str, str, dict, int]], split: str, frames: int) -> list:
    torch.set_num_threads(1)
    return [(name, seed, *arm_seed(world, extra, seed, split, frames))
            for name, world, extra, seed in jobs]


def measure(arms: dict[str, tuple[str, dict[str, Any]]] | None = None,
            seeds: Sequence[int] = (0, 1), split: str = "heldout", frames: int = 480,
            workers: int = 1) -> dict[str, dict[str, float]]:
    """Selection and recall of every arm over the schedules of ``seeds`` (mean over runs;
    kappa as the gates compute it)."""
    from toolkit.worlds.memory.gates import summarise

    arms = ARMS if arms is None else arms
    jobs = [(name, w, extra, s) for name, (w, extra) in arms.items() for s in seeds]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            parts = pool.map(_jobs, [jobs[i::workers] for i in range(workers)],
                             [split] * workers, [frames] * workers)
            done = [r for part in parts for r in part]
    else:
        done = _jobs(jobs, split, frames)
    out = {}
    for name in arms:
        mine = sorted((r for r in done if r[0] == name), key=lambda r: r[1])
        by_seed = {seed: rows for _, seed, rows, _ in mine}
        sel = [s for *_, s in mine]
        summary = summarise(by_seed)
        out[name] = {**{k: float(np.nanmean([s[k] for s in sel])) for k in sel[0]},
                     "kappa_colour": summary["kappa"], "kappa_beyond_colour":
                     summary["kappa_beyond"], "beyond_colour": summary["beyond"],
                     "beyond_n": summary["beyond_n"]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.worlds.memory.hits",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("heldout", "val"), default="heldout")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fine-tunes", default=None, metavar="FOLDER",
                        help="add the fine-tunes' arms, their weights read from FOLDER "
                             "('shipped': the weights folder)")
    parser.add_argument("--only-fine-tunes", action="store_true")
    parser.add_argument("--names", nargs="+", default=None, choices=sorted(FINE_TUNES),
                        help="which fine-tunes (default: all)")
    parser.add_argument("--no-truth", action="store_true", help="leave out the truth arms")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=str(ARTIFACT))
    args = parser.parse_args(argv)
    arms = {} if args.only_fine_tunes else dict(ARMS)
    if args.fine_tunes:
        arms.update(fine_tune_arms(None if args.fine_tunes == "shipped" else args.fine_tunes,
                                   args.names))
    if args.no_truth:
        arms = {k: v for k, v in arms.items() if not k.startswith("truth")}
    result = measure(arms, args.seeds, args.split, workers=args.workers)
    result = {"split": args.split, "seeds": args.seeds, "arms": result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
