"""The ``rollbench`` command.

    rollbench run model=world strategy=sink strategy.sink_frames=4 video.latent_frames=480
    rollbench ls
    rollbench bench video.latent_frames=480
    rollbench bench model=world strategies=[sink,packforcing] codecs=[none,int8,int4,int2,residual2]
    rollbench grid experiment=strategies_24x
    rollbench grid experiment=mine experiments_dir=~/my-experiments   # DIR/experiment/mine.yaml
    rollbench sweep sweep=packforcing_budget
    rollbench report experiment=strategies_24x
    rollbench findings workers=2
    rollbench memory model=wan-t2v-1.3b strategy=packforcing video.seconds=120
    rollbench train world-model
    rollbench --wide bench            # every table column at full width

Errors in the input (a typo'd key, a value that cannot work, a tracking server that does
not answer) print one line naming the value and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

# Only light modules at the top: ``rollbench --help`` and ``rollbench ls`` must answer fast;
# torch, MLflow, Optuna and diffusers are imported inside the commands that use them.
from toolkit.terminal import console, print_table, set_wide


def cmd_run(overrides: list[str]) -> int:
    """One tracked rollout; config errors fail before any work (exit 2)."""
    from toolkit.runs.config import build, compose_config
    from toolkit.runs.jobs import run_job

    cfg = compose_config(overrides)
    result = run_job(cfg, verbose=True, skip_finished=False, built=build(cfg))
    if result.status == "busy":
        console.print(f"not run: {result.error}", soft_wrap=True, markup=False)
    if result.status != "finished":
        return 1
    console.print(f"outputs: {result.run_dir}"
                  + (f" (MLflow run {result.run_id})" if result.run_id else ""))
    return 0


def cmd_grid(overrides: list[str]) -> int:
    """``rollbench grid experiment=NAME [overrides]``: an experiment's grid, resumable."""
    from toolkit.runs.grid import launch

    return launch(overrides)


def cmd_sweep(overrides: list[str]) -> int:
    """``rollbench sweep sweep=NAME [overrides]``: an Optuna study over a search space."""
    from toolkit.runs.sweep import cmd_sweep as sweep

    return sweep(overrides)


def cmd_report(overrides: list[str]) -> int:
    """``rollbench report experiment=NAME [out=DIR]``: the compare-strategies report."""
    from reports.compare import cmd_report as report

    return report(overrides)


def cmd_findings(args: list[str]) -> int:
    """``rollbench findings [quick=true] [workers=2]``: the paper's claims, re-measured.

    Plans and runs the jobs through ``toolkit.findings``, then renders the page through
    ``reports.findings`` from the stored runs of the planned run keys.
    """
    import json

    from reports.findings import analyse, provenance, write
    from toolkit.findings import claim_verdict, keys_of
    from toolkit.findings.registration import registration
    from toolkit.findings.run import execute, prepare, seeds_line, wall_line
    from toolkit.runs.stores import mask
    from toolkit.runs.tracking import git_state

    start = time.perf_counter()
    inv = prepare(args)
    git = git_state()
    head = git["git_revision"][:12] + (" (uncommitted changes)" if git["git_dirty"] == "true"
                                       else "")
    if not inv.render_only:
        console.print(f"findings: {len(inv.jobs)} runs ({len(inv.spec.arms_used())} arms x "
                      f"{inv.seeds} seeds, {inv.spec.latent_frames} latent frames), "
                      f"{inv.workers} worker(s); tracking {mask(inv.uri)}")
        execute(inv, head, start)
    findings = analyse(inv.spec, keys_of(inv.jobs), inv.uri)
    if inv.pilot:
        return _pilot(inv, findings)
    wall = time.perf_counter() - start
    last = json.loads(inv.timing.read_text()) if inv.timing.exists() else None
    header = [f"- Command: `{inv.command}`", f"- Git revision: `{head}`",
              *wall_line(wall, inv.render_only, last), *provenance(findings, head),
              *registration(inv.spec.path, findings.runs["commit"].tolist(),
                            bool(findings.runs["dirty"].any())),
              seeds_line(inv)]
    out = write(findings, inv.out, header)
    console.print(f"findings: {out} ({wall / 60:.1f} min)")
    for claim in inv.spec.claims:
        console.print(f"  {claim.id}: {claim_verdict(findings.results[claim.id])}")
    return 0 if not findings.missing else 1


