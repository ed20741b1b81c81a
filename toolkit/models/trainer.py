"""One training loop for every recipe: ``rollbench train NAME`` runs the recipe's hooks over it.

A recipe writes :class:`Hooks`: the modules it trains (``build``), the loss of one step
(``loss``), its evaluations (``evaluations``) and the files it exports (``export``). The
:class:`Trainer` does the rest, once for all recipes:

1. threads and seed; the hooks' modules, an EMA copy of each (:class:`EMA`), AdamW over the
   hooks' parameter groups;
2. resume from ``<out>/checkpoint.pt`` when present (the hooks may refuse it; changed settings
   are named in a warning);
3. the steps: each group's rate from a linear warm-up then cosine to ``min_lr_ratio`` of its
   peak (:func:`cosine_factor`), loss, backward, gradient clipping, optimiser step, EMA;
4. cadences (:func:`due`): a log row every ``log_every`` steps and at the last (the mean of the
   window's numbers, or the last step's), each :class:`Eval` that is due on it; a checkpoint
   every ``ckpt_every`` steps and at the last;
5. export (``Hooks.export``), with the card's common part from :func:`base_card`.

Rows go to ``log`` and, as JSON lines, to ``<out>/log.jsonl``. Same seed, same numbers: a
step draws its randomness from the checkpointed generator ``Trainer.gen`` (and its index), so a
resumed run equals an uninterrupted one to the bit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

CHECKPOINT = "checkpoint.pt"
#: Settings a resumed run may change without a warning.
RUN_ONLY = ("steps", "ckpt_every", "log_every", "eval_every", "out", "export", "threads",
            "device")


@dataclass
class TrainSettings:
    """What the trainer reads of a recipe's config: each recipe's config dataclass extends it,
    redeclaring only the defaults it changes."""

    steps: int = 1000
    lr: float = 5e-4  # peak rate of the default parameter group
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # 0: no clipping
    ema: float = 0.999  # EMA decay per step; 0: off (the raw weights serve)
    seed: int = 0
    ckpt_every: int = 100
    log_every: int = 50
    out: str = "runs/train"
    threads: int = 1
    device: str = "cpu"


@dataclass(frozen=True)
class Eval:
    """An evaluation made on log rows: every ``every`` steps (0: only at the last step).

    ``run(step)`` returns the numbers it adds to that row."""

    every: int
    run: Callable[[int], dict[str, Any]]


def due(step: int, every: int, last: bool) -> bool:
    """Whether a cadence of ``every`` steps falls on ``step`` (counted from 1); always at the
    last step."""
    return last or (every > 0 and step % every == 0)


def cosine_factor(step: int, warmup: int, steps: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio`` of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


class EMA:
    """Exponential moving averages of modules: frozen copies (eval mode, no gradients), moved
    ``1 - decay`` of the way to their module after each step; ``decay`` 0 is off."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        self.decay, self.modules = decay, modules
        self.copies = {key: copy.deepcopy(m).eval() for key, m in modules.items()}
        for c in self.copies.values():
            c.requires_grad_(False)

    def update(self) -> None:
        if self.decay <= 0:
            return
        with torch.no_grad():
            for key, module in self.modules.items():
                for pe, pm in zip(self.copies[key].parameters(), module.parameters(),
                                  strict=True):
                    pe.lerp_(pm, 1 - self.decay)


