"""The mutation runner of ``make mutants`` (tests/mutants.py): its list still applies to the
code, and on a toy tree it tells a killed mutation from a survivor and restores the file."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _load():
    spec = importlib.util.spec_from_file_location("rollbench_mutants", HERE / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


mutants = _load()


@pytest.mark.parametrize("m", mutants.MUTATIONS, ids=lambda m: m.name)
def test_every_mutation_applies_once_and_names_existing_tests(m):
    text = (mutants.ROOT / m.path).read_text()
    assert m.apply(text) != text
    assert all((mutants.ROOT / t.split("::")[0]).is_file() for t in m.tests), m.tests


def test_the_five_survivors_of_issue_26_are_on_the_list():
    names = {m.name for m in mutants.MUTATIONS}
    assert {"sign-flip-plus-one", "sign-flip-exact-switch", "contract-storage-dedup",
            "recall-gap-lower-edge", "recall-mid-over-all"} <= names


def test_a_stale_mutation_says_so():
    m = mutants.Mutation("gone", "x.py", "absent text", "y", ("t.py",))
    with pytest.raises(ValueError, match=r"'absent text' found 0 times in x\.py"):
        m.apply("some code")


def _toy_tree(root: Path) -> None:
    (root / "calc.py").write_text("def double(x):\n    return 2 * x  # doubles\n")
    (root / "test_calc.py").write_text("from calc import double\n\n\n"
                                       "def test_double():\n    assert double(3) == 6\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)


def test_runner_names_the_killing_test_and_spots_a_survivor(tmp_path):
    src, tree = tmp_path / "src", tmp_path / "tree"
    src.mkdir()
    tree.mkdir()
    _toy_tree(src)
    mutants.copy_tree(src, tree)  # untracked, not ignored: copied
    assert (tree / "calc.py").read_text() == (src / "calc.py").read_text()
    killed = mutants.run_mutation(tree, mutants.Mutation(
        "times-three", "calc.py", "2 * x", "3 * x", ("test_calc.py",)))
    assert killed.killed_by == "test_calc.py::test_double"
    survived = mutants.run_mutation(tree, mutants.Mutation(
        "comment", "calc.py", "# doubles", "# triples", ("test_calc.py",)))
    assert survived.killed_by is None
    assert (tree / "calc.py").read_text() == (src / "calc.py").read_text()  # restored
