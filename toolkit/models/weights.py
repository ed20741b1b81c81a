"""Where trained weights are found: a search path of weight folders, filled by their owners.

A weights file named by a relative path (``compressor-hr.safetensors``) is looked up as given,
then in every registered folder in turn. Owners register their folders (each world its
``World.weights``, when the worlds load on first use); an installed package adds its own through
the entry-point group ``rollbench.weights`` (an entry point naming a ``Path``). Nothing that
looks weights up names a concrete model.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.plugins import WORLDS
from toolkit.registry import Registry

#: Registered weight folders (name -> folder), searched in name order.
WEIGHT_DIRS: Registry[Path] = Registry("weights folder", "rollbench.weights",
                                       "toolkit.models.weights", extended_by=(WORLDS,))


def register_weights_dir(name: str, folder: str | Path) -> Path:
    """Add ``folder`` to the search path under ``name``; returns it as an absolute path."""
    folder = Path(folder).resolve()
    WEIGHT_DIRS.register(name)(folder)
    return folder


def find_weights(path: str | Path) -> Path:
    """A weights path as given when it exists or is absolute; else the first registered
    folder's file of that relative name; else the path as given (the caller says it is
    missing, see ``missing_weights``)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    for folder in WEIGHT_DIRS.items().values():
        if (folder / path).exists():
            return folder / path
    return path


def missing_weights(path: str | Path, what: str, how: str) -> str:
    """One line for weights that are not there: what was looked for, where, how to make them."""
    folders = ", ".join(str(f) for f in WEIGHT_DIRS.items().values()) or "none registered"
    return (f"{what} {path} not found (relative names are also looked up in the weight "
            f"folders: {folders}); {how}")
