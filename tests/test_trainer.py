"""The one trainer (``toolkit.models.trainer``) on a toy recipe: a resumed run equals an
uninterrupted one to the bit, the EMA moves as its decay says, cadences fall where they should,
checkpoints round-trip (the old key names included), rates follow the schedule per group."""

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from toolkit.models.trainer import (
    EMA,
    Eval,
    Hooks,
    Trainer,
    TrainSettings,
    base_card,
    command,
    cosine_factor,
    due,
)


@dataclass
class ToyConfig(TrainSettings):
    steps: int = 6
    lr: float = 0.05
    warmup: int = 2
    ema: float = 0.5
    ckpt_every: int = 2
    log_every: int = 2
    eval_every: int = 4
    out: str = "runs/toy"
    width: int = 3


class ToyHooks(Hooks):
    """Linear regression on data drawn from the trainer's generator; two parameter groups."""

    name = "toy"
    ema_keys: ClassVar[dict[str, str]] = {"model": "ema", "scale": "ema_scale"}

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__(cfg)
        self.evaluated: list[int] = []
        self.saved = 0
        self.stop_at: int | None = None  # a step at which the run is killed

    def build(self):
        self.net = torch.nn.Linear(self.cfg.width, 1)
        self.scale = torch.nn.Linear(1, 1, bias=False)
        return {"model": self.net, "scale": self.scale}

    def param_groups(self, modules):
        return [{"params": list(self.net.parameters()), "lr": self.cfg.lr},
                {"params": list(self.scale.parameters()), "lr": 2 * self.cfg.lr}]

    def loss(self, run, step):
        if step == self.stop_at:
            raise KeyboardInterrupt
        x = torch.randn(4, self.cfg.width, generator=run.gen)
        loss = (self.scale(self.net(x)) - x.sum(1, keepdim=True)).pow(2).mean()
        return loss, {"loss": loss.item(), "step_seen": float(step)}

    def evaluations(self, run):
        return [Eval(self.cfg.eval_every, lambda step: self.evaluated.append(step) or
                     {"eval": float(step)})]

    def extra_state(self):
        self.saved += 1
        return {"toy": self.saved}

    def export(self, run):
        path = run.out / "final.pt"
        torch.save({k: run.weights(k).state_dict() for k in run.modules}, path)
        return path


def _fit(cfg: ToyConfig, log=None, stop_at: int | None = None) -> tuple[Trainer, Path]:
    hooks = ToyHooks(cfg)
    hooks.stop_at = stop_at
    run = Trainer(hooks, log=log or (lambda _: None))
    return run, run.fit()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _numbers(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "elapsed"} for row in history]


def test_resumed_equals_uninterrupted(tmp_path):
    straight, path = _fit(ToyConfig(out=str(tmp_path / "a")))
    with pytest.raises(KeyboardInterrupt):  # killed in step 6 of 6, after the checkpoint at 4
        _fit(ToyConfig(out=str(tmp_path / "b")), stop_at=5)
    logs: list[str] = []
    resumed, resumed_path = _fit(ToyConfig(out=str(tmp_path / "b")), logs.append)
    assert any(line.startswith("resumed from") and "at step 4" in line for line in logs)
    a, b = torch.load(path), torch.load(resumed_path)
    assert all(_same(a[k], b[k]) for k in a)
    for key in straight.modules:
        assert _same(straight.modules[key].state_dict(), resumed.modules[key].state_dict())
    sa, sb = straight.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert all(_same(sa[i], sb[i]) for i in sa)
    assert torch.equal(straight.gen.get_state(), resumed.gen.get_state())
    assert _numbers(resumed.history) == _numbers(straight.history)  # rows at 2, 4 and 6


def test_a_different_seed_gives_different_weights(tmp_path):
    """The resume check above can fail: a run that differs in anything is told apart."""
    _, a = _fit(ToyConfig(out=str(tmp_path / "a")))
    _, b = _fit(ToyConfig(out=str(tmp_path / "b"), seed=1))
    assert not _same(torch.load(a)["model"], torch.load(b)["model"])


def test_ema_moves_by_its_decay_and_zero_is_off():
    net = torch.nn.Linear(2, 1)
    ema = EMA({"model": net}, decay=0.75)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update()
    for k, v in ema.copies["model"].state_dict().items():
        assert torch.allclose(v, 0.75 * before[k] + 0.25 * net.state_dict()[k])
    copy = ema.copies["model"]
    assert not copy.training and not any(p.requires_grad for p in copy.parameters())
    off = EMA({"model": net}, decay=0.0)
    frozen = {k: v.clone() for k, v in off.copies["model"].state_dict().items()}
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    off.update()
    assert _same(off.copies["model"].state_dict(), frozen)


def test_weights_are_the_ema_copy_unless_it_is_off(tmp_path):
    run, _ = _fit(ToyConfig(out=str(tmp_path / "a"), steps=2))
    assert run.weights("model") is run.ema.copies["model"]
    assert run.weights("model", ema=False) is run.modules["model"]
    off, _ = _fit(ToyConfig(out=str(tmp_path / "b"), steps=2, ema=0.0))
    assert off.weights("model") is off.modules["model"]


