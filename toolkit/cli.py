"""The ``rollbench`` command: run, ls, bench.

    rollbench run model=tiny-random strategy=sink strategy.sink_frames=4 video.latent_frames=40
    rollbench ls
    rollbench bench video.latent_frames=240
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from toolkit.config import ConfigError, build, build_strategy, compose_config
from toolkit.registry import STRATEGIES, UnknownName, where
from toolkit.rollout import Rollout, RolloutError, rollout

console = Console()


def default_prompts(model, cfg) -> list:
    """The prompt of a run: the config's, else the model's own default for the seed."""
    if cfg.prompt is not None:
        return [cfg.prompt]
    pick = getattr(model, "default_prompt", None)
    return [pick(cfg.seed) if pick else f"seed {cfg.seed}"]


def save_rollout(out: Rollout, cfg, run_dir: Path) -> None:
    """Write config, trace, latents and (when decoded) mp4 + filmstrip under run_dir."""
    from toolkit.media import filmstrip, write_mp4

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    out.trace.save(run_dir / "trace.json")
    torch.save(out.latents.cpu(), run_dir / "latents.pt")
    if out.frames is not None:
        video = out.frames[0]
        write_mp4(video, run_dir / "video.mp4")
        step = max(1, len(video) // 16)
        filmstrip([video[::step][:16]], run_dir / "filmstrip.png")


def summary(out: Rollout, seconds: float) -> Table:
    blocks = out.trace.blocks
    tenth = max(1, len(blocks) // 10)
    first = sum(sum(b.seconds.values()) for b in blocks[:tenth]) / tenth
    last = sum(sum(b.seconds.values()) for b in blocks[-tenth:]) / tenth
    peak = max(b.total_bytes for b in blocks)
    table = Table(title=f"rollout: {out.trace.strategy}")
    for col in ("blocks", "frames", "wall s", "ms/block first 10%", "ms/block last 10%",
                "last/first", "peak KV MiB", "partitions at end"):
        table.add_column(col)
    parts = ", ".join(f"{k}={v / 2**20:.2f}" for k, v in blocks[-1].bytes.items())
    table.add_row(str(len(blocks)), str(out.latents.shape[2]), f"{seconds:.1f}",
                  f"{first * 1e3:.1f}", f"{last * 1e3:.1f}", f"{last / first:.2f}",
                  f"{peak / 2**20:.2f}", parts)
    return table


def cmd_run(overrides: list[str]) -> int:
    cfg = compose_config(overrides)
    model, strategy = build(cfg)
    run_dir = Path(cfg.run_root) / "rollouts" / (
        f"{time.strftime('%Y%m%d-%H%M%S')}-{type(strategy).__name__.lower()}-s{cfg.seed}")
    start = time.perf_counter()
    try:
        out = rollout(model, strategy, default_prompts(model, cfg), cfg.video.latent_frames,
                      seed=cfg.seed, progress=cfg.progress)
    except RolloutError as err:
        run_dir.mkdir(parents=True, exist_ok=True)
        err.trace.save(run_dir / "trace.partial.json")
        console.print(f"[red]{err}[/red] (trace so far: {run_dir / 'trace.partial.json'})")
        return 1
    save_rollout(out, cfg, run_dir)
    console.print(summary(out, time.perf_counter() - start))
    console.print(f"outputs: {run_dir}")
    return 0


def cmd_ls(_: list[str]) -> int:
    table = Table(title="strategies")
    table.add_column("name")
    table.add_column("defined in")
    table.add_column("hyperparameters")
    for name, cls in STRATEGIES.items().items():
        params = ", ".join(f"{k}={v!r}" for k, v in build_strategy({"_target_": name})
                           .hparams().items())
        table.add_row(name, where(cls), params)
    console.print(table)
    configs = Path(__file__).resolve().parent.parent / "ablations"
    for group in sorted(p for p in configs.iterdir() if p.is_dir() and not p.name.startswith("_")):
        names = sorted(f.stem for f in group.glob("*.yaml"))
        console.print(f"[bold]{group.name}[/bold]: {', '.join(names)}")
    return 0


def cmd_bench(overrides: list[str]) -> int:
    """Per strategy: ms per block at the start and end of a long rollout, and peak KV bytes."""
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("strategies=")]
    overrides = [o for o in overrides if not o.startswith("strategies=")]
    names = names[0].strip("[]").split(",") if names else ["full", "window", "sink"]
    table = Table(title="rollbench bench")
    for col in ("strategy", "blocks", "ms/block first 10%", "ms/block last 10%", "last/first",
                "peak KV MiB", "wall s"):
        table.add_column(col)
    for name in names:
        cfg = compose_config([*overrides, f"strategy={name}", "progress=false"])
        model, strategy = build(cfg)
        start = time.perf_counter()
        out = rollout(model, strategy, default_prompts(model, cfg), cfg.video.latent_frames,
                      seed=cfg.seed, decode=False)
        wall = time.perf_counter() - start
        row = summary(out, wall).columns
        cells = [c._cells[0] for c in row]
        table.add_row(name, cells[0], cells[3], cells[4], cells[5], cells[6], cells[2])
    console.print(table)
    return 0


def cmd_train(args: list[str]) -> int:
    """``rollbench train NAME [overrides]``: run a training recipe from ablations/train/."""
    from toolkit.recipes import RECIPES

    if not args:
        raise ConfigError(f"rollbench train needs a recipe: {', '.join(RECIPES.names())}")
    recipe = RECIPES.get(args[0])
    cfg = compose_config(args[1:], config_name=f"train/{args[0]}")
    schema = OmegaConf.structured(recipe.config)
    merged = OmegaConf.to_object(OmegaConf.merge(schema, cfg))
    console.print(f"weights: {recipe.run(merged)}")
    return 0


COMMANDS = {"run": cmd_run, "ls": cmd_ls, "bench": cmd_bench, "train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rollbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. strategy=sink")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args.overrides)
    except (ConfigError, UnknownName, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    except Exception as err:  # Hydra's own compose errors (unknown group option, typo'd key)
        if type(err).__module__.startswith(("hydra", "omegaconf")):
            console.print(f"[red]config error:[/red] {err}")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
