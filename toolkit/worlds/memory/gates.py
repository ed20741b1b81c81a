"""The memory model's gates at 24x, where the memory claims are tested.

Four rollout arms per schedule, 480 latent frames each, colour recall of the returns only
memory can answer (``is_beyond``: last shown 4+ blocks back, never in the first block, which
every sink keeps), chance the arm's own (returns
compared with what was drawn for other sprites, pooled over the arm's schedules):

- ``oracle`` (sink + recent + the last 2 needed blocks): kappa >= ``ORACLE_KAPPA``;
- ``oracle`` minus ``oracle-wrong`` (same layout, wrong blocks), per schedule: mean >=
  ``BRACKET``, its lower 95% t bound >= ``BRACKET_LOW`` (16+ schedules);
- ``swap`` (needed block 3 back, a wrong one of another colour 2 back): the needed block's colour
  in >= ``SWAP`` of the swap returns where the two drawn colours differ;
- ``sink`` + recent, no memory: kappa <= ``NO_MEMORY_KAPPA``.

Chance is each run's own (see ``summarise``); ``beyond_truth`` (the colour the introducing
prompt named) is reported beside it: a run that copies its sink at every return agrees with
itself but not with the truth.

Choices (recipe, sampler, checkpoint) are made on validation schedules (``split="val"``); the
gate set (``GATE_SEEDS`` of the held-out split, never read before this model) is read once per
candidate model and the result written into its card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from toolkit.core.rollout import rollout
from toolkit.metrics import MetricInput, Unavailable
from toolkit.worlds.memory.evaluate import as_prompt
from toolkit.worlds.memory.metrics import block_sprites, chance, is_beyond, kappa, moment_rows
from toolkit.worlds.memory.reference import Oracle, swap_partner
from toolkit.worlds.memory.scenes import schedule_for_seed

ORACLE_KAPPA = 0.7
BRACKET = 0.3
BRACKET_LOW = 0.2
SWAP = 0.8
NO_MEMORY_KAPPA = 0.1
#: The gate set: held-out run seeds no earlier model was measured on (read once per model).
GATE_SEEDS = tuple(range(9000, 9016))
#: Validation schedules for choosing recipe, sampler and checkpoint.
VAL_SEEDS = tuple(range(16))
FRAMES = 480


def arms(bf: int) -> dict[str, Any]:
    """The gates' strategies (sink and recent of one block each, as the references); ``sink``
    is named through the registry, like every reference strategy a world uses."""
    from toolkit.registry import STRATEGIES

    Sink = STRATEGIES.get("sink")

    return {"oracle": Oracle(sink_frames=bf, recent_frames=bf, pick="needed"),
            "oracle-wrong": Oracle(sink_frames=bf, recent_frames=bf, pick="wrong"),
            "swap": Oracle(sink_frames=bf, recent_frames=bf, pick="swap"),
            "no-memory": Sink(sink_frames=bf, recent_frames=bf, positions="reindex")}


def arm_rows(model: Any, strategy: Any, seed: int, split: str, frames: int) -> list[dict]:
    """Recall rows of one rollout of a schedule, with swap facts, keyed by schedule."""
    bf = model.spec.block_frames
    sched = schedule_for_seed(seed, frames // bf, bf, split)
    with torch.no_grad():
        out = rollout(model, strategy, [as_prompt(sched)], frames, seed=seed)
    inp = MetricInput(frames=out.frames[0], prompt=as_prompt(sched), spec=model.spec)
    rows = moment_rows(inp)
    sprites = block_sprites(inp)
    for r in rows:
        r["intro"] = (seed, r["intro"])  # sprites of different schedules differ
        pair = swap_partner(sched.shots, r["block"])
        if pair and r["readable"]:
            a, b = sprites[pair[0]].colour, sprites[pair[1]].colour
            if a is not None and b is not None and a != b:
                r["swap"] = (r["back"].colour == a, r["back"].colour == b)
    return rows


def _chance(rows: list[dict]) -> float:
    try:
        return chance(rows)["colour"]
    except Unavailable:  # fewer than two readable sprites in the video
        return float("nan")


def summarise(by_seed: dict[int, list[dict]]) -> dict[str, float]:
    """Colour recall, chance and kappa (all returns and ``beyond``) of one arm. Chance is each
    run's own (its returns against what it drew for its other sprites), averaged with the
    weight of the run's moments: a run that copies one visible sprite (e.g. the sink's) at
    every return agrees with itself, and its own chance says so; chance pooled over runs would
    not."""
    rows = [r for rs in by_seed.values() for r in rs]
    every = [r for r in rows if "colour" in r]
    beyond = [r for r in every if is_beyond(r)]

    def weighted_chance(keep) -> float:
        pairs = [(_chance(rs), sum(1 for r in rs if "colour" in r and keep(r)))
                 for rs in by_seed.values()]
        pairs = [(c, n) for c, n in pairs if n and np.isfinite(c)]
        total = sum(n for _, n in pairs)
        return sum(c * n for c, n in pairs) / total if total else float("nan")

    col = float(np.mean([r["colour"] for r in every])) if every else float("nan")
    bey = float(np.mean([r["colour"] for r in beyond])) if beyond else float("nan")
    odds, odds_beyond = weighted_chance(lambda r: True), weighted_chance(is_beyond)
    truth = [r for r in beyond if r["back"].colour is not None]
    swaps = [r["swap"] for r in rows if "swap" in r]
    return {"colour": col, "beyond": bey, "chance": odds, "chance_beyond": odds_beyond,
            "kappa": kappa(col, odds), "kappa_beyond": kappa(bey, odds_beyond),
            "beyond_truth": float(np.mean([r["back"].colour == r["truth"].colour
                                           for r in truth])) if truth else float("nan"),
            "beyond_n": float(len(beyond)),
            "unreadable": float(sum(not r["readable"] for r in rows)),
            "swap_needed": float(np.mean([s[0] for s in swaps])) if swaps else float("nan"),
            "swap_wrong": float(np.mean([s[1] for s in swaps])) if swaps else float("nan"),
            "swap_n": float(len(swaps))}


def paired_bracket(per_seed: dict[str, dict[int, list[dict]]]) -> dict[str, float]:
    """Oracle minus oracle-wrong beyond colour recall per schedule, on the moments readable
    in both arms: mean, 95% t interval, schedules."""
    diffs = []
    for seed, rows in per_seed["oracle"].items():
        wrong = {r["block"]: r for r in per_seed["oracle-wrong"][seed]}
        pairs = [(r["colour"], wrong[r["block"]]["colour"]) for r in rows
                 if is_beyond(r) and "colour" in r and "colour" in wrong[r["block"]]]
        if pairs:
            diffs.append(float(np.mean([a - b for a, b in pairs])))
    n = len(diffs)
    mean = float(np.mean(diffs)) if diffs else float("nan")
    if n < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": float(n)}
    half = stats.t.ppf(0.975, n - 1) * float(np.std(diffs, ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": float(n)}


def _seed_rows(path: str, seeds: Sequence[int], split: str, frames: int
               ) -> dict[str, dict[int, list[dict]]]:
    """Rows of every arm for some schedules, in a worker process (one thread)."""
    from toolkit.worlds.sprites.model import load_world

    torch.set_num_threads(1)
    model = load_world(path)
    bf = model.spec.block_frames
    return {name: {seed: arm_rows(model, strategy, seed, split, frames) for seed in seeds}
            for name, strategy in arms(bf).items()}


def measure(model: Any, seeds: Sequence[int] = GATE_SEEDS, split: str = "heldout",
            frames: int = FRAMES, progress: bool = True, workers: int = 1,
            path: str | None = None) -> dict[str, Any]:
    """Run the four arms on every schedule and apply the gates (``workers`` > 1: processes
    splitting the schedules, each loading the weights at ``path``; same numbers)."""
    bf = model.spec.block_frames
    per_seed: dict[str, dict[int, list[dict]]] = {name: {} for name in arms(bf)}
    if workers > 1 and path:
        from concurrent.futures import ProcessPoolExecutor

        parts = [list(seeds)[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            for got in pool.map(_seed_rows, [path] * workers, parts, [split] * workers,
                                [frames] * workers):
                for name, by in got.items():
                    per_seed[name].update(by)
        per_seed = {name: dict(sorted(by.items())) for name, by in per_seed.items()}
    else:
        strategies = arms(bf)  # each rollout binds (and so resets) its strategy
        jobs = [(name, seed) for seed in seeds for name in strategies]
        for name, seed in tqdm(jobs, desc=f"gates ({split})", disable=not progress):
            per_seed[name][seed] = arm_rows(model, strategies[name], seed, split, frames)
    summary = {name: summarise(by) for name, by in per_seed.items()}
    bracket = paired_bracket(per_seed)
    checks = {
        f"oracle kappa (beyond, colour) >= {ORACLE_KAPPA}":
            summary["oracle"]["kappa_beyond"] >= ORACLE_KAPPA,
        f"oracle - oracle-wrong (beyond, colour) >= {BRACKET}, lower 95% >= {BRACKET_LOW}":
            bracket["mean"] >= BRACKET and bracket["low"] >= BRACKET_LOW,
        f"swap: needed block's colour >= {SWAP}": summary["swap"]["swap_needed"] >= SWAP,
        f"no memory (sink + recent): kappa (beyond, colour) <= {NO_MEMORY_KAPPA}":
            summary["no-memory"]["kappa_beyond"] <= NO_MEMORY_KAPPA,
    }
    checks = {k: bool(v) for k, v in checks.items()}
    bracket = {k: float(v) for k, v in bracket.items()}
    return {"split": split, "seeds": list(seeds), "frames": frames, "arms": summary,
            "bracket": bracket, "checks": checks, "passed": all(checks.values())}


def record(path: str | Path, seeds: Sequence[int] = GATE_SEEDS, split: str = "heldout",
           key: str = "gates_24x", workers: int = 1) -> dict[str, Any]:
    """Measure a memory model's 24x gates on one thread and write them into its card."""
    from toolkit.models.weights import find_weights
    from toolkit.worlds.sprites.model import load_world

    path = find_weights(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = measure(load_world(path), seeds, split, workers=workers, path=str(path))
    finally:
        torch.set_num_threads(threads)
    card_path = Path(path).with_suffix(".json")
    card = json.loads(card_path.read_text())
    card[key] = result
    card_path.write_text(json.dumps(card, indent=1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m toolkit.worlds.memory.gates WEIGHTS [--split val] [--seeds N]``: measure the
    24x gates of a memory model. On the held-out gate set (the default) the result is written
    into the model's card: read it once per candidate model; choose on ``--split val``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m toolkit.worlds.memory.gates",
                                     description=main.__doc__)
    parser.add_argument("weights")
    parser.add_argument("--split", choices=("heldout", "val"), default="heldout")
    parser.add_argument("--seeds", type=int, default=len(GATE_SEEDS))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.split == "heldout":
        result = record(args.weights, GATE_SEEDS[:args.seeds], workers=args.workers)
    else:
        from toolkit.worlds.sprites.model import load_world

        torch.set_num_threads(1)
        result = measure(load_world(args.weights), VAL_SEEDS[:args.seeds], "val")
    for name, arm in result["arms"].items():
        print(f"{name:>13}: colour {arm['colour']:.3f} beyond {arm['beyond']:.3f} "
              f"chance {arm['chance']:.3f} kappa(beyond) {arm['kappa_beyond']:.3f} "
              f"swap needed {arm['swap_needed']:.3f} (n={arm['swap_n']:.0f})")
    b = result["bracket"]
    print(f"oracle - oracle-wrong (beyond): {b['mean']:.3f} [{b['low']:.3f}, {b['high']:.3f}] "
          f"over {b['n']:.0f} schedules")
    for check, ok in result["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
