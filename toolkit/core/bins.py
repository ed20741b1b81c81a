"""Binning of curves and integer measures: one convention for the whole house.

A bin is the half-open range ``[a, b)`` of steps (latent frames, blocks, gaps...). Bins of a
``width`` are counted from ``start`` (0 unless given): bin k is ``[start + k * width,
start + (k + 1) * width)``, and a bounded range ``[start, stop)`` ends in a bin that may be
short. A bin's value is the mean of its finite values, NaN where it has none; a bin is named
by its first step (a figure places its point where it likes, e.g. the bin's centre).

Integer bins written with inclusive bounds for people (the memory world's recall gaps
``2, 3, 4-8, 9_up``) are the same half-open bins (``[4, 9)``), labelled by
:func:`bin_label`; ``None`` as ``b`` is a bin without end.
"""

from __future__ import annotations

import numpy as np


def bin_edges(start: int, stop: int, width: int) -> list[tuple[int, int]]:
    """Consecutive ``[a, b)`` bins of ``width`` covering ``[start, stop)`` (the last may be
    short)."""
    return [(a, min(a + width, stop)) for a in range(start, stop, width)]


def in_bin(steps: np.ndarray, a: int, b: int | None) -> np.ndarray:
    """Which ``steps`` fall in the bin ``[a, b)`` (``b=None``: no end)."""
    steps = np.asarray(steps)
    return (steps >= a) & (steps < b) if b is not None else steps >= a


def mean_in(steps: np.ndarray, values: np.ndarray, a: int, b: int | None) -> float:
    """Mean of a curve's finite values at steps in ``[a, b)`` (NaN if none)."""
    values = np.asarray(values, dtype=float)
    pick = in_bin(steps, a, b) & np.isfinite(values)
    return float(values[pick].mean()) if pick.any() else float("nan")


def bin_means(steps: np.ndarray, values: np.ndarray, start: int = 0, stop: int | None = None,
              width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(first step, mean) of the ``width`` bins counted from ``start``: every bin of
    ``[start, stop)``, or, without ``stop``, every bin that holds a step (NaN where a bin
    has no finite value)."""
    steps = np.asarray(steps)
    if stop is not None:
        starts = [a for a, _ in bin_edges(start, stop, width)]
        ends = [min(a + width, stop) for a in starts]
    else:
        starts = [start + k * width for k in np.unique((steps[steps >= start] - start) // width)]
        ends = [a + width for a in starts]
    return (np.array(starts, dtype=steps.dtype if steps.dtype.kind in "iu" else np.int64),
            np.array([mean_in(steps, values, a, b) for a, b in zip(starts, ends, strict=True)]))


def bin_label(a: int, b: int | None) -> str:
    """An integer bin ``[a, b)`` named by its inclusive bounds: ``2`` (``[2, 3)``), ``4-8``
    (``[4, 9)``), ``9_up`` (``[9, None)``)."""
    if b is None:
        return f"{a}_up"
    return f"{a}" if b == a + 1 else f"{a}-{b - 1}"