def _pilot(inv, findings) -> int:
    """The pilot's seed count per gate and primary test (a table, and JSON at ``out=``)."""
    import json

    from rich.table import Table

    from toolkit.findings.power import pilot_rows

    rows = pilot_rows(inv.spec, findings.table)
    table = Table(title=f"pilot: {inv.seeds} seeds, detecting {inv.spec.pilot.effect:g} with "
                        "80% power")
    for col in ("claim", "role", "measure", "n", "mean", "sd", "sd 80% upper", "alpha", "seeds"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["claim"], r["role"], r["measure"], str(r["n"]), f"{r['mean']:.3f}",
                      f"{r['sd']:.3f}", f"{r['sd_upper']:.3f}", f"{r['alpha']:.3g}",
                      str(r["seeds"]))
    console.print(table)
    if inv.out.suffix == ".json":
        inv.out.parent.mkdir(parents=True, exist_ok=True)
        inv.out.write_text(json.dumps({"command": inv.command, "prompts": [
            inv.spec.pilot.prompts()[0], inv.spec.pilot.prompts()[-1]], "rows": rows},
            indent=1) + "\n")
        console.print(f"findings: pilot written to {inv.out}")
    return 0 if not findings.missing else 1


def cmd_memory(overrides: list[str]) -> int:
    """``rollbench memory model=wan-t2v-1.3b strategy=... video.seconds=N`` (meta tensors)."""
    from toolkit.bench.kv import cmd_memory as memory

    return memory(overrides)


def cmd_throughput(overrides: list[str]) -> int:
    """``rollbench throughput``: ms per block of a rollout beside a plain loop of its linear
    layers (same shapes), measured side by side in one process."""
    from toolkit.bench.throughput import cmd_throughput as throughput

    return throughput(overrides)


def cmd_relog(args: list[str]) -> int:
    """``rollbench relog DIR``: log run directories whose tracking failed."""
    from toolkit.runs.tracking import cmd_relog as relog

    return relog(args)


def cmd_realbench(overrides: list[str]) -> int:
    """Real-size (GPU) bench of any model: latency, KV bytes, CUDA peak, OOM-safe."""
    from toolkit.bench.realsize import cmd_realbench as realbench

    return realbench(overrides)


def cmd_ls(args: list[str]) -> int:
    """Strategies, compressors, worlds, metrics, experiments, sweeps and recipes, with where each
    lives (``experiments_dir=DIR`` adds a user's own experiments and sweeps)."""
    from toolkit.metrics import METRICS
    from toolkit.plugins import WORLDS
    from toolkit.registry import REGISTRIES, STRATEGIES, where
    from toolkit.runs.config import ABLATIONS, build_strategy, group_files
    from toolkit.runs.grid import experiments
    from toolkit.runs.sweep import sweeps

    print_table("strategies", ("name", "defined in", "hyperparameters"), [
        (name, where(cls), ", ".join(f"{k}={v!r}" for k, v in
                                     build_strategy({"_target_": name}).hparams().items()))
        for name, cls in STRATEGIES.items().items()])
    if "compressor" in REGISTRIES:  # PackForcing's, registered with the strategies
        print_table("compressors (strategy.compressor)", ("name", "defined in"),
                    [(n, where(c)) for n, c in REGISTRIES["compressor"].items().items()])
    print_table("worlds", ("name", "model presets", "what"), [
        (n, ", ".join(w.presets), w.description) for n, w in WORLDS.items().items()])
    print_table("metrics", ("name", "better", "unit", "kind"), [
        (n, m.direction, m.unit, m.kind) for n, m in METRICS.items().items()])
    print_table("experiments (rollbench grid experiment=NAME)", ("name", "question"),
                list(experiments(args).items()))
    print_table("sweeps (rollbench sweep sweep=NAME)", ("name",), [(n,) for n in sweeps(args)])
    print_table("training recipes (rollbench train NAME)", ("name", "config"),
                [(n, str(p.relative_to(ABLATIONS.parent)))
                 for n, p in group_files("train").items()])
    for group in ("model", "strategy", "compressor"):
        console.print(f"[bold]{group} presets[/bold]: {', '.join(group_files(group, args))}")
    console.print("your own experiments and sweeps: experiments_dir=DIR (DIR/experiment/, "
                  "DIR/sweep/); see README")
    return 0


