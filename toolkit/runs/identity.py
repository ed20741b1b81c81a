"""A run's identity: its run key, how it was measured, and where it came from.

- :func:`run_key`: sha256 of the resolved config without what does not change the rollout
  (``EXCLUDED_KEYS``: where results go, how they are tracked and measured, the report label;
  ``DEFAULT_ONLY``: keys added later, at the value every older run had); a grid skips a key
  that already finished.
- :func:`measure_key`: sha256 of how a run is measured (``tracking.metrics`` as the metric
  names it stands for, ``options``, ``feature``, ``segment_frames``); a finished run measured
  otherwise is re-measured from its saved latents and trace, never rolled out again
  (``toolkit.runs.jobs``).
- provenance: the git revision (:func:`git_state`) and package versions (:func:`versions`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from toolkit.compat import old_path

EXCLUDED_KEYS = ("run_root", "progress", "tracking", "variant", "parallel")
#: Keys added after runs were stored, hashed only when they differ from the value every run had
#: before them (so the stored runs keep their keys): ``recache``.
DEFAULT_ONLY = {"recache": "none"}
#: The keys of ``tracking`` that say how a run is measured (:func:`measure_key`).
MEASURED_BY = ("metrics", "options", "feature", "segment_frames")


def canonical_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config without the keys that do not change a rollout.

    The KV codec (``kv``) is left out when it is ``none`` (runs keep the keys they had before
    codecs existed) and otherwise written with its options resolved (an option left at its
    default and one given as the default are one key)."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) \
        else json.loads(json.dumps(cfg, default=str))
    out = {k: v for k, v in data.items() if k not in EXCLUDED_KEYS
           and not (k in DEFAULT_ONLY and v == DEFAULT_ONLY[k])}
    kv = out.pop("kv", None)
    if isinstance(kv, Mapping) and str(kv.get("codec") or "none") != "none":
        from toolkit.core.codecs import KVCodec

        codec = KVCodec.of(kv)
        out["kv"] = {"codec": codec.name, "group": codec.group}
        if codec.smooth:
            out["kv"] |= {"token_group": codec.token_group, "stages": list(codec.stages)}
    return out


def run_key(cfg: DictConfig | Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of :func:`canonical_config` (same config, same key).

    ``_target_`` paths are hashed as they were first spelled (``toolkit.compat.old_path``): a
    module that moves, or a config naming its old path, keeps the key of the stored runs.
    """
    text = json.dumps(_first_targets(canonical_config(cfg)), sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _first_targets(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: old_path(v) if k == "_target_" and isinstance(v, str) else _first_targets(v)
                for k, v in node.items()}
    return [_first_targets(v) for v in node] if isinstance(node, list) else node


def measure_key(cfg: DictConfig | Mapping[str, Any]) -> str:
    """sha256 of how a run is measured: the metric names ``tracking.metrics`` stands for (a
    set's current members), the metric ``options``, the ``feature`` backend and
    ``segment_frames`` (the same defaults as ``record_run``: set ``world``, feature ``world``,
    no options, one block per segment)."""
    from toolkit.metrics import metric_names

    track = cfg.get("tracking") or {}
    plain = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
             for k, v in ((k, track.get(k)) for k in MEASURED_BY)}
    data = {"metrics": metric_names(plain["metrics"] or "world"),
            "options": plain["options"] or {}, "feature": plain["feature"] or "world",
            "segment_frames": plain["segment_frames"]}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


def git_state(path: str | Path | None = None) -> dict[str, str]:
    """Revision and dirty flag of the repository holding ``path`` ("unknown" without git)."""
    cwd = Path(path or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_revision": "unknown", "git_dirty": "unknown"}
    return {"git_revision": rev, "git_dirty": str(bool(dirty)).lower()}


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on, as ``version.<package>`` tags."""
    return {f"version.{p}": _version(p) for p in ("torch", "diffusers", "rollbench", "mlflow")}