class Hooks:
    """A training recipe over :class:`Trainer`: write ``build``, ``loss`` and ``export``.

    ``cfg`` is the recipe's config dataclass (a :class:`TrainSettings`).
    """

    name = "train"  #: the recipe: progress bar, command line, card
    ema_keys: ClassVar[dict[str, str]] = {"model": "ema"}  #: checkpoint key of each EMA copy
    log_last = False  #: log rows carry the last step's numbers, not the window's mean
    run_only: tuple[str, ...] = RUN_ONLY

    def __init__(self, cfg: TrainSettings) -> None:
        self.cfg: Any = cfg

    def build(self) -> dict[str, nn.Module]:
        """The modules to train, by checkpoint key (seeded: the trainer has set the seed)."""
        raise NotImplementedError

    def param_groups(self, modules: dict[str, nn.Module]) -> list[dict[str, Any]]:
        """AdamW's groups, each with its peak ``lr``; by default all parameters at ``cfg.lr``."""
        return [{"params": [p for m in modules.values() for p in m.parameters()],
                 "lr": self.cfg.lr}]

    def check(self, state: dict[str, Any]) -> None:
        """Raise when a checkpoint must not be resumed (before anything is loaded)."""

    def started(self, run: Trainer) -> None:
        """After resuming, before the first step (e.g. log the run's layout)."""

    def attached(self, run: Trainer) -> contextlib.AbstractContextManager:
        """A context held around the steps."""
        return contextlib.nullcontext()

    def loss(self, run: Trainer, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one step and the numbers to log (randomness from ``run.gen``)."""
        raise NotImplementedError

    def evaluations(self, run: Trainer) -> list[Eval]:
        return []

    def extra_state(self) -> dict[str, Any]:
        """Entries the checkpoint carries besides the trainer's."""
        return {}

    def export(self, run: Trainer) -> Path:
        """Write the trained weights (``run.weights``) and their card; return the main file."""
        raise NotImplementedError


class Trainer:
    """Runs (or resumes) one recipe's hooks; :meth:`fit` returns what ``Hooks.export`` wrote."""

    def __init__(self, hooks: Hooks, log: Callable[[str], None] = print) -> None:
        self.hooks, self.cfg, self.log = hooks, hooks.cfg, log
        self.out = Path(self.cfg.out)
        self.start, self.history = 0, []

    def fit(self) -> Path:
        cfg, hooks = self.cfg, self.hooks
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        self.modules = hooks.build()
        self.ema = EMA(self.modules, cfg.ema)
        groups = hooks.param_groups(self.modules)
        self.peaks = [g["lr"] for g in groups]
        self.opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.params = [p for m in self.modules.values() for p in m.parameters()]
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.resume()
        hooks.started(self)
        with hooks.attached(self):
            self.steps(hooks.evaluations(self))
        return hooks.export(self)

    def weights(self, key: str, ema: bool = True) -> nn.Module:
        """Module ``key``'s EMA copy (when ``ema`` and the EMA is on), else the module."""
        return self.ema.copies[key] if ema and self.ema.decay > 0 else self.modules[key]

    def emit(self, row: dict[str, Any] | str) -> None:
        """Log a line; rows (dicts) also go to ``<out>/log.jsonl``."""
        line = row if isinstance(row, str) else json.dumps(row)
        self.log(line)
        if not isinstance(row, str):
            with (self.out / "log.jsonl").open("a") as f:
                f.write(line + "\n")

    def steps(self, evals: list[Eval]) -> None:
        cfg = self.cfg
        began = time.time() - (self.history[-1]["elapsed"] if self.history else 0.0)
        window: list[dict[str, float]] = []
        bar = tqdm(range(self.start, cfg.steps), initial=self.start, total=cfg.steps,
                   desc=self.hooks.name)
        for step in bar:
            factor = cosine_factor(step, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
            for group, peak in zip(self.opt.param_groups, self.peaks, strict=True):
                group["lr"] = peak * factor
            loss, stats = self.hooks.loss(self, step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.opt.step()
            self.ema.update()
            window.append(stats)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            last = step + 1 == cfg.steps
            if due(step + 1, cfg.log_every, last):
                self.log_row(step + 1, window, time.time() - began, evals, last)
                window = []
            if due(step + 1, cfg.ckpt_every, last):
                self.save(step + 1)

    def log_row(self, step: int, window: list[dict[str, float]], elapsed: float,
                evals: list[Eval], last: bool) -> None:
        if self.hooks.log_last:
            numbers = window[-1]
        else:
            numbers = {k: sum(s[k] for s in window if k in s)
                       / sum(1 for s in window if k in s) for k in _keys(window)}
        row: dict[str, Any] = {"step": step, **numbers, "elapsed": elapsed}
        for ev in evals:
            if due(step, ev.every, last):
                row.update(ev.run(step))
        self.history.append(row)
        self.emit(row)

    def save(self, step: int) -> None:
        """``<out>/checkpoint.pt``: modules and EMA copies by key, optimiser, generator, step,
        history, config and the hooks' entries."""
        state = {**{k: m.state_dict() for k, m in self.modules.items()},
                 **{self.hooks.ema_keys[k]: c.state_dict() for k, c in self.ema.copies.items()},
                 "opt": self.opt.state_dict(), "gen": self.gen.get_state(), "step": step,
                 "history": self.history, "config": dataclasses.asdict(self.cfg),
                 **self.hooks.extra_state()}
        torch.save(state, self.out / CHECKPOINT)

    def resume(self) -> None:
        path = self.out / CHECKPOINT
        if not path.exists():
            return
        state = torch.load(path, weights_only=False, map_location=self.cfg.device)
        self.hooks.check(state)
        for key, module in self.modules.items():
            module.load_state_dict(state[key])
            self.ema.copies[key].load_state_dict(state[self.hooks.ema_keys[key]])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"].cpu())
        self.start, self.history = state["step"], state["history"]
        self.emit(f"resumed from {path} at step {self.start}")
        now = dataclasses.asdict(self.cfg)
        changed = sorted(k for k, v in state.get("config", {}).items()
                         if k not in self.hooks.run_only and now.get(k, v) != v)
        if changed:
            was = {k: state["config"][k] for k in changed}
            self.emit(f"warning: resuming with changed settings {changed} (checkpoint: {was})")


def _keys(window: list[dict[str, float]]) -> list[str]:
    """The keys of a window's rows, in first-seen order."""
    return list(dict.fromkeys(k for s in window for k in s))


def command(name: str, cfg: Any) -> str:
    """The ``rollbench train NAME`` line re-creating a run: its settings that differ from the
    config dataclass's defaults (nested dataclasses as dotted keys)."""
    return shlex.join(["rollbench", "train", name, *_overrides(cfg, type(cfg)(), "")])


def _overrides(cfg: Any, default: Any, prefix: str) -> list[str]:
    parts = []
    for f in dataclasses.fields(cfg):
        value, base = getattr(cfg, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value) and dataclasses.is_dataclass(base):
            parts += _overrides(value, base, f"{prefix}{f.name}.")
        elif value != base:
            parts.append(f"{prefix}{f.name}={'null' if value is None else value}")
    return parts


def device_name(device: torch.device | str, threads: int) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {threads} thread(s)"


def base_card(name: str, cfg: Any, history: list[dict[str, Any]],
              keep: int = 20) -> dict[str, Any]:
    """The part of a weights card every recipe writes: how to re-create the weights (command,
    seed, steps, settings) and how training went (the last ``keep`` log rows, final loss,
    wall time, device)."""
    last = history[-1] if history else {}
    return {"recipe": name, "command": command(name, cfg), "seed": cfg.seed,
            "steps": cfg.steps, "train": dataclasses.asdict(cfg), "history": history[-keep:],
            "final_loss": last.get("loss"), "wall_seconds": last.get("elapsed"),
            "device": device_name(cfg.device, cfg.threads)}
