"""Composing run configs with Hydra, and turning config nodes into strategies and models.

Every registered strategy (built-in or from an entry point) is also a config in the
``strategy`` group, generated from its dataclass: the dataclass is the schema.

A user's own config folder joins the search path with ``experiments_dir=DIR`` (or Hydra's
``hydra.searchpath=[file://DIR]``): ``DIR/experiment/NAME.yaml``, ``DIR/sweep/NAME.yaml`` and
``DIR/strategy|model/NAME.yaml`` are found beside the built-in ones of ``ablations/``.

Composition errors come back as one line naming the value: an unknown key gets the closest
existing keys ("did you mean"), an unknown group option the closest options, a size that is
not a whole number or a device that is not there is refused before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from toolkit.errors import ConfigError
from toolkit.registry import STRATEGIES, where

if TYPE_CHECKING:
    from toolkit.core.cache import CacheStrategy

#: Built-in config folders (the package ``ablations``).
ABLATIONS = Path(__file__).resolve().parents[2] / "ablations"


def register_strategy_configs() -> None:
    """Store every registered strategy as a ``strategy/<name>`` config (its dataclass defaults).

    Hydra finds these before any YAML; ``compose_config`` and ``rollbench grid`` call it first.
    """
    cs = ConfigStore.instance()
    for name, cls in STRATEGIES.items().items():
        node = {"_target_": name, "label": name}
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                if f.init and f.default is not dataclasses.MISSING:
                    node[f.name] = f.default
        cs.store(group="strategy", name=name, node=node)
    cs.store(group="strategy", name="custom", node={"_target_": "???", "label": None})


def with_experiments_dir(overrides: Sequence[str]) -> list[str]:
    """``experiments_dir=DIR`` as Hydra's ``hydra.searchpath=[file://DIR]`` (the folder must
    exist); other overrides unchanged."""
    out, dirs = [], []
    for o in overrides:
        if o.startswith("experiments_dir="):
            path = Path(o.split("=", 1)[1]).expanduser().resolve()
            if not path.is_dir():
                raise ConfigError(f"experiments_dir={o.split('=', 1)[1]!r} is not a folder "
                                  "(give a folder holding experiment/NAME.yaml or "
                                  "sweep/NAME.yaml files)")
            dirs.append(f"file://{path}")
        else:
            out.append(o)
    if dirs:
        out.append(f"hydra.searchpath=[{','.join(dirs)}]")
    return out


def search_dirs(overrides: Sequence[str]) -> list[Path]:
    """The config folders of a command line: ``ablations/``, then each user folder given by
    ``experiments_dir=`` or ``hydra.searchpath`` (``file://`` entries)."""
    out = [ABLATIONS]
    for o in with_experiments_dir(overrides):
        if o.startswith(("hydra.searchpath=", "+hydra.searchpath=")):
            for entry in o.split("=", 1)[1].strip("[]").split(","):
                entry = entry.strip().strip("'\"")
                if entry.startswith("file://"):
                    out.append(Path(entry[len("file://"):]))
                elif entry and "://" not in entry:
                    out.append(Path(entry))
    return out


def group_files(group: str, overrides: Sequence[str] = ()) -> dict[str, Path]:
    """``name -> file`` of a config group over the search path. As in Hydra, the first folder
    holding a name wins: a user's file named like a built-in one is shadowed by it."""
    found: dict[str, Path] = {}
    for folder in search_dirs(overrides):
        for path in sorted((folder / group).glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


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
    """Compose ``ablations/<config_name>.yaml`` with Hydra overrides (see the module docstring).

    Raises:
        ConfigError: one line naming the bad key or value and what is allowed.
    """
    register_strategy_configs()
    overrides = with_experiments_dir(rewrite_custom(overrides))
    notes, tried = [], {}  # deprecations; new key -> (the error, the overrides) of its old one
    while True:
        try:
            cfg = _compose(overrides, config_name)
            break
        except Exception as err:
            if not type(err).__module__.startswith(("hydra", "omegaconf")):
                raise
            renamed = rename_override(err, overrides)
            if renamed is None:  # a renamed key this strategy lacks: say it as the user wrote it
                err, said = tried.get(_unknown_key(err) or "", (err, overrides))
                raise ConfigError(explain(err, said, config_name)) from None
            tried[renamed[1]] = (err, overrides)
            overrides = renamed[0]
            notes.append(renamed[2])
    for note in notes:
        warnings.warn(note, FutureWarning, stacklevel=2)
    if config_name == "config":
        check_run_config(cfg)
    return cfg


def _compose(overrides: Sequence[str], config_name: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="ablations", version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def renamed_keys() -> dict[str, str]:
    """Old -> new hyperparameter names of every registered strategy (their ``renamed``)."""
    out: dict[str, str] = {}
    for cls in STRATEGIES.items().values():
        out.update(getattr(cls, "renamed", {}))
    return out


def _unknown_key(err: Exception) -> str | None:
    text = f"{err}\n{err.__cause__ or ''}"
    key = re.search(r"Could not (?:override|append to) '([^']+)'", text)
    return key.group(1) if key and "not in struct" in text else None


def rename_override(err: Exception, overrides: Sequence[str]
                    ) -> tuple[list[str], str, str] | None:
    """For a renamed strategy hyperparameter that Hydra refused (``strategy.window_frames=12``):
    the overrides with it under its new name, the new key and the deprecation note; None when
    the error is about something else."""
    key = _unknown_key(err)
    old = key[len("strategy."):] if key and key.startswith("strategy.") else None
    new = renamed_keys().get(old or "")
    if new is None:
        return None
    out, note = [], ""
    for o in overrides:
        prefix = o[:len(o) - len(o.lstrip("+~"))]
        name, eq, value = o[len(prefix):].partition("=")
        if name == key and eq:
            out.append(f"{prefix}strategy.{new}={value}")
            note = (f"strategy.{old} was renamed strategy.{new} (same meaning); write "
                    f"strategy.{new}={value}")
        else:
            out.append(o)
    return (out, f"strategy.{new}", note) if note else None


def _keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config (a DictConfig or its plain container)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if not isinstance(node, dict):
        return []
    out = []
    for key, value in node.items():
        out.append(f"{prefix}{key}")
        out += _keys(value, f"{prefix}{key}.")
    return out


def explain(err: Exception, overrides: Sequence[str], config_name: str = "config") -> str:
    """One line for a Hydra composition error: the bad override and the closest valid names."""
    text = f"{err}\n{err.__cause__ or ''}"
    name = _unknown_key(err)
    if name is not None:
        value = next((o.split("=", 1)[1] for o in overrides
                      if o.lstrip("+~").split("=", 1)[0] == name), "?")
        groups = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
        try:
            keys = _keys(_compose(groups, config_name))
        except Exception:  # the groups themselves are wrong: say what we know
            keys = []
        parent = name.rpartition(".")[0]
        close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]}?" if close else ""
        siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
        new = renamed_keys().get(name.rpartition(".")[2]) if parent == "strategy" else None
        if new in siblings:
            hint = (f" {name} was renamed {parent}.{new} (same meaning): write {new} in its "
                    "place.")
        where = f" Keys of {parent}: {', '.join(siblings)}." if parent and siblings else ""
        return f"unknown config key {name!r} ({name}={value}).{hint}{where}"
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Available options", 1)[-1], re.M)
        close = difflib.get_close_matches(option, options, n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        return (f"{group}={option}: no such {group} config.{hint} Available: "
                f"{', '.join(options) or '(none)'}")
    return " ".join(text.split())


def check_run_config(cfg: DictConfig) -> None:
    """Whole numbers where sizes go, a number of seconds, a device that exists, the driver of a
    database tracking URI, the measures of ``tracking.metrics`` (ConfigError)."""
    video = cfg.get("video") or {}
    for key, value, example in (("video.latent_frames", video.get("latent_frames"), 40),
                                ("seed", cfg.get("seed"), 0), ("threads", cfg.get("threads"), 1)):
        if key == "video.latent_frames" and value is None and video.get("seconds") is not None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: must be a whole number (e.g. {key}={example})")
    if int(cfg.threads) < 1:
        raise ConfigError(f"threads={cfg.threads}: must be >= 1")
    seconds = video.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                                or seconds <= 0):
        raise ConfigError(f"video.seconds={seconds!r}: must be a positive number of seconds "
                          "(or null to use video.latent_frames)")
    check_device(cfg.get("device", "cpu"), present=False)  # whether it exists: when building
    if cfg.get("recache", "none") not in ("none", "switch"):
        raise ConfigError(f"recache={cfg.recache!r}: allowed none (keep the cache across prompt "
                          "switches) or switch (rebuild it under the new prompt)")
    if cfg.get("prompt") is not None:  # a malformed schedule fails before any model loads
        from toolkit.core.schedule import PromptSchedule

        try:
            PromptSchedule.of(cfg.prompt)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"prompt: {err}") from None
    uri = (cfg.get("tracking") or {}).get("uri")
    if uri:
        from toolkit.runs.stores import require_driver

        require_driver(str(uri))  # a missing driver fails now, not after the rollout
    which = (cfg.get("tracking") or {}).get("metrics")
    if which is not None:
        check_metrics(which, (cfg.get("model") or {}).get("_target_"))


