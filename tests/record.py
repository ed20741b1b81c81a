"""Keep tests/RECORD.md: when each ``slow`` / ``gpu`` test last ran, how it ended, and when it
last passed (date and git revision), from pytest's JUnit XML.

    pytest -m slow --junitxml=runs/tests-slow.xml; python tests/record.py runs/tests-slow.xml slow

``make test-slow`` and ``make test-gpu`` do both. Tests of the record that this run did not
touch keep their rows; a skipped or failed run keeps the test's last pass.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

RECORD = Path(__file__).resolve().parent / "RECORD.md"
HEADER = """# Slow and GPU tests: the record

`make test` leaves out the tests marked `slow` (long CPU runs) and `gpu` (a CUDA device).
`make test-slow` runs the slow ones on this CPU and `make test-gpu` the gpu ones (skipped
without a GPU); both update this file through `tests/record.py` (never edit the table by hand).
A revision ending in `+dirty` ran with uncommitted changes.

"""
COLUMNS = ("test", "mark", "last run", "revision", "outcome", "seconds", "last pass",
           "pass revision")


@dataclass
class Row:
    """One test's line of the record."""

    test: str
    mark: str
    last_run: str = ""
    revision: str = ""
    outcome: str = ""
    seconds: str = ""
    last_pass: str = ""
    pass_revision: str = ""

    def cells(self) -> list[str]:
        return [f"`{self.test}`" if self.test else "", *(getattr(self, f.name)
                                                        for f in fields(self)[1:])]


def revision(root: Path) -> str:
    """The short git revision of ``root``, with ``+dirty`` when tracked files have changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()

    rev = git("rev-parse", "--short=10", "HEAD")
    return rev + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def read_record(path: Path) -> dict[str, Row]:
    """The record's rows by test id ({} when the file does not exist yet)."""
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(COLUMNS) and cells[0].startswith("`"):
            row = Row(cells[0].strip("`"), *cells[1:])
            rows[row.test] = row
    return rows


def outcomes(junit: Path) -> dict[str, tuple[str, float]]:
    """Test id -> (passed / failed / error / skipped, seconds) from a JUnit XML file."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        path = "/".join(p for p in module if p[:1].islower()) + ".py"  # tests.test_x -> path
        classes = [p for p in module if p[:1].isupper()]
        test = "::".join([path, *classes, case.get("name", "")])
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        out[test] = ({"failure": "failed"}.get(outcome, outcome), float(case.get("time", 0)))
    return out


def update(record: dict[str, Row], results: dict[str, tuple[str, float]], mark: str,
           when: str, rev: str) -> dict[str, Row]:
    """The record with this run's results written in (a pass also becomes the last pass)."""
    out = dict(record)
    for test, (outcome, seconds) in results.items():
        row = out.get(test) or Row(test, mark)
        row.mark, row.last_run, row.revision = mark, when, rev
        row.outcome, row.seconds = outcome, f"{seconds:.0f}"
        if outcome == "passed":
            row.last_pass, row.pass_revision = when, rev
        out[test] = row
    return out


def render(rows: dict[str, Row]) -> str:
    """The record file's text: the header, then one table row per test (sorted)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for test in sorted(rows, key=lambda t: (rows[t].mark, t)):
        lines.append("| " + " | ".join(rows[test].cells()) + " |")
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("junit", type=Path, help="pytest --junitxml file of the run")
    ap.add_argument("mark", choices=("slow", "gpu"), help="the mark the run selected")
    ap.add_argument("--record", type=Path, default=RECORD)
    args = ap.parse_args(argv)
    if not args.junit.is_file():
        print(f"{args.junit}: no such JUnit XML file (did pytest run with --junitxml?)")
        return 2
    results = outcomes(args.junit)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = update(read_record(args.record), results, args.mark, when,
                  revision(args.record.parent))
    args.record.write_text(render(rows))
    summary = ", ".join(f"{k} {v}" for k, v in sorted(
        {o: sum(r[0] == o for r in results.values()) for o, _ in results.values()}.items()))
    print(f"{args.record}: {len(results)} {args.mark} test(s) recorded ({summary or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
