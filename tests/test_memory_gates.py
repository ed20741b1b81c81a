"""The memory model's 24x gates: the pipeline on a short video, and the shipped card's verdicts
against its own numbers (the full re-measurement, 64 rollouts of 480 frames, is `slow`)."""

import json

import pytest

from toolkit.worlds.memory import WEIGHTS_DIR
from toolkit.worlds.memory import gates as g
from toolkit.worlds.sprites.model import load_world

SHIPPED = "world-memory-v2.safetensors"  # model=world-memory


def _verdicts(result: dict) -> list[bool]:
    arms, b = result["arms"], result["bracket"]
    return [arms["oracle"]["kappa_beyond"] >= g.ORACLE_KAPPA,
            b["mean"] >= g.BRACKET and b["low"] >= g.BRACKET_LOW,
            arms["swap"]["swap_needed"] >= g.SWAP,
            arms["no-memory"]["kappa_beyond"] <= g.NO_MEMORY_KAPPA]


@pytest.fixture(scope="module")
def short():
    return g.measure(load_world(SHIPPED), seeds=(0,), split="val", frames=120, progress=False)


def test_every_arm_is_measured_and_the_checks_follow_the_numbers(short):
    assert set(short["arms"]) == {"oracle", "oracle-wrong", "swap", "no-memory"}
    assert list(short["checks"].values()) == _verdicts(short)
    assert short["passed"] == all(short["checks"].values())
    assert short["arms"]["oracle"]["beyond_n"] > 0 and short["bracket"]["n"] == 1


def test_the_bracket_orders_the_references(short):
    """Keeping the needed blocks recalls more than keeping wrong ones (the world can tell)."""
    arms = short["arms"]
    assert arms["oracle"]["colour"] > arms["oracle-wrong"]["colour"] + 0.1


def test_the_gate_set_is_held_out_and_apart_from_validation():
    assert len(g.GATE_SEEDS) >= 16 and min(g.GATE_SEEDS) >= 9000


def _card_gates(name: str) -> dict | None:
    card = json.loads((WEIGHTS_DIR / name).with_suffix(".json").read_text())
    return card.get("gates_24x")


@pytest.mark.parametrize("name", [p.name for p in sorted(WEIGHTS_DIR.glob("world-memory*.json"))])
def test_a_card_states_its_24x_gates_as_its_numbers_say(name):
    gates = _card_gates(name)
    if gates is None:
        pytest.skip(f"{name}: no 24x gates recorded")
    assert gates["split"] == "heldout" and tuple(gates["seeds"]) == g.GATE_SEEDS
    assert list(gates["checks"].values()) == _verdicts(gates)
    assert gates["passed"] == all(gates["checks"].values())


@pytest.mark.slow
def test_shipped_24x_gates_remeasure_as_the_card_says():
    """64 rollouts of 480 frames (about 15 minutes on one thread): same seed, same numbers."""
    import torch

    gates = _card_gates(SHIPPED)
    if gates is None:
        pytest.skip("the shipped model has no 24x gates recorded")
    torch.set_num_threads(1)
    again = g.measure(load_world(SHIPPED), g.GATE_SEEDS, "heldout", progress=False)
    for arm, values in gates["arms"].items():
        for key, value in values.items():
            assert again["arms"][arm][key] == pytest.approx(value, abs=1e-9, nan_ok=True)
    assert again["checks"] == gates["checks"]
