"""The ``rollbench`` command.

    rollbench run model=world strategy=sink strategy.sink_frames=4 video.latent_frames=480
    rollbench ls
    rollbench bench video.latent_frames=480
    rollbench grid experiment=strategies_24x
    rollbench sweep sweep=packforcing_budget
    rollbench report experiment=strategies_24x
    rollbench findings workers=2
    rollbench memory model=wan-t2v-1.3b strategy=packforcing video.seconds=120
    rollbench train world-model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf
from rich.table import Table

from toolkit.config import ConfigError, build, build_strategy, compose_config
from toolkit.jobs import console, default_prompts, summary
from toolkit.registry import STRATEGIES, UnknownName, where
from toolkit.rollout import rollout


def cmd_run(overrides: list[str]) -> int:
    """One tracked rollout; config errors fail before any work (exit 2)."""
    from toolkit.jobs import run_job

    cfg = compose_config(overrides)
    result = run_job(cfg, verbose=True, skip_finished=False, built=build(cfg))
    if result.status != "finished":
        return 1
    console.print(f"outputs: {result.run_dir}"
                  + (f" (MLflow run {result.run_id})" if result.run_id else ""))
    return 0


def cmd_grid(overrides: list[str]) -> int:
    """``rollbench grid experiment=NAME [overrides]``: an experiment's grid, resumable."""
    from toolkit.grid import launch

    return launch(overrides)


def cmd_sweep(overrides: list[str]) -> int:
    """``rollbench sweep sweep=NAME [overrides]``: an Optuna study over a search space."""
    from toolkit.sweep import cmd_sweep as sweep

    return sweep(overrides)


def cmd_report(overrides: list[str]) -> int:
    """``rollbench report experiment=NAME [out=DIR]``: the compare-strategies report."""
    from reports.compare import cmd_report as report

    return report(overrides)


def cmd_findings(args: list[str]) -> int:
    """``rollbench findings [quick=true] [workers=2]``: the paper's claims, re-measured."""
    from toolkit.findings import cmd_findings as findings

    return findings(args)


def cmd_memory(overrides: list[str]) -> int:
    """``rollbench memory model=wan-t2v-1.3b strategy=... video.seconds=N`` (meta tensors)."""
    from toolkit.memory import cmd_memory as memory

    return memory(overrides)


def cmd_relog(args: list[str]) -> int:
    """``rollbench relog DIR``: log run directories whose tracking failed."""
    from toolkit.tracking import cmd_relog as relog

    return relog(args)


def cmd_realbench(overrides: list[str]) -> int:
    """Real-size (GPU) bench of any model: latency, KV bytes, CUDA peak, OOM-safe."""
    from toolkit.realbench import cmd_realbench as realbench

    return realbench(overrides)


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def cmd_ls(_: list[str]) -> int:
    """Strategies, compressors, metrics, experiments, sweeps and recipes, with where each lives."""
    from strategies.compressors import COMPRESSORS
    from toolkit.grid import experiments
    from toolkit.metrics import METRICS
    from toolkit.recipes import RECIPES
    from toolkit.sweep import SWEEPS

    console.print(_table("strategies", ("name", "defined in", "hyperparameters"), [
        (name, where(cls), ", ".join(f"{k}={v!r}" for k, v in
                                     build_strategy({"_target_": name}).hparams().items()))
        for name, cls in STRATEGIES.items().items()]))
    console.print(_table("compressors (strategy.compressor)", ("name", "defined in"),
                         [(n, where(c)) for n, c in COMPRESSORS.items().items()]))
    console.print(_table("metrics", ("name", "better", "unit", "kind"), [
        (n, m.direction, m.unit, m.kind) for n, m in METRICS.items().items()]))
    console.print(_table("experiments (rollbench grid experiment=NAME)", ("name", "question"),
                         list(experiments().items())))
    console.print(_table("sweeps (rollbench sweep sweep=NAME)", ("name",),
                         [(p.stem,) for p in sorted(SWEEPS.glob("*.yaml"))]))
    console.print(_table("training recipes (rollbench train NAME)", ("name", "function"),
                         [(n, where(r.run)) for n, r in RECIPES.items().items()]))
    configs = Path(__file__).resolve().parent.parent / "ablations"
    for group in ("model", "strategy", "compressor"):
        names = sorted(f.stem for f in (configs / group).glob("*.yaml"))
        console.print(f"[bold]{group} presets[/bold]: {', '.join(names)}")
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


def cmd_bench_any(overrides: list[str]) -> int:
    """``bench``: the CPU bench, or the real-size one for CUDA runs and real models."""
    from toolkit.realbench import wants_realbench

    return cmd_realbench(overrides) if wants_realbench(overrides) else cmd_bench(overrides)


COMMANDS = {"run": cmd_run, "ls": cmd_ls, "bench": cmd_bench_any, "train": cmd_train,
            "grid": cmd_grid, "sweep": cmd_sweep, "memory": cmd_memory, "relog": cmd_relog,
            "realbench": cmd_realbench, "report": cmd_report, "findings": cmd_findings}


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
