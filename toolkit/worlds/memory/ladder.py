"""The horizon ladder: where each strategy falls between the memory world's bracket as the video
grows (``python -m toolkit.worlds.memory.ladder``).

Reads the runs of ``rollbench grid experiment=memory_ladder`` from a tracking store, and writes
``docs/artifacts/memory-ladder.json`` (per strategy and length: the mean over seeds of each
run's chance-corrected colour recall of returns last shown 4+ blocks back,
``recall_kappa/beyond_colour``, with the seeds' values and the readable returns) and
``docs/memory-ladder.png`` (kappa against horizon; the oracle / oracle-wrong bracket shaded).
At 1x a 5-block video has no return 4+ blocks back: unavailable, not zero.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DOCS = Path(__file__).resolve().parents[3] / "docs"
ARTIFACT = DOCS / "artifacts" / "memory-ladder.json"
PICTURE = DOCS / "memory-ladder.png"
MEASURE = "recall_kappa/beyond_colour"
COUNT = "recall_beyond/count"
BRACKET = ("oracle", "oracle-wrong")
#: Fewest readable returns (all seeds) a point is drawn and tabled with.
MIN_RETURNS = 10


def collect(uri: str, experiment: str = "memory_ladder", train_frames: int = 20
            ) -> dict[str, Any]:
    """Per strategy and length: mean kappa over seeds, the seeds' values, returns read."""
    from toolkit.runs.aggregate import load_runs

    df = load_runs(uri, experiment, finished_only=True)
    if df.empty:
        raise ValueError(f"no finished runs of experiment {experiment!r} in {uri}: run "
                         f"`rollbench grid experiment={experiment}` first")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (name, frames), group in df.groupby(["strategy", "latent_frames"]):
        values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
                  for v in group.get(MEASURE, [np.nan] * len(group))]
        seen = [v for v in values if v is not None]
        counts = group[COUNT].fillna(0).tolist() if COUNT in group else [0] * len(group)
        out.setdefault(str(name), {})[str(int(frames))] = {
            "kappa": float(np.mean(seen)) if seen else None,
            "seeds": [int(s) for s in group["seed"]], "values": values,
            "returns": float(np.sum(counts))}
    lengths = sorted({int(f) for s in out.values() for f in s})
    return {"experiment": experiment, "measure": MEASURE, "train_frames": train_frames,
            "lengths": lengths, "strategies": dict(sorted(out.items()))}


def draw(data: dict[str, Any], path: Path = PICTURE) -> Path:
    """Kappa against horizon (x of the training clip), the bracket shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = data["train_frames"]
    fig, ax = plt.subplots(figsize=(9.5, 4.4), dpi=110)

    def series(name: str) -> tuple[list[float], list[float]]:
        rows = data["strategies"].get(name, {})
        pts = sorted((int(f) / train, r["kappa"]) for f, r in rows.items()
                     if r["kappa"] is not None and r["returns"] >= MIN_RETURNS)
        return [p[0] for p in pts], [p[1] for p in pts]

    (x_hi, hi), (x_lo, lo) = series(BRACKET[0]), series(BRACKET[1])
    if x_hi and x_hi == x_lo:
        ax.fill_between(x_hi, lo, hi, color="0.85", label="bracket: oracle-wrong .. oracle")
    for name in data["strategies"]:
        xs, ys = series(name)
        style = ({"color": "black", "linestyle": "--" if name == BRACKET[0] else ":"}
                 if name in BRACKET else {"marker": "o"})
        ax.plot(xs, ys, label=name, linewidth=1.4, markersize=3.5, **style)
    ax.axhline(0.0, color="0.4", linewidth=0.8)
    ax.set_xscale("log", base=2)
    shown = [int(f) for f in data["lengths"] if int(f) > train]
    ax.set_xticks([f / train for f in shown], [f"{f // train}x" for f in shown])
    ax.set_xlabel("video length (x the 20-frame training clip)")
    ax.set_ylabel("kappa of colour recall (returns 4+ blocks back)")
    ax.set_title("memory ladder: chance-corrected recall against length (mean of seeds; "
                 f"points with {MIN_RETURNS}+ returns)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def table(data: dict[str, Any]) -> str:
    """Markdown: kappa per strategy (rows) and length (columns), bracket rows first."""
    lengths = [f for f in data["lengths"] if int(f) > data["train_frames"]]
    head = " | ".join(f"{int(f) // data['train_frames']}x" for f in lengths)
    out = ["", f"| strategy | {head} |", "|---|" + "---|" * len(lengths)]
    names = [n for n in BRACKET if n in data["strategies"]]
    names += [n for n in data["strategies"] if n not in BRACKET]
    for name in names:
        cells = []
        for f in lengths:
            r = data["strategies"][name].get(str(f))
            if r is None or r["kappa"] is None:
                cells.append("-")
            elif r["returns"] < MIN_RETURNS:
                cells.append(f"({r['returns']:.0f})")
            else:
                cells.append(f"{r['kappa']:.2f} ({r['returns']:.0f})")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    per_length = {f: max(len(rows[str(f)]["seeds"]) for rows in data["strategies"].values()
                         if str(f) in rows) for f in lengths}
    seeds = ", ".join(f"{int(f) // data['train_frames']}x {n}" for f, n in per_length.items())
    out.append(f"\nkappa of `{data['measure']}`, mean over run seeds ({seeds}) (in brackets: the "
               f"readable returns 4+ blocks back behind it, all seeds; under {MIN_RETURNS} the "
               "value is not shown); `python -m toolkit.worlds.memory.ladder`.")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.worlds.memory.ladder",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default="sqlite:///runs/mlflow.db",
                        help="tracking store of the memory_ladder grid")
    parser.add_argument("--experiment", default="memory_ladder")
    args = parser.parse_args(argv)
    data = {**collect(args.uri, args.experiment)}
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(data, indent=1))
    print(table(data))
    print(f"wrote {ARTIFACT} and {draw(data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
