"""The shipped memory-world models: their gates hold on the shipped weights, and runs work."""

import json

import pytest
import torch

from toolkit.worlds.memory import WEIGHTS_DIR
from toolkit.worlds.memory.evaluate import COMPRESSED_USE_GATE, USE_RATIO_GATE, memory_gates
from toolkit.worlds.sprites.model import load_world

VARIANTS = ("hr", "lr", "dual")


def _card(name: str) -> dict:
    return json.loads((WEIGHTS_DIR / name).with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def gates():
    torch.manual_seed(0)
    return memory_gates(load_world("world-memory.safetensors"), clips=64)


def test_card_states_the_gates_as_measured(gates):
    """Re-measured here (same seed, same numbers): equal to the card, pass or fail as it says."""
    card = _card("world-memory.safetensors")["gates"]
    assert card["checks"] == gates["checks"]
    assert card["passed"] == gates["passed"] == all(gates["checks"].values())
    for part in ("context_use", "recall_full", "recall_masked"):
        for key, value in card[part].items():
            assert gates[part][key] == pytest.approx(value, abs=1e-6), (part, key)


def test_the_model_needs_its_mid_blocks(gates):
    """The gates of memory use hold: the returning block's error grows by half without the
    needed blocks, and recall falls from far above chance to about chance without them."""
    full, masked = gates["recall_full"], gates["recall_masked"]
    assert gates["context_use"]["use_ratio"] >= USE_RATIO_GATE
    assert masked["colour"] <= masked["chance_colour"] + 0.15
    assert full["colour"] >= full["chance_colour"] + 0.4


def test_only_a_model_that_passes_its_gates_is_the_memory_world():
    """model=world-memory loads weights whose card passes the 1x and the 24x gates; a
    candidate preset's card fails one of them, and loading it warns."""
    from omegaconf import OmegaConf

    from toolkit.runs.config import ABLATIONS

    def gates_of(preset: str) -> list[bool]:
        path = OmegaConf.load(ABLATIONS / "model" / f"{preset}.yaml").model.path
        card = _card(path)
        return [ok for key in ("gates", "gates_24x") for ok in
                (card.get(key) or {}).get("checks", {}).values()], path

    checks, _ = gates_of("world-memory")
    assert checks and all(checks)
    checks, path = gates_of("world-memory-candidate")
    assert not all(checks)
    with pytest.warns(UserWarning, match=r"fails its gates \(colour recall"):
        load_world(path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_trained_compressor_uses_its_compressed_mid(variant):
    """Re-measured, not read back: the card's ratio was measured during training (on the EMA
    weights of the last step) and differs from the shipped weights' by up to 0.022."""
    card = _card(f"world-memory-pf-{variant}.safetensors")
    from toolkit.worlds.sprites.docfigures import remeasured_context_use

    measured = remeasured_context_use(f"world-memory-pf-{variant}")
    assert measured["return_ratio"] >= COMPRESSED_USE_GATE
    assert measured["return_ratio"] == pytest.approx(card["context_use"]["return_ratio"],
                                                     abs=0.03)
    assert measured["colour_shown"] > measured["colour_hidden"]
    base = _card("world-memory.safetensors")
    assert card["init"]["sha256"] == base["sha256"]  # fine-tuned from the shipped base
    if variant != "lr":  # lr has no parameters to ship
        comp = _card(f"compressor-memory-{variant}.safetensors")
        assert comp["world"]["sha256"] == card["sha256"]


def test_run_world_memory_at_1x_and_24x(tmp_path):
    """`rollbench run model=world-memory-candidate ...` logs recall; a bounded strategy runs 24x."""
    from toolkit.runs.config import compose_config
    from toolkit.runs.jobs import run_job

    for frames, strategy in ((20, "full"), (480, "packforcing-memory")):
        cfg = compose_config([f"run_root={tmp_path}", "model=world-memory-candidate",
                              f"strategy={strategy}", f"video.latent_frames={frames}",
                              "progress=false", "experiment_name=mem"])
        res = run_job(cfg)
        assert res.status == "finished", res.error
        assert res.rollout.trace.meta["switches"]  # one shot per block
        assert "recall_moments" in res.scalars
    assert res.scalars["recall_moments/mid"] >= 20
    from toolkit.worlds.memory.world import recall_line  # what `rollbench run` prints

    line = recall_line(res.scalars)
    assert f"kappa {res.scalars['recall_kappa/colour']:.2f}, beyond" in line
    assert f"at chance {res.scalars['recall_chance/colour']:.2f}" in line
    assert f"{res.scalars['recall_beyond/count']:.0f} readable beyond" in line
    # the report shows the recall table, with the chance level stated
    from reports.compare import build_report, write_report
    from toolkit.runs.tracking import target

    _, md = write_report(build_report(target(cfg)[0], "mem", tmp_path / "rep"), tmp_path / "rep")
    text = md.read_text()
    assert "## Recall (memory world)" in text and "kappa = (recall - chance)" in text


@pytest.mark.parametrize("name", ["world-memory.safetensors", "world-memory-next.safetensors"])
def test_a_shipped_memory_model_can_be_trained_further(name):
    """`rollbench train world-memory init=NAME` starts from it as it is (the next candidate,
    run F, ships for that)."""
    from toolkit.worlds.memory.train import memory_model_from

    with pytest.warns(UserWarning):  # both fail their colour gate, and say so at every load
        shipped = load_world(name)
        start = memory_model_from(name)
    assert start.card["init"]["sha256"] == _card(name)["sha256"]
    for (name, a), b in zip(shipped.state_dict().items(), start.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
