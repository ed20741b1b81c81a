"""Composing run configs with Hydra, and turning config nodes into strategies and models.

Every registered strategy (built-in or from an entry point) is also a config in the
``strategy`` group, generated from its dataclass: the dataclass is the schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from toolkit.cache import CacheStrategy
from toolkit.registry import STRATEGIES, where


class ConfigError(ValueError):
    """A config value that cannot work, named with what is allowed."""


def _register_strategy_configs() -> None:
    cs = ConfigStore.instance()
    for name, cls in STRATEGIES.items().items():
        node = {"_target_": name, "label": name}
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                if f.init and f.default is not dataclasses.MISSING:
                    node[f.name] = f.default
        cs.store(group="strategy", name=name, node=node)
    cs.store(group="strategy", name="custom", node={"_target_": "???", "label": None})


def rewrite_custom(overrides: Sequence[str]) -> list[str]:
    """``strategy._target_=pkg.Cls`` alone selects the ``custom`` node; its fields become '+'."""
    overrides = list(overrides)
    target = next((o for o in overrides if o.startswith("strategy._target_=")), None)
    if target is None or any(o.startswith("strategy=") for o in overrides):
        return overrides
    name = target.split("=", 1)[1]
    if name in STRATEGIES.names():
        return [o for o in overrides if o != target] + [f"strategy={name}"]
    out = ["strategy=custom"]
    for o in overrides:
        out.append("+" + o if o.startswith("strategy.") and o != target else o)
    return out


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``ablations/<config_name>.yaml`` with Hydra overrides."""
    _register_strategy_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="ablations", version_base="1.3"):
        return compose(config_name=config_name, overrides=rewrite_custom(overrides))


def build_strategy(node: DictConfig | dict[str, Any]) -> CacheStrategy:
    """A strategy from its config node ``{_target_: name-or-path, **hyperparameters}``."""
    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) \
        else dict(node)
    target = params.pop("_target_", None)
    params.pop("label", None)  # the name reports show; not a hyperparameter
    if not target:
        raise ConfigError("strategy._target_ is missing: give a registered name "
                          f"({', '.join(STRATEGIES.names())}) or a 'module.Class' path")
    cls = STRATEGIES.get(str(target))
    if not (isinstance(cls, type) and issubclass(cls, CacheStrategy)):
        raise ConfigError(f"strategy._target_={target!r} ({where(cls)}) is not a CacheStrategy")
    if dataclasses.is_dataclass(cls):
        allowed = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(f"strategy {target!r} has no field(s) {unknown}; allowed: {allowed}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.init}
        for key, value in params.items():
            _check_type(target, key, value, defaults[key])
    return cls(**params)


def _check_type(target: str, key: str, value: Any, default: Any) -> None:
    if default is dataclasses.MISSING or default is None or value is None:
        return
    kind = float if isinstance(default, float) else type(default)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"strategy {target!r}: {key}={value!r} should be a {kind.__name__} "
                          f"(default {default!r})")


def strategy_label(node: DictConfig | dict[str, Any]) -> str:
    """The name a strategy config is reported under: its ``label``, else its target."""
    label = node.get("label")
    return str(label) if label else str(node.get("_target_", "?")).rsplit(".", 1)[-1]


def build_model(node: DictConfig, device: str = "cpu") -> Any:
    """Instantiate the model node and move it to ``device``."""
    model = instantiate(node)
    return model.to(device)


def build(cfg: DictConfig) -> tuple[Any, CacheStrategy]:
    """Model and strategy of a composed run config, checked against each other."""
    torch.set_num_threads(int(cfg.threads))
    strategy = build_strategy(cfg.strategy)
    model = build_model(cfg.model, cfg.device)
    strategy.check(model.spec)
    if cfg.video.get("seconds") is not None:
        cfg.video.latent_frames = model.spec.frames_for(float(cfg.video.seconds))
    frames, bf = cfg.video.latent_frames, model.spec.block_frames
    if frames < bf or frames % bf:
        raise ConfigError(f"video.latent_frames={frames}: must be a positive multiple of the "
                          f"block size {bf}")
    return model, strategy
