"""Who may import whom: findings and reports, strategies and the built-in world."""

from pathlib import Path


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