def check_metrics(which: Any, model_target: Any = None) -> list[str]:
    """The metric names ``tracking.metrics`` stands for (a set's name or a list), checked before
    any work: ConfigError naming the value with the sets, or the closest metric names.

    A set or metric not registered yet may come with the run's world: the module of the model's
    ``_target_`` (where a world outside the toolkit registers itself) is imported, and the names
    are looked up again.
    """
    import importlib

    from toolkit.metrics import metric_names
    from toolkit.registry import UnknownName

    value = OmegaConf.to_container(which) if OmegaConf.is_config(which) else which
    try:
        return metric_names(value)
    except (ValueError, UnknownName) as err:
        module = str(model_target or "").rpartition(".")[0]
        try:
            importlib.import_module(module) if module else None
            return metric_names(value)
        except (ImportError, ValueError, UnknownName):
            raise ConfigError(f"tracking.metrics={value}: {err}") from None


def check_device(device: Any, present: bool = True) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` (ConfigError otherwise); with ``present``, of a GPU this
    machine has (models are built with it; composing a config only checks the name)."""
    text = str(device)
    if text == "cpu":
        return
    if not re.fullmatch(r"cuda(:\d+)?", text):
        raise ConfigError(f"device={text!r}: allowed cpu, cuda or cuda:N")
    if not present:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device={text}: no CUDA GPU is available on this machine "
                          "(torch.cuda.is_available() is False); use device=cpu")
    index = int(text.split(":")[1]) if ":" in text else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device={text}: this machine has {torch.cuda.device_count()} "
                          f"GPU(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")


def video_frames(cfg: DictConfig, spec: Any) -> int:
    """Latent frames of a run: ``video.seconds`` through ``spec.frames_for`` when set, else
    ``video.latent_frames``; a positive multiple of the block size (ConfigError otherwise)."""
    seconds = cfg.video.get("seconds")
    frames = spec.frames_for(float(seconds)) if seconds is not None else cfg.video.latent_frames
    if isinstance(frames, bool) or not isinstance(frames, int):
        raise ConfigError(f"video.latent_frames={frames!r}: must be a whole number")
    try:
        spec.check_blocks("video.latent_frames", frames, positive=True)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return frames


def build_strategy(node: DictConfig | dict[str, Any]) -> CacheStrategy:
    """A strategy from its config node ``{_target_: name-or-path, **hyperparameters}``."""
    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) \
        else dict(node)
    from toolkit.core.cache import CacheStrategy
    from toolkit.core.contract import renamed_params

    target = params.pop("_target_", None)
    params.pop("label", None)  # the name reports show; not a hyperparameter
    if not target:
        raise ConfigError("strategy._target_ is missing: give a registered name "
                          f"({', '.join(STRATEGIES.names())}) or a 'module.Class' path")
    cls = STRATEGIES.get(str(target))
    if not (isinstance(cls, type) and issubclass(cls, CacheStrategy)):
        raise ConfigError(f"strategy._target_={target!r} ({where(cls)}) is not a CacheStrategy")
    try:
        params = renamed_params(cls, params)
    except ValueError as err:
        raise ConfigError(f"strategy {target!r}: {err}") from None
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


def build_codec(cfg: DictConfig | dict[str, Any]) -> Any:
    """The KV storage codec of a run config's ``kv`` node (``toolkit.core.codecs.KVCodec``),
    or None for ``kv.codec=none`` / no node (ConfigError naming a bad value)."""
    node = cfg.get("kv")
    if node is None:
        return None
    data = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) \
        else dict(node)
    from toolkit.core.codecs import KVCodec

    try:
        return KVCodec.of(data)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def run_label(cfg: DictConfig) -> str:
    """A run's default report label: its strategy's, with its KV codec when it has one
    (``sink + int2/g64``)."""
    label = strategy_label(cfg.strategy)
    kv = cfg.get("kv") or {}
    return label if str(kv.get("codec") or "none") == "none" else \
        f"{label} + {build_codec(cfg).label()}"


def strategy_label(node: DictConfig | dict[str, Any]) -> str:
    """The name a strategy config is reported under: its ``label``, else its target."""
    label = node.get("label")
    return str(label) if label else str(node.get("_target_", "?")).rsplit(".", 1)[-1]


def build_model(node: DictConfig, device: str = "cpu") -> Any:
    """Instantiate the model node and move it to ``device`` (checked first)."""
    from hydra.utils import instantiate

    check_device(device)
    model = instantiate(node)
    return model.to(device)


def build(cfg: DictConfig) -> tuple[Any, Any]:
    """Model and strategy of a composed run config, checked against each other (and the KV
    codec, ``kv``, against the model).

    ``video.latent_frames`` is set from ``video.seconds`` when that is given
    (:func:`video_frames`).
    """
    import torch

    torch.set_num_threads(int(cfg.threads))
    strategy = build_strategy(cfg.strategy)
    codec = build_codec(cfg)
    model = build_model(cfg.model, cfg.device)
    strategy.check(model.spec)
    if codec is not None:
        try:
            codec.check(model.spec.head_dim)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    cfg.video.latent_frames = video_frames(cfg, model.spec)
    return model, strategy
