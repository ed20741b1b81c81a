"""``rollbench train world-memory``: the recipe (``train``), then the exported model's gates in
its card (``evaluate``). The gates measure context use with the recipe's own batch, so
evaluation builds on training; this module ties the two without a cycle."""

from __future__ import annotations

from pathlib import Path

from toolkit.worlds.memory import train
from toolkit.worlds.memory.evaluate import record_gates


def train_memory(cfg: train.MemoryTrainConfig, log=print) -> Path:
    """Train (or resume) the memory-world model, export it, and record its gates in its card."""
    return record(train.train_memory(cfg, log))


def export_checkpoint(out: str | Path, folder: str | Path) -> Path:
    """``train.export_checkpoint`` (a run's latest checkpoint), gated."""
    return record(train.export_checkpoint(out, folder))


def export_eval(out: str | Path, step: int, folder: str | Path, name: str = train.MEMORY_FILE,
                note: str = "") -> Path:
    """``train.export_eval`` (the weights a run saved at a validation point), gated."""
    return record(train.export_eval(out, step, folder, name, note))


def record(path: Path) -> Path:
    """Add the gates of the exported weights at ``path`` to their card; returns ``path``."""
    record_gates(path)
    return path
