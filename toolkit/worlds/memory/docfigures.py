"""The memory world's figures that the README and docs/memory-world.md quote (``rollbench
docs``, ``World.figures``).

Each generator reads the memory candidate's card (whose gates the tests re-measure), the
schedules themselves, or re-measures the shipped PackForcing fine-tunes; the docs tool
(``toolkit.tools.docs``) writes its output between the ``fig:NAME`` markers.
"""

from __future__ import annotations

from toolkit.tools.docs import card


def memory_returns() -> str:
    """Mid-only returns of a 24x rollout (120 blocks), mean over the 8 held-out schedules."""
    from statistics import mean

    from toolkit.worlds.memory.scenes import return_moments, schedule_for_seed

    counts = [[m.needed_in(1, 1) == "mid" for m in return_moments(schedule_for_seed(s, 120))]
              for s in range(8)]
    return (f"{mean(sum(c) for c in counts):.1f} of {mean(len(c) for c in counts):.1f} returns "
            "per 24x rollout, mean of the 8 held-out schedules")


def memory_colour() -> str:
    """The memory candidate's colour recall at 1x against its gate, and its training time."""
    from toolkit.worlds.memory.evaluate import COLOUR_GATE

    c = card("world-memory")
    return (f"{c['gates']['recall_full']['colour']:.2f} of held-out returns, under the "
            f"{COLOUR_GATE} gate ({c['steps']:,} CPU steps, {c['wall_seconds'] / 3600:.1f} hours")


def memory_gates_table() -> str:
    """The memory candidate's gate table (its card's gates, which the tests re-measure)."""
    from toolkit.worlds.memory.evaluate import (
        CHANCE_MARGIN,
        COLOUR_GATE,
        SHAPE_MARGIN,
        USE_RATIO_GATE,
    )

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


def compressor_use() -> str:
    """The returning block's error with the compressed mid hidden over with it, of each
    memory-world PackForcing fine-tune, re-measured on the shipped weights."""
    from toolkit.worlds.sprites.docfigures import remeasured_context_use

    return " / ".join(f"{remeasured_context_use(f'world-memory-pf-{v}')['return_ratio']:.2f}x"
                      for v in ("hr", "lr", "dual"))


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


def memory_v2_gates_1x() -> str:
    """The 1x gates of the memory world's second model, from its card."""
    g = card("world-memory-v2")["gates"]
    full, masked, use = g["recall_full"], g["recall_masked"], g["context_use"]
    return (f"context use {use['use_ratio']:.2f}x; colour recall at 1x under `full` "
            f"{full['colour']:.2f} (chance {full['chance_colour']:.2f}); with the needed blocks "
            f"masked {masked['colour']:.2f} (chance {masked['chance_colour']:.2f}); "
            f"{'all four 1x gates pass' if g['passed'] else 'a 1x gate fails'}")


def memory_selection_24x() -> str:
    """Top-k hit rates at 24x (``toolkit.worlds.memory.hits``, its committed artifact)."""
    import json

    from toolkit.worlds.memory.hits import ARTIFACT

    data = json.loads(ARTIFACT.read_text())
    out = ["", "| selection | holds a needed block (return x layer) | of returns 4+ back | "
           "recall given a hit / a miss | kappa (beyond, colour) |", "|---|---|---|---|---|"]
    for name, r in data["arms"].items():
        out.append(f"| {name} | {r['hit']:.2f} | {r['hit_beyond']:.2f} | "
                   f"{r['recall_hit']:.2f} / {r['recall_miss']:.2f} | "
                   f"{r['kappa_beyond_colour']:.2f} |")
    seeds = ", ".join(str(s) for s in data["seeds"])
    out.append(f"\n{data['split']} schedules of run seeds {seeds}, 480 latent frames each "
               "(`python -m toolkit.worlds.memory.hits`).")
    return "\n".join(out) + "\n"


def memory_v2_validation() -> str:
    """Rows of the v2 run's validation curve (layout recall on val contexts), from its card."""
    rows = [r for r in card("world-memory-v2")["validation_curve"] if r["step"] % 1000 == 0]
    return "\n" + "\n".join(
        f"| {r['step']:,} | {r['val_oracle']:.2f} | {r['val_wrong']:.2f} | "
        f"{r['val_swap']:.2f} ({r['val_swap_wrong']:.2f}) | "
        f"{r['val_mirror']:.2f} ({r['val_mirror_wrong']:.2f}) |" for r in rows) + "\n"



def memory_ladder() -> str:
    """The horizon ladder's table (``toolkit.worlds.memory.ladder``, its committed artifact)."""
    import json

    from toolkit.worlds.memory.ladder import ARTIFACT, table

    return table(json.loads(ARTIFACT.read_text()))


def memory_pf_v2_val() -> str:
    """The compressor fine-tunes of world-memory-v2 on validation schedules at 24x (the numbers
    the shipped two were chosen on), from ``docs/artifacts/memory-pf-v2-val.json``."""
    import json

    from toolkit.worlds.memory.hits import ARTIFACT

    data = json.loads((ARTIFACT.parent / "memory-pf-v2-val.json").read_text())
    runs = {f.removeprefix("world-memory-v2-pf-").removesuffix(".safetensors"): r
            for f, r in data["runs"].items()}
    out = ["", "| fine-tune | steps, selection loss, in-clip share | training (CPU) | top-k "
           "holds a needed block | kappa (beyond, colour), top-k | with truth selection | "
           "readable returns 4+ back |", "|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        args = dict(a.split("=", 1) for a in run["command"].split() if "=" in a)
        recipe = (f"{int(args['steps']):,}, {float(args.get('select_weight', 0)):g}, "
                  f"{1 - float(args.get('packed_share', 1)):g}")
        top = data["arms"].get(f"topk, fine-tuned {name}")
        truth = data["arms"].get(f"truth, fine-tuned {name}")
        if top is None:
            continue
        out.append(f"| `{name}` | {recipe} | {run['wall_minutes']:.0f} min | {top['hit']:.2f} | "
                   f"{top['kappa_beyond_colour']:.2f} | "
                   + (f"{truth['kappa_beyond_colour']:.2f}" if truth else "-")
                   + f" | {top['beyond_n']:.0f} |")
    return "\n".join(out) + "\n"
