"""The shipped memory-world models: their gates hold on the shipped weights, and runs work."""

import json

import pytest
import torch

from toolkit.world.memory_eval import (
    COLOUR_GATE,
    COMPRESSED_USE_GATE,
    USE_RATIO_GATE,
    memory_gates,
)
from toolkit.world.model import WEIGHTS_DIR, load_world

VARIANTS = ("hr", "lr", "dual")


def _card(name: str) -> dict:
    return json.loads((WEIGHTS_DIR / name).with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def gates():
    torch.manual_seed(0)
    return memory_gates(load_world("world-memory.safetensors"), clips=64)


def test_base_model_passes_its_gates_as_its_card_says(gates):
    """Re-measured here (same seed, same numbers), equal to the card, and passing."""
    card = _card("world-memory.safetensors")["gates"]
    assert gates["passed"] and card["passed"]
    assert gates["context_use"]["use_ratio"] >= USE_RATIO_GATE
    assert gates["recall_full"]["colour"] >= COLOUR_GATE
    for part in ("context_use", "recall_full", "recall_masked"):
        for key, value in card[part].items():
            assert gates[part][key] == pytest.approx(value, abs=1e-6), (part, key)


def test_recall_needs_the_mid_blocks(gates):
    """With the needed blocks masked out recall falls to about chance; with them, far above."""
    full, masked = gates["recall_full"], gates["recall_masked"]
    assert masked["colour"] <= masked["chance_colour"] + 0.15
    assert full["colour"] >= full["chance_colour"] + 0.4


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_trained_compressor_uses_its_compressed_mid(variant):
    card = _card(f"world-memory-pf-{variant}.safetensors")
    assert card["context_use"]["return_ratio"] >= COMPRESSED_USE_GATE
    base = _card("world-memory.safetensors")
    assert card["init"]["sha256"] == base["sha256"]  # fine-tuned from the shipped base
    if variant != "lr":  # lr has no parameters to ship
        comp = _card(f"compressor-memory-{variant}.safetensors")
        assert comp["world"]["sha256"] == card["sha256"]


def test_run_world_memory_at_1x_and_24x(tmp_path):
    """`rollbench run model=world-memory ...` logs recall; a bounded strategy runs 24x."""
    from toolkit.config import compose_config
    from toolkit.jobs import run_job

    for frames, strategy in ((20, "full"), (480, "packforcing-memory")):
        cfg = compose_config([f"run_root={tmp_path}", "model=world-memory",
                              f"strategy={strategy}", f"video.latent_frames={frames}",
                              "progress=false", "experiment_name=mem"])
        res = run_job(cfg)
        assert res.status == "finished", res.error
        assert res.rollout.trace.meta["switches"]  # one shot per block
        assert "recall_moments" in res.scalars
    assert res.scalars["recall_moments/mid"] >= 20
    # the report shows the recall table, with the chance level stated
    from reports.compare import build_report, write_report
    from toolkit.tracking import target

    _, md = write_report(build_report(target(cfg)[0], "mem", tmp_path / "rep"), tmp_path / "rep")
    text = md.read_text()
    assert "## Recall (memory world)" in text and "Chance: 1/12" in text