def cmd_bench(overrides: list[str]) -> int:
    """Per strategy: ms per block at the start and end of a long rollout, and peak KV bytes;
    with ``codecs=[none,int8,...]``: ms per block under each KV codec against none (``blocks=``
    per rollout, default 12)."""
    from toolkit.bench.kv import _listed
    from toolkit.core.rollout import rollout
    from toolkit.runs.config import build, build_codec, compose_config
    from toolkit.runs.jobs import default_prompts, print_summaries, summarise

    overrides, names = _listed(list(overrides), "strategies")
    overrides, codecs = _listed(overrides, "codecs")
    overrides, blocks = _listed(overrides, "blocks")
    names = names or ["full", "window", "sink"]
    if codecs is not None:
        from toolkit.bench.codecs import cmd_codec_speed
        from toolkit.errors import ConfigError

        try:
            n = int(blocks[0]) if blocks else 12
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"blocks={blocks[0]}: must be a whole number >= 1")
        console.print(cmd_codec_speed(overrides, names, codecs, n))
        return 0
    rows = []
    for name in names:
        cfg = compose_config([*overrides, f"strategy={name}", "progress=false"])
        model, strategy = build(cfg)
        start = time.perf_counter()
        out = rollout(model, strategy, default_prompts(model, cfg), cfg.video.latent_frames,
                      seed=cfg.seed, decode=False, recache=str(cfg.get("recache") or "none"),
                      codec=build_codec(cfg))
        rows.append((name, summarise(out, time.perf_counter() - start)))
    print_summaries("rollbench bench", rows)
    from toolkit.bench.kv import working_memory_table

    console.print(working_memory_table(overrides, names))
    return 0


def cmd_train(args: list[str]) -> int:
    """``rollbench train NAME [overrides]``: run a training recipe from ablations/train/."""
    from toolkit.errors import ConfigError
    from toolkit.models.recipes import RECIPES
    from toolkit.runs.config import compose_config

    if not args:
        raise ConfigError(f"rollbench train needs a recipe: {', '.join(RECIPES.names())}")
    recipe = RECIPES.get(args[0])
    return run_recipe(recipe, compose_config([], config_name=f"train/{args[0]}"), args[1:])


def run_recipe(recipe: Any, base: Any, overrides: list[str]) -> int:
    """Run a recipe on its yaml (``base``) with ``key=value`` overrides of its config fields.

    The overrides are applied to the recipe's own schema, not through Hydra's groups, so a
    field that shares its name with a config group (``compressor=hr``) is a plain field here.
    """
    import dataclasses
    import difflib

    from omegaconf import OmegaConf

    from toolkit.errors import ConfigError

    fields = {f.name for f in dataclasses.fields(recipe.config)}
    for o in overrides:
        key = o.split("=", 1)[0].split(".", 1)[0]
        if "=" not in o or key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown training setting {o!r}.{hint} Settings: "
                              f"{', '.join(sorted(fields))}")
    schema = OmegaConf.structured(recipe.config)
    merged = OmegaConf.merge(schema, base, OmegaConf.from_dotlist(list(overrides)))
    console.print(f"weights: {recipe.run(OmegaConf.to_object(merged))}")
    return 0


