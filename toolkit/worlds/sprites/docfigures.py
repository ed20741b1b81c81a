"""The sprite world's figures that the README quotes (``rollbench docs``, ``World.figures``).

Each generator reads the shipped model's card or re-measures the shipped weights; the docs
tool (``toolkit.tools.docs``) writes its output between the README's ``fig:NAME`` markers.
"""

from __future__ import annotations

from toolkit.tools.docs import card


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


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


def world_pf_steps() -> str:
    """Steps and wall time of the sprite world's PackForcing fine-tune (its card)."""
    c = card("world-model-pf")
    return f"{c['steps']:,} steps, {c['wall_seconds'] / 60:.0f} minutes"


def world_pf_mid_use() -> str:
    """How much hiding the compressed mid changes the loss (``mid_use``, re-measured)."""
    use = remeasured_context_use("world-model-pf")["mid_use"]
    return f"by {100 * (1 - use):.1f}% (`mid_use` {use:.3f})"


def remeasured_eval_1x() -> dict[str, float]:
    """The sprite world model's analyser scores at 1x (its card's ``eval_1x``: ``full``, 8
    held-out prompts), re-measured on the shipped weights (about 2 s on a CPU)."""
    from toolkit.worlds.sprites.model import load_world
    from toolkit.worlds.sprites.train import TrainConfig, quality

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
    from toolkit.models.weights import find_weights
    from toolkit.worlds.sprites.model import load_world
    from toolkit.worlds.sprites.pf_train import PFTrainConfig, context_use

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