def test_cadences(tmp_path):
    cfg = ToyConfig(out=str(tmp_path), steps=7, log_every=2, eval_every=4, ckpt_every=3)
    run = Trainer(ToyHooks(cfg), log=lambda _: None)
    saves: list[int] = []
    run.save = lambda step: saves.append(step)
    run.fit()
    assert [r["step"] for r in run.history] == [2, 4, 6, 7]  # and the last step
    assert run.hooks.evaluated == [4, 7]  # on log rows, every 4 and at the end
    assert saves == [3, 6, 7]
    # a row is the mean of its window's numbers (steps 0 and 1 -> 0.5), or the last step's
    assert [r["step_seen"] for r in run.history] == [0.5, 2.5, 4.5, 6.0]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4, 6, 7]
    assert due(4, 2, False) and not due(3, 2, False) and due(3, 2, True) and not due(5, 0, False)


def test_log_last_logs_the_last_steps_numbers(tmp_path):
    hooks = ToyHooks(ToyConfig(out=str(tmp_path), steps=4, log_every=2))
    hooks.log_last = True
    run = Trainer(hooks, log=lambda _: None)
    run.fit()
    assert [r["step_seen"] for r in run.history] == [1.0, 3.0]


def test_rates_follow_warmup_and_cosine_per_group(tmp_path):
    cfg = ToyConfig(out=str(tmp_path), steps=5, warmup=2)
    run = Trainer(ToyHooks(cfg), log=lambda _: None)
    seen = []
    loss = run.hooks.loss
    run.hooks.loss = lambda r, step: seen.append([g["lr"] for g in r.opt.param_groups]) or \
        loss(r, step)
    run.fit()
    for step, rates in enumerate(seen):
        f = cosine_factor(step, 2, 5, 0.1)
        assert rates == [cfg.lr * f, 2 * cfg.lr * f]
    assert cosine_factor(0, 2, 5, 0.1) == 0.5 and cosine_factor(1, 2, 5, 0.1) == 1.0
    assert cosine_factor(5, 2, 5, 0.1) == pytest.approx(0.1)


def test_checkpoint_round_trip_and_old_keys(tmp_path):
    run, _ = _fit(ToyConfig(out=str(tmp_path), steps=4))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert set(state) == {"model", "scale", "ema", "ema_scale", "opt", "gen", "step", "history",
                          "config", "toy"}
    assert state["step"] == 4 and state["toy"] == 2 and state["config"]["steps"] == 4
    # a checkpoint of an earlier revision (no config) still resumes, and a finished run
    # resumed at its last step trains no further: the same weights again
    del state["config"]
    torch.save(state, tmp_path / "checkpoint.pt")
    logs: list[str] = []
    again, _ = _fit(ToyConfig(out=str(tmp_path), steps=4), logs.append)
    assert any("at step 4" in line for line in logs) and again.start == 4
    for key in run.modules:
        assert _same(run.modules[key].state_dict(), again.modules[key].state_dict())
        assert _same(run.ema.copies[key].state_dict(), again.ema.copies[key].state_dict())


def test_changed_settings_are_named_on_resume(tmp_path):
    _fit(ToyConfig(out=str(tmp_path), steps=2))
    logs: list[str] = []
    _fit(ToyConfig(out=str(tmp_path), steps=3, lr=0.01, log_every=1), logs.append)
    warning = [line for line in logs if line.startswith("warning")]
    assert len(warning) == 1 and "['lr']" in warning[0]  # steps and log_every are run-only


def test_command_and_card_name_what_differs():
    @dataclass
    class Inner:
        depth: int = 2

    @dataclass
    class Nested(ToyConfig):
        inner: Inner = None  # type: ignore[assignment]

        def __post_init__(self) -> None:
            self.inner = self.inner or Inner()

    assert command("toy", ToyConfig()) == "rollbench train toy"
    assert command("toy", ToyConfig(steps=9, out="a b")) == "rollbench train toy steps=9 'out=a b'"
    assert command("toy", Nested(inner=Inner(3))) == "rollbench train toy inner.depth=3"
    cfg = replace(ToyConfig(), steps=9)
    card = base_card("toy", cfg, [{"step": 9, "loss": 0.5, "elapsed": 2.0}])
    assert card["command"] == "rollbench train toy steps=9" and card["final_loss"] == 0.5
    assert card["train"]["steps"] == 9 and card["wall_seconds"] == 2.0


def _restated(node: dict, default: object, prefix: str = "") -> list[str]:
    """Keys of a recipe yaml that restate their dataclass default (or name no field)."""
    out = []
    for key, value in node.items():
        if not hasattr(default, key):
            out.append(f"{prefix}{key} (no such setting)")
        elif isinstance(value, dict):
            out += _restated(value, getattr(default, key), f"{prefix}{key}.")
        elif value == getattr(default, key):
            out.append(f"{prefix}{key}={value}")
    return out


def test_recipe_yamls_hold_only_what_differs_from_their_defaults():
    from omegaconf import OmegaConf

    from toolkit.models.recipes import RECIPES

    files = sorted((Path(__file__).resolve().parents[1] / "ablations" / "train").glob("*.yaml"))
    assert len(files) >= 3
    restated = {f.stem: _restated(OmegaConf.to_container(OmegaConf.load(f)) or {},
                                  RECIPES.get(f.stem).config()) for f in files}
    assert {name: keys for name, keys in restated.items() if keys} == {}


def test_the_yaml_check_sees_a_restated_default():
    @dataclass
    class Inner:
        depth: int = 2

    @dataclass
    class Outer:
        steps: int = 3
        inner: Inner = None  # type: ignore[assignment]

    outer = Outer(inner=Inner())
    assert _restated({"steps": 4, "inner": {"depth": 2}, "nope": 1}, outer) == \
        ["inner.depth=2", "nope (no such setting)"]
