"""Who may import whom: the toolkit, its worlds wing, strategies, findings and reports.

The rules (static imports, at the top or inside functions):

- nothing in toolkit/ outside toolkit/worlds/ imports a world (the toolkit asks the registry,
  ``toolkit.plugins.WORLDS``), nor anything of strategies/ (it asks ``STRATEGIES``);
- strategies/ never imports a world; a world never imports a concrete strategy (it names its
  reference strategies by registry name);
- no import cycle among the modules of toolkit/, strategies/ and reports/.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module a source file imports, at the top or inside a function (static)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # from toolkit import world
    return found


def test_findings_and_reports_do_not_import_each_other():
    """The library plans and measures, reports render, the command ties them: one direction.

    Nothing under toolkit/findings imports reports/ (the findings page imports
    toolkit.findings), and no toolkit module but the command line (cli.py) imports reports/.
    """
    root = Path(__file__).resolve().parents[1]
    upward = {str(p.relative_to(root)): sorted(m for m in imports_of(p)
                                               if m == "reports" or m.startswith("reports."))
              for p in (root / "toolkit").rglob("*.py") if p.name != "cli.py"}
    assert {p: m for p, m in upward.items() if m} == {}
    assert any(m.startswith("toolkit.findings") for m in imports_of(root / "reports" /
                                                                   "findings.py"))


def test_strategies_do_not_import_the_world():
    """Strategies are written against the contract and the generic model, never one concrete
    model: nothing under strategies/ imports toolkit.worlds (weights are found through
    toolkit.models.weights; the world's PackForcing recipe lives in
    toolkit/worlds/sprites/pf_train.py)."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "strategies").rglob("*.py"))
    assert len(files) >= 10  # the check reads the package, compressors included
    world = {str(p.relative_to(root)): sorted(m for m in imports_of(p)
                                              if m == "toolkit.world" or
                                              m.startswith(("toolkit.world.", "toolkit.worlds")))
             for p in files}
    assert {p: m for p, m in world.items() if m} == {}


def test_the_import_check_sees_lazy_imports(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from reports.findings import write\n")
    assert "reports.findings" in imports_of(tmp_path / "m.py")
    (tmp_path / "w.py").write_text("def g():\n    from toolkit import world\n")
    assert "toolkit.world" in imports_of(tmp_path / "w.py")


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of toolkit/, strategies/ and reports/."""
    out = {}
    for pkg in ("toolkit", "strategies", "reports"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def outside_worlds() -> dict[str, set[str]]:
    """Imports of every toolkit module outside the worlds wing."""
    return {n: imports_of(p) for n, p in modules().items()
            if n.startswith("toolkit") and not n.startswith("toolkit.worlds")}


def test_the_toolkit_imports_no_world_and_no_strategy():
    world = {n: sorted(m for m in found if m.startswith(("toolkit.worlds", "toolkit.world.")) or
                       m == "toolkit.world")
             for n, found in outside_worlds().items()}
    assert {n: m for n, m in world.items() if m} == {}
    strategies = {n: sorted(m for m in found if m.split(".")[0] == "strategies")
                  for n, found in outside_worlds().items()}
    assert {n: m for n, m in strategies.items() if m} == {}


def test_worlds_import_no_concrete_strategy():
    """A world names its reference strategies through the registry (``STRATEGIES.get``); the
    modules that define registered strategies are never imported by one (PackForcing's
    compressor registry and training layout are not strategies)."""
    from toolkit.registry import STRATEGIES

    concrete = {cls.__module__ for cls in STRATEGIES.items().values()}
    assert {"strategies.full", "strategies.sink", "strategies.packforcing"} <= concrete
    worlds = {n: sorted(m for m in imports_of(p) if m in concrete or
                        any(m.startswith(c + ".") for c in concrete))
              for n, p in modules().items() if n.startswith("toolkit.worlds")}
    assert len(worlds) >= 10
    assert {n: m for n, m in worlds.items() if m} == {}




def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The import cycles of a graph (its strongly connected components of two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = {stack.pop()}
            while v not in part:
                part.add(stack.pop())
            if len(part) > 1:
                found.append(part)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    """Module to module, lazy imports included; a package's own modules are not its imports
    (importing a module runs its package's ``__init__``, which may import its siblings)."""
    mods = modules()
    graph = {n: {m for m in imports_of(p) if m in mods and m != n and not m.startswith(n + ".")}
             for n, p in mods.items()}
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
