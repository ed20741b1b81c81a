"""What the commands print: one shared console and tables that never cut a header.

Rich squeezes a table wider than the terminal by cutting its cells ("strate…"). Here a
table's columns are at least as wide as their longest word; when that does not fit, the
columns a caller marks optional are left out (the caption names them) unless ``--wide`` is
given, and ``--wide`` prints every column at its full width (the terminal wraps the lines).
What still does not fit is folded, never cut.

    print_table("rollout: sink", ("strategy", "blocks", "wall s"), [("sink", "6", "0.4")],
                optional=("wall s",))
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

console = Console()
#: Print every column at full width (``rollbench --wide``); else fit the terminal.
WIDE = {"on": False}


def set_wide(on: bool) -> None:
    """Turn ``--wide`` on or off for the tables printed from now on."""
    WIDE["on"] = bool(on)


def _longest_word(text: str) -> int:
    return max((len(w) for w in str(text).split()), default=0)


def _widths(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[list[int], list[int]]:
    """Per column: the longest word (the least it may get) and the longest line (all it needs)."""
    cells = [[str(c), *(str(r[i]) for r in rows)] for i, c in enumerate(columns)]
    return ([max(_longest_word(t) for t in col) for col in cells],
            [max(len(t) for t in col) for col in cells])


def min_width(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """Characters a table needs so that no word of a header or cell is broken."""
    return sum(_widths(columns, rows)[0]) + 3 * len(columns) + 1  # padding, borders, edge


def allot(least: list[int], most: list[int], width: int) -> list[int] | None:
    """Column widths within ``width`` characters of table, none below ``least``; the spare
    characters go one at a time to the column furthest from ``most``. None if it cannot fit."""
    room = width - (3 * len(least) + 1)
    if sum(least) > room:
        return None
    got = list(least)
    for _ in range(min(room, sum(most)) - sum(least)):
        short = [m - g for g, m in zip(got, most, strict=True)]
        if max(short) <= 0:
            break
        got[short.index(max(short))] += 1
    return got


def fit(columns: Sequence[str], rows: Sequence[Sequence[str]], width: int,
        optional: Sequence[str] = ()) -> list[int]:
    """Indices of the columns to show in ``width`` characters: optional ones dropped in order."""
    keep = list(range(len(columns)))
    for name in optional:
        shown = [columns[i] for i in keep]
        if min_width(shown, [[r[i] for i in keep] for r in rows]) <= width:
            break
        if name in shown:
            keep.remove(columns.index(name))
    return keep


def make_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
               width: int, optional: Sequence[str] = ()) -> tuple[Table, int]:
    """The rich Table of the columns that fit ``width`` (all of them with ``--wide``), and the
    characters it takes."""
    columns = list(columns)
    rows = [[str(c) for c in r] for r in rows]
    keep = list(range(len(columns))) if WIDE["on"] else fit(columns, rows, width, optional)
    hidden = [c for i, c in enumerate(columns) if i not in keep]
    caption = f"not shown: {', '.join(hidden)} (rollbench --wide shows them)" if hidden else None
    least, most = _widths([columns[i] for i in keep], [[r[i] for i in keep] for r in rows])
    full = sum(most) + 3 * len(keep) + 1
    widths = most if WIDE["on"] else allot(least, most, width)
    table = Table(title=title, caption=caption)
    for n, i in enumerate(keep):
        table.add_column(columns[i], width=widths[n] if widths else None, overflow="fold")
    for r in rows:
        table.add_row(*[r[i] for i in keep])
    return table, full if WIDE["on"] else min(full, width)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
                optional: Sequence[str] = ()) -> None:
    """Print a table on the shared console (see the module docstring for the width rules)."""
    table, need = make_table(title, columns, rows, console.width, optional)
    if need > console.width:
        Console(width=need, file=console.file, force_terminal=console.is_terminal).print(table)
    else:
        console.print(table)
