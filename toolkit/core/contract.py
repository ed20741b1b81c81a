"""How the harness talks to a strategy across versions of the contract.

- ``ask_context``: the context request, with the cache-fill flag for strategies that take it
  (``context(layer, q, step, fill)``) and without it for strategies written before it
  (``context(layer, q, step)``, which told the fill pass by ``step == fill_step``);
- ``check_contract``: at ``bind``, a FutureWarning once per class for the old signature, a
  TypeError naming the signature to write for one the harness cannot call;
- ``StrategyType`` / ``renamed_params``: hyperparameters given under an old name (a class's
  ``renamed``, e.g. ``window_frames`` -> ``recent_frames``) reach the new one, with a
  FutureWarning.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from abc import ABCMeta
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


class StrategyType(ABCMeta):
    """Metaclass of strategies: a hyperparameter given under its old name (the class's
    ``renamed``) is passed under its new one, with a FutureWarning (``renamed_params``)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **renamed_params(cls, kwargs))


def renamed_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every old hyperparameter name of ``cls.renamed`` replaced by its new
    one (a FutureWarning each); ValueError when both names are given."""
    out = dict(params)
    for old, new in getattr(cls, "renamed", {}).items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{old}={out[old]!r} and {new}={out[new]!r}: {old} is the old name "
                             f"of {new}; give only {new}")
        value = out.pop(old)
        warnings.warn(f"{cls.__name__}: hyperparameter {old} was renamed {new} (same meaning); "
                      f"write {new}={value!r} (strategy.{new}={value!r} in configs)",
                      FutureWarning, stacklevel=3)
        out[new] = value
    return out


CONTRACT = "(self, layer, q, step, fill=False)"


@functools.cache
def _takes_fill(func: Callable[..., Any]) -> bool | None:
    """True: ``func(self, layer, q, step, fill=...)`` binds; False: only the old
    ``(self, layer, q, step)`` does; None: neither."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return True  # no signature to read (a builtin): call it as the contract says
    for args, kwargs, answer in (((0, 0, None, 0), {"fill": False}, True),
                                 ((0, 0, None, 0), {}, False)):
        try:
            sig.bind(*args, **kwargs)
            return answer
        except TypeError:
            pass
    return None


def ask_context(method: Callable[..., Any], layer: int, q: Tensor, step: int,
                fill: bool) -> Any:
    """Call a strategy's bound ``context`` / ``context_parts`` with ``fill`` when it takes it
    (strategies written against the old contract get ``(layer, q, step)``)."""
    if _takes_fill(getattr(method, "__func__", method)) is False:
        return method(layer, q, step)
    return method(layer, q, step, fill=fill)


_WARNED: set[tuple[type, str]] = set()


def check_contract(strategy: Any) -> None:
    """Check the signatures of a strategy's ``context`` / ``context_parts`` (called by
    ``bind``): a FutureWarning, once per class, for the old ``(layer, q, step)``; TypeError
    naming the fix for one that cannot take the contract's arguments."""
    cls = type(strategy)
    for name in ("context_parts", "context"):
        func = getattr(cls, name)
        takes = _takes_fill(func)
        if takes is True:
            continue
        where = f"{cls.__qualname__}.{name}{inspect.signature(func)}"
        if takes is None:
            raise TypeError(f"{where} cannot take the contract's arguments: write "
                            f"def {name}{CONTRACT} (q: the block's queries (B, H, N, D); "
                            "fill: True in the cache-fill pass)")
        if (cls, name) not in _WARNED:
            _WARNED.add((cls, name))
            warnings.warn(f"{where} is the old cache contract: add the fill flag, def {name}"
                          f"{CONTRACT} (True in the cache-fill pass, which the old contract "
                          "told only by step == fill_step; that step is still passed, so the "
                          "strategy runs as before)", FutureWarning, stacklevel=3)
