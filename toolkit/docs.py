"""The figures the README and docs quote, generated from the artifacts behind them.

A figure in a Markdown file sits between markers naming its generator::

    colour recall falls to chance, <!-- fig:memory-masked -->0.23 vs 0.19<!-- /fig -->

``rollbench docs`` rewrites every marked figure of README.md and docs/*.md from its generator
(``FIGURES``: a model card, a re-measurement on the shipped weights, the schedules themselves);
``rollbench docs check=true`` changes nothing and fails naming each figure that differs (the
test suite runs the same check, so a figure edited by hand fails it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKED = re.compile(r"<!-- fig:(?P<name>[\w-]+) -->(?P<body>.*?)<!-- /fig -->", re.DOTALL)
FIGURES: dict[str, Callable[[], str]] = {}


def figure(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Register a figure's generator under ``name`` (the marker's ``fig:NAME``)."""
    def wrap(fn: Callable[[], str]) -> Callable[[], str]:
        FIGURES[name] = fn
        return fn
    return wrap


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown files whose figures are generated: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def figure_names(text: str) -> list[str]:
    """The names of the figures marked in ``text``, in order; ValueError for an unknown one."""
    names = [m["name"] for m in MARKED.finditer(text)]
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown} in the markers; allowed: "
                         f"{sorted(FIGURES)}")
    return names


def regenerate(text: str, values: dict[str, str] | None = None) -> str:
    """``text`` with every marked figure replaced by its generator's output (``values``:
    outputs already made, by name)."""
    figure_names(text)
    made = dict(values or {})

    def fill(m: re.Match[str]) -> str:
        if m["name"] not in made:
            made[m["name"]] = FIGURES[m["name"]]()
        return f"<!-- fig:{m['name']} -->{made[m['name']]}<!-- /fig -->"

    return MARKED.sub(fill, text)


def stale(text: str, values: dict[str, str] | None = None) -> list[str]:
    """Each marked figure of ``text`` that differs from its generator: ``name: 'written' ->
    'generated'``."""
    fresh = {m["name"]: m["body"] for m in MARKED.finditer(regenerate(text, values))}
    return [f"{m['name']}: {m['body']!r} -> {fresh[m['name']]!r}"
            for m in MARKED.finditer(text) if m["body"] != fresh[m["name"]]]


def cmd_docs(overrides: list[str]) -> int:
    """``rollbench docs``: regenerate the marked figures of README.md and docs/*.md in place;
    ``check=true``: change nothing, exit 1 naming the figures that differ."""
    allowed = {"check": ("true", "false")}
    opts = dict(o.split("=", 1) for o in overrides if "=" in o)
    bad = [o for o in overrides if "=" not in o or o.split("=", 1)[0] not in allowed
           or o.split("=", 1)[1] not in allowed[o.split("=", 1)[0]]]
    if bad:
        raise ValueError(f"rollbench docs {' '.join(bad)}: allowed check=true or check=false")
    check = opts.get("check") == "true"
    values: dict[str, str] = {}
    problems = []
    for path in documents():
        text = path.read_text()
        if not MARKED.search(text):
            continue
        new = regenerate(text, values)
        changed = stale(text, values)
        rel = path.relative_to(ROOT)
        problems += [f"{rel}: {c}" for c in changed]
        if changed and not check:
            path.write_text(new)
        print(f"{rel}: {len(figure_names(text))} figures, {len(changed)} "
              f"{'differ' if check else 'rewritten'}")
    for line in problems:
        print(f"  {line}")
    return 1 if check and problems else 0


