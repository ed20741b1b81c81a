"""Old import paths of moved modules keep working, with one FutureWarning naming the new one."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit import compat

ROOT = Path(__file__).resolve().parents[1]


def fresh(old: str) -> None:
    """Forget the alias (and its children) so the next import goes through the finder again."""
    for name in [n for n in sys.modules if n == old or n.startswith(old + ".")]:
        del sys.modules[name]


@pytest.mark.parametrize("old", sorted(compat.MOVED))
def test_every_old_path_imports_with_a_warning(old):
    new = compat.MOVED[old]
    assert importlib.util.find_spec(new) is not None, f"{new} does not exist"
    fresh(old)
    with pytest.warns(FutureWarning, match=rf"{old} moved to {new}; the old path is removed in "
                                           rf"rollbench {compat.REMOVED_IN}"):
        module = importlib.import_module(old)
    if old in compat.PACKAGES:
        assert module.__path__ == []
    else:
        assert module is importlib.import_module(new)
        assert module.__spec__.name == new  # the real module keeps its own spec


@pytest.mark.parametrize("old", sorted(compat.RENAMED))
def test_every_name_that_left_a_module_is_handed_out_with_a_warning(old):
    module, _, name = old.rpartition(".")
    home, _, attr = compat.RENAMED[old].rpartition(".")
    owner = importlib.import_module(module)
    owner.__dict__.pop(name, None)  # handed out before: ask again
    with pytest.warns(FutureWarning, match=rf"{old} moved to {compat.RENAMED[old]}"):
        assert getattr(owner, name) is getattr(importlib.import_module(home), attr)
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        owner.nosuch  # noqa: B018


def test_an_old_package_hands_out_its_names_from_their_new_homes():
    fresh("toolkit.world")
    with pytest.warns(FutureWarning):
        import toolkit.world as old
    from toolkit.worlds.memory import scenes
    from toolkit.worlds.sprites import Prompt

    assert old.Prompt is Prompt
    with pytest.warns(FutureWarning, match="toolkit.world.scenes moved"):
        assert old.scenes is scenes


def test_the_warning_points_at_the_importing_line(tmp_path):
    (tmp_path / "mine.py").write_text("from toolkit.world.sim import Prompt\n")
    out = subprocess.run([sys.executable, "-W", "always::FutureWarning", "-c", "import mine"],
                         cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": ""})
    assert f"{tmp_path / 'mine.py'}:1: FutureWarning: toolkit.world.sim moved" in out.stderr


def test_paths_map_both_ways():
    assert compat.new_path("toolkit.world.model.load_world") == \
        "toolkit.worlds.sprites.model.load_world"
    assert compat.new_path("toolkit.worlds.sprites") is None
    assert compat.old_path("toolkit.worlds.memory.train.MemoryTrainConfig") == \
        "toolkit.world.memory_train.MemoryTrainConfig"
    assert compat.old_path("toolkit.world.model.load_world") == "toolkit.world.model.load_world"
    assert compat.old_path("strategies.sink.Sink") == "strategies.sink.Sink"


def test_a_config_naming_an_old_target_runs_and_keeps_its_key():
    """``model._target_`` by its old path resolves; old and new spelling are one run key."""
    from hydra.utils import get_method

    from toolkit.runs.config import compose_config
    from toolkit.runs.tracking import run_key

    new = compose_config(["model=world"])
    assert new.model._target_ == "toolkit.worlds.sprites.model.load_world"
    old = compose_config(["model=world", "model._target_=toolkit.world.model.load_world"])
    with pytest.warns(FutureWarning):
        assert get_method(old.model._target_) is get_method(new.model._target_)
    assert run_key(old) == run_key(new)
    # the key a stored run of model=world got before the worlds moved (revision f34b4e7)
    assert run_key(new) == "de8d772ca060192602ab793844ab1546d98364549725196f1bfaa16c08171b53"