def cmd_bench_any(overrides: list[str]) -> int:
    """``bench``: the CPU bench, or the real-size one for CUDA runs and real models."""
    from toolkit.bench.realsize import wants_realbench

    return cmd_realbench(overrides) if wants_realbench(overrides) else cmd_bench(overrides)


def cmd_docs(overrides: list[str]) -> int:
    """``docs [check=true]``: the README's and docs' marked figures, regenerated or checked."""
    from toolkit.tools.docs import cmd_docs as docs

    return docs(overrides)


COMMANDS = {"run": cmd_run, "ls": cmd_ls, "bench": cmd_bench_any, "train": cmd_train,
            "grid": cmd_grid, "sweep": cmd_sweep, "memory": cmd_memory, "relog": cmd_relog,
            "realbench": cmd_realbench, "report": cmd_report, "findings": cmd_findings,
            "throughput": cmd_throughput, "docs": cmd_docs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rollbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wide", action="store_true",
                        help="print every table column at full width (default: fit the terminal)")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. strategy=sink")
    args = parser.parse_args(argv)
    set_wide(args.wide)
    try:
        return COMMANDS[args.command](args.overrides)
    except KeyboardInterrupt:
        console.print(f"interrupted: finished runs are recorded; run `rollbench {args.command}"
                      f"{' ' if args.overrides else ''}{' '.join(args.overrides)}` again to "
                      "resume (finished run keys are skipped)", soft_wrap=True, markup=False)
        return 130
    except Exception as err:
        line = user_error(err)
        if line is None:
            raise
        from rich.markup import escape

        from toolkit.runs.stores import mask

        console.print(f"[red]error:[/red] {escape(mask(line))}", soft_wrap=True)
        return 2


def user_error(err: Exception) -> str | None:
    """The one line to print for an error of the user's input; None for a bug (re-raised).

    Config errors, unknown names, bad values, Hydra's own composition errors and a tracking
    store that cannot be reached are the user's to fix; anything else keeps its traceback.
    """
    from toolkit.registry import UnknownName

    if isinstance(err, UnknownName | ValueError):
        return with_hint(" ".join(str(err).split()))
    if isinstance(err, ConnectionError):
        return f"{type(err).__name__}: {' '.join(str(err).split())}"
    if type(err).__module__.startswith(("hydra", "omegaconf")):
        return config_error(str(err))
    return None


#: Hydra messages and the hint rollbench gives instead of Hydra's own (pattern, hint).
HINTS = (("Ambiguous value for argument", "a value with commas is a list or a sweep: quote "
          "it whole, e.g. prompt='\"a red circle on navy, slow\"'"),
         ("hydra.launcher.", "hydra.launcher.* keys belong to a launcher: choose it first, "
          "e.g. hydra/launcher=joblib hydra.launcher.n_jobs=2 (or workers=2 on grids and "
          "sweeps)"),
         ("Could not override 'strategy.", "the strategy has no such field (a strategy-only "
          "key in a grid of several strategies: set it in the experiment file for that "
          "strategy, or sweep it in a grid of that strategy alone)"))


#: Hydra's own advice, wrong for rollbench's commands (cut from its messages).
ADVICE = (r" ?To append to your config use \S+", r" ?1\. To use it as a list.*$")


def with_hint(line: str) -> str:
    """A one-line message with Hydra's advice cut and rollbench's hint added, if one fits."""
    import re

    hint = next((h for pattern, h in HINTS if pattern in line), None)
    if hint is None:
        return line
    for advice in ADVICE:
        line = re.sub(advice, "", line)
    return f"{line.rstrip('. ')}. Hint: {hint}"


def config_error(message: str) -> str:
    """Hydra's (multi-line) message as one line, with :func:`with_hint`."""
    return with_hint(" ".join(f"config error: {message}".split()))


if __name__ == "__main__":
    sys.exit(main())