# -- the figures ---------------------------------------------------------------------------------
def card(name: str) -> dict[str, Any]:
    """A shipped model's card (``<name>.json`` beside its weights)."""
    from toolkit.world.model import WEIGHTS_DIR

    return json.loads((WEIGHTS_DIR / f"{name}.json").read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


@figure("world-1x")
def world_1x() -> str:
    """The sprite world's model at 1x, read back by the analysers (its card's ``eval_1x``,
    re-measured on the shipped weights); its training steps and time from its card."""
    c = card("world-model")
    e = remeasured_eval_1x()
    right = {"background": e["generated_background_ok_frac"],
             "sprite count": e["generated_count_ok_frac"],
             "colour": e["generated_colours_ok_frac"]}
    if len(set(right.values())) == 1:
        first = f"background, sprite count and colour right in {_pct(e['generated_count_ok_frac'])}"
    else:
        first = ", ".join(f"{k} right in {_pct(v)}" for k, v in right.items())
    return (f"{first} of frames; shape right in {_pct(e['generated_shapes_ok_frac'])} (sprites "
            f"are ragged: the model has had {c['steps']:,} CPU steps, "
            f"{c['wall_seconds'] / 60:.0f} minutes); speed {e['generated_speed_px']:.2f} "
            f"px/frame against {e['real_speed_px']:.2f} for real clips, "
            f"{_pct(e['generated_frozen_frac'])} of frames frozen")


@figure("world-pf-steps")
def world_pf_steps() -> str:
    """Steps and wall time of the sprite world's PackForcing fine-tune (its card)."""
    c = card("world-model-pf")
    return f"{c['steps']:,} steps, {c['wall_seconds'] / 60:.0f} minutes"


@figure("world-pf-mid-use")
def world_pf_mid_use() -> str:
    """How much hiding the compressed mid changes the loss (``mid_use``, re-measured)."""
    use = remeasured_context_use("world-model-pf")["mid_use"]
    return f"by {100 * (1 - use):.1f}% (`mid_use` {use:.3f})"


@figure("memory-returns")
def memory_returns() -> str:
    """Mid-only returns of a 24x rollout (120 blocks), mean over the 8 held-out schedules."""
    from statistics import mean

    from toolkit.world.scenes import return_moments, schedule_for_seed

    counts = [[m.needed_in(1, 1) == "mid" for m in return_moments(schedule_for_seed(s, 120))]
              for s in range(8)]
    return (f"{mean(sum(c) for c in counts):.1f} of {mean(len(c) for c in counts):.1f} returns "
            "per 24x rollout, mean of the 8 held-out schedules")


@figure("memory-gates")
def memory_gates() -> str:
    """The memory candidate's context-use and masked-recall gates (its card, whose gates the
    tests re-measure)."""
    g = card("world-memory")["gates"]
    return (f"hiding them raises the returning block's error "
            f"{g['context_use']['use_ratio']:.2f}x; with them masked out colour recall falls to "
            f"chance, {g['recall_masked']['colour']:.2f} vs "
            f"{g['recall_masked']['chance_colour']:.2f}")


@figure("memory-colour")
def memory_colour() -> str:
    """The memory candidate's colour recall at 1x against its gate, and its training time."""
    from toolkit.world.memory_eval import COLOUR_GATE

    c = card("world-memory")
    return (f"{c['gates']['recall_full']['colour']:.2f} of held-out returns, under the "
            f"{COLOUR_GATE} gate ({c['steps']:,} CPU steps, {c['wall_seconds'] / 3600:.1f} hours")


@figure("memory-gates-table")
def memory_gates_table() -> str:
    """The memory candidate's gate table (its card's gates, which the tests re-measure)."""
    from toolkit.world.memory_eval import CHANCE_MARGIN, COLOUR_GATE, SHAPE_MARGIN, USE_RATIO_GATE

    g = card("world-memory")["gates"]
    full, masked = g["recall_full"], g["recall_masked"]
    ok = list(g["checks"].values())  # in the order of the rows below
    readable = round(full["readable"] * full["clips"])
    shape_ok = "pass" if ok[2] else "**fail**"
    if not g["shape_testable"]:
        shape_ok += ", but not testable: continuity is under 1/3 + 0.1"
    rows = [
        ("context use: x0 error of the returning block with the needed blocks hidden / in view",
         f">= {USE_RATIO_GATE}", f"{g['context_use']['use_ratio']:.2f}",
         "pass" if ok[0] else "**fail**"),
        (f"colour recall at 1x, `full` (chance {full['chance_colour']:.2f})",
         f">= {COLOUR_GATE}",
         f"{full['colour']:.2f} ({round(full['colour'] * readable)} of {readable} readable)",
         "pass" if ok[1] else "**fail**"),
        (f"shape recall within {SHAPE_MARGIN} of the model's own shape continuity",
         f">= continuity - {SHAPE_MARGIN}",
         f"{full['shape']:.2f}, continuity {full['continuity_shape']:.2f}", shape_ok),
        ("colour recall with the needed blocks masked out (`sink`, 1 block, no window)",
         f"<= chance + {CHANCE_MARGIN}",
         f"{masked['colour']:.2f} (chance {masked['chance_colour']:.2f})",
         "pass" if ok[3] else "**fail**"),
    ]
    lines = ["| gate | required | measured | |", "|---|---|---|---|",
             *("| " + " | ".join(r) + " |" for r in rows)]
    return "\n\n" + "\n".join(lines) + "\n\n"  # blank lines: the markers stay out of the table


@figure("compressor-use")
def compressor_use() -> str:
    """The returning block's error with the compressed mid hidden over with it, of each
    memory-world PackForcing fine-tune, re-measured on the shipped weights."""
    return " / ".join(f"{remeasured_context_use(f'world-memory-pf-{v}')['return_ratio']:.2f}x"
                      for v in ("hr", "lr", "dual"))


def remeasured_eval_1x() -> dict[str, float]:
    """The sprite world model's analyser scores at 1x (its card's ``eval_1x``: ``full``, 8
    held-out prompts), re-measured on the shipped weights (about 2 s on a CPU)."""
    from toolkit.world.model import load_world
    from toolkit.world.train import TrainConfig, quality

    c = card("world-model")
    return quality(load_world("world-model.safetensors"), TrainConfig(**c["train"]),
                   seeds=c["eval_1x"]["seeds"])


def remeasured_context_use(name: str) -> dict[str, float]:
    """The context-use diagnostic of a shipped PackForcing fine-tune (``name``: its weights'
    stem, e.g. ``world-memory-pf-hr``), re-measured on its shipped world and compressor weights
    with the recipe's fixed batch (``pf_train.context_use``; about 2 s on a CPU)."""
    import torch

    from strategies.compressors import build_compressor
    from strategies.packforcing_layout import pack_layout
    from toolkit.weights import find_weights
    from toolkit.world.model import load_world
    from toolkit.world.pf_train import PFTrainConfig, context_use

    c = card(name)
    cfg = PFTrainConfig(**c["train"])
    model = load_world(f"{name}.safetensors").eval()
    comp = build_compressor(cfg.compressor, model.spec, cfg.compress_time, cfg.compress_space,
                            cfg.hr_channels, seed=cfg.seed)
    if c.get("compressor"):
        comp.load(find_weights(c["compressor"]["file"]))
    comp = comp.to(model.device).eval()
    layout = pack_layout(model.spec, comp, cfg.clip_frames, cfg.sink_frames, cfg.recent_frames,
                         cfg.spatial, cfg.clean_context)
    with torch.no_grad(), model.attach():
        return context_use(model, comp, cfg, layout)


@figure("memory-v2-gates-24x")
def memory_v2_gates_24x() -> str:
    """The 24x gates of the memory world's second model, from its card (held-out gate set)."""
    g = card("world-memory-v2")["gates_24x"]
    arms, b = g["arms"], g["bracket"]
    rows = [("`oracle` (sink + recent + last 2 needed blocks)", "oracle"),
            ("`oracle-wrong` (same layout, 2 wrong blocks)", "oracle-wrong"),
            ("`swap` (needed 3 back, wrong colour 2 back)", "swap"),
            ("no memory (`sink`, 1 block + recent 1 block)", "no-memory")]
    out = ["", "| arm | colour recall | its chance | kappa | vs the prompt's colour | returns |",
           "|---|---|---|---|---|---|"]
    for title, key in rows:
        a = arms[key]
        out.append(f"| {title} | {a['beyond']:.2f} | {a['chance_beyond']:.2f} | "
                   f"**{a['kappa_beyond']:.2f}** | {a['beyond_truth']:.2f} | "
                   f"{a['beyond_n']:.0f} |")
    out += ["", f"Bracket (oracle - oracle-wrong, per schedule, readable in both): "
            f"{b['mean']:.2f} [{b['low']:.2f}, {b['high']:.2f}] over {b['n']:.0f} schedules. "
            f"Swap returns showing the needed block's colour: {arms['swap']['swap_needed']:.2f} "
            f"(the wrong block's: {arms['swap']['swap_wrong']:.2f}; "
            f"{arms['swap']['swap_n']:.0f} returns).", "",
            "| gate | result |", "|---|---|"]
    out += [f"| {name} | {'pass' if ok else '**fail**'} |" for name, ok in g["checks"].items()]
    return "\n".join(out) + "\n"


@figure("memory-v2-gates-1x")
def memory_v2_gates_1x() -> str:
    """The 1x gates of the memory world's second model, from its card."""
    g = card("world-memory-v2")["gates"]
    full, masked, use = g["recall_full"], g["recall_masked"], g["context_use"]
    return (f"context use {use['use_ratio']:.2f}x; colour recall at 1x under `full` "
            f"{full['colour']:.2f} (chance {full['chance_colour']:.2f}); with the needed blocks "
            f"masked {masked['colour']:.2f} (chance {masked['chance_colour']:.2f}); "
            f"{'all four 1x gates pass' if g['passed'] else 'a 1x gate fails'}")
