"""A third world, written outside the package, runs `rollbench run`, a grid and a report.

The toy world is the README's "Write your own world" in miniature: a prompt ("a red glow"), a
model whose ``world`` names it, an analyser, a measure of its own with a metric set, a line
after each run and a section in the report; nothing in the toolkit is edited for it.
"""

import sys
import textwrap

import pytest

from toolkit.cli import main

TOY = '''
"""A toy world: a glow of one colour over noise."""

import numpy as np
import torch

from toolkit.metrics import MetricInput, metric
from toolkit.models.zoo import tiny_random
from toolkit.plugins import Section, World
from toolkit.worlds import install

COLOURS = ("red", "green", "blue")


def claims(prompt):
    return isinstance(prompt, str) and prompt.startswith("a ") and prompt.endswith(" glow") \\
        and prompt.split()[1] in COLOURS


def report(frames, prompt):
    """Per frame: is the prompt's colour the brightest channel?"""
    channel = COLOURS.index(prompt.split()[1])
    means = np.asarray(frames).mean((2, 3))  # (F, 3)
    match = (means.argmax(1) == channel).astype(float)
    return {"match": match, "colours_ok": match, "speed": np.full(len(match), np.nan)}


@metric("glow", "higher", "fraction", "scalar", ["frames", "world"])
def glow(inp: MetricInput) -> float:
    """Share of frames whose brightest channel is the prompt's colour."""
    return float(inp.analyser("report")(inp.need_frames(), inp.world_prompt())["match"].mean())


class GlowVAE(torch.nn.Module):
    """Latents (B, C, F, h, w) -> frames (B, F, 3, h, w): the first three channels, squashed."""

    def decode(self, latents):
        return torch.sigmoid(latents[:, :3].float()).transpose(1, 2)


def toy_model(seed: int = 0):
    model = tiny_random(seed=seed)
    model.vae = GlowVAE()
    model.world = "toy"
    model.default_prompt = lambda s: f"a {COLOURS[s % 3]} glow"
    return model


WORLD = install(World(
    name="toy", claims=claims, prompt_of=lambda p: p, report=report,
    description="a glow of one colour", presets=("toy",),
    metric_sets={"toy": ["glow", "fidelity", "motion", "kv_bytes", "peak_kv_bytes"]},
    summary=lambda s: f"the toy world glows {s['glow']:.2f}" if "glow" in s else None,
    sections=(Section("Glow (toy world)", ("glow",), "Frames whose brightest channel is the "
                      "prompt's colour.", curves=(("fidelity", "glow per frame", False),)),),
))
'''

MODEL = "_target_: toy_world.toy_model\nseed: 0\n"
EXPERIMENT = """# @package _global_
# Question: does a world written outside the toolkit run as a grid?
defaults:
  - override /model: toy
experiment_name: toy_grid
progress: false
tracking:
  metrics: toy
video:
  latent_frames: 4
hydra:
  sweeper:
    params:
      strategy: full,window
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy world's module and config folder; every registry it joins is restored after."""
    from toolkit.metrics import METRICS
    from toolkit.plugins import WORLDS

    for registry in (WORLDS, METRICS):
        registry.names()  # loaded first, so that the restored copy keeps the built-ins
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    (tmp_path / "toy_world.py").write_text(textwrap.dedent(TOY))
    for folder, name, text in (("model", "toy", MODEL), ("experiment", "toy_grid", EXPERIMENT)):
        (tmp_path / "mine" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "mine" / folder / f"{name}.yaml").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("toy_world", None)


def test_a_toy_world_runs_a_grid_and_a_report(toy, capsys):
    from toolkit.plugins import WORLDS

    mine, runs = toy / "mine", toy / "runs"
    assert main(["run", "model=toy", f"experiments_dir={mine}", "video.latent_frames=4",
                 "tracking.metrics=toy", f"run_root={runs}", "progress=false"]) == 0
    out = capsys.readouterr().out
    assert "the toy world glows" in out  # the job runner asked the world for its line
    assert WORLDS.get("toy").presets == ("toy",)

    assert main(["grid", "experiment=toy_grid", f"experiments_dir={mine}",
                 f"run_root={runs}"]) == 0
    assert capsys.readouterr().out.count("'status': 'finished'") == 2

    assert main(["report", "experiment=toy_grid", f"run_root={runs}",
                 f"out={toy / 'report'}"]) == 0
    md = (toy / "report" / "report.md").read_text()
    assert "## Glow (toy world)" in md and "prompt's colour" in md  # the world's section
    assert "glow" in md.split("## Glow (toy world)")[1].split("##")[0]
    assert (toy / "report" / "figures" / "fidelity.png").is_file()  # its analyser's curve
