"""The README's and docs' marked figures equal what their artifacts give (``rollbench docs``)."""

import re

import pytest

from toolkit.tools.docs import FIGURES, MARKED, documents, figure_names, regenerate, stale


@pytest.fixture(scope="module")
def generated():
    return {name: make() for name, make in FIGURES.items()}


def test_every_marked_figure_matches_its_artifact(generated):
    found = []
    for path in documents():
        text = path.read_text()
        found += figure_names(text)
        assert stale(text, generated) == [], (
            f"{path.name}: figures differ from their artifacts; run `rollbench docs`")
    assert set(found) == set(FIGURES)  # every generator is quoted somewhere


def test_a_figure_edited_by_hand_fails(generated):
    readme = documents()[0].read_text()
    edited = readme.replace("<!-- fig:compressor-use -->1.53x", "<!-- fig:compressor-use -->1.55x")
    assert edited != readme
    problems = stale(edited, generated)
    assert len(problems) == 1 and problems[0].startswith("compressor-use: '1.55x / ")
    assert regenerate(edited, generated) == readme  # `rollbench docs` puts it back


def test_unknown_figures_are_named():
    with pytest.raises(ValueError, match=r"unknown figure\(s\) \['nope'\] in the markers"):
        figure_names("a <!-- fig:nope -->1<!-- /fig --> b")
    assert [m["name"] for m in MARKED.finditer("<!-- fig:a -->x\ny<!-- /fig -->")] == ["a"]


def test_docs_command_checks_without_writing(capsys, monkeypatch, generated):
    from toolkit.tools.docs import cmd_docs

    for name, value in generated.items():  # made once (the fixture), not again
        monkeypatch.setitem(FIGURES, name, lambda value=value: value)

    assert cmd_docs(["check=true"]) == 0
    assert re.search(r"README.md: \d+ figures, 0 differ", capsys.readouterr().out)
    with pytest.raises(ValueError, match="allowed check=true or check=false"):
        cmd_docs(["check=maybe"])


def test_the_sprite_worlds_packforcing_card_states_its_context_use_as_measured():
    """The sprite world's fine-tune: its card's context use is what its shipped weights give."""
    from toolkit.tools.docs import card
    from toolkit.worlds.sprites.docfigures import remeasured_context_use

    measured = remeasured_context_use("world-model-pf")
    for key, value in card("world-model-pf")["context_use"].items():
        assert measured[key] == pytest.approx(value, abs=1e-6), key


def test_the_sprite_world_models_card_states_its_1x_scores_as_measured():
    from toolkit.tools.docs import card
    from toolkit.worlds.sprites.docfigures import remeasured_eval_1x

    measured = remeasured_eval_1x()
    for key, value in card("world-model")["eval_1x"].items():
        assert measured[key] == pytest.approx(value, abs=1e-9), key


def test_the_figures_come_from_the_worlds_and_a_name_given_twice_fails(monkeypatch):
    """The docs tool names no world: its generators are the worlds' ``World.figures``."""
    from dataclasses import replace

    from toolkit.plugins import WORLDS
    from toolkit.tools.docs import world_figures

    worlds = WORLDS.items()
    assert set(FIGURES) == {n for w in worlds.values() for n in w.figures}
    assert set(worlds["memory"].figures) >= {"memory-gates-table", "compressor-use"}
    twin = replace(worlds["sprites"], name="twin")
    monkeypatch.setattr(WORLDS, "items", lambda: {**worlds, "twin": twin})
    with pytest.raises(ValueError, match="figure 'world-1x' is given by worlds 'sprites' and "
                                         "'twin'"):
        world_figures()
