"""Causal checkpoints in the original Wan / Self-Forcing layout, loaded into a diffusers Wan.

A Self-Forcing / CausVid checkpoint is a ``.pt`` (``torch.save``) or ``.safetensors`` state dict
of the original Wan naming (``blocks.0.self_attn.q.weight``, ``head.head.weight`` ...), often
wrapped under a ``generator`` / ``generator_ema`` key and prefixed ``model.`` (Self-Forcing's
``WanDiffusionWrapper.model``); FSDP-saved ones also carry ``_fsdp_wrapped_module.``. The key
names are converted by diffusers' own single-file converter for Wan
(``convert_wan_transformer_to_diffusers``), never by a hand-written map; a state dict already
in diffusers naming is taken as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from torch import Tensor

from toolkit.errors import ConfigError

WRAPPERS = ("generator_ema", "generator", "state_dict")  # tried in this order when not named
PREFIXES = ("model.diffusion_model.", "_orig_mod.", "module.", "model.")  # stripped when shared
WRAPPED = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")  # removed inside keys
SHOWN = 10  # keys listed in an error message


class CheckpointError(ConfigError):
    """A checkpoint that cannot be loaded into the model; the message names what is wrong."""


def read_state(path: str | Path, key: str | None = None) -> tuple[dict[str, Tensor], str]:
    """The tensors of a checkpoint file, unwrapped and with shared prefixes stripped.

    Args:
        path: a ``.pt`` / ``.pth`` / ``.ckpt`` (loaded with ``weights_only=True``) or
            ``.safetensors`` file.
        key: the wrapper to take (``generator_ema``, ``generator`` ...); None takes the first
            of ``WRAPPERS`` present, else the top level.

    Returns:
        The state dict and a description of where in the file it came from.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint={path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: dict = load_file(str(path))
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files of the legacy (non-zip) format cannot be memory-mapped
            raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a state dict")
    state, where = _unwrap(raw, key, path)
    return _strip_prefixes(state), where


def _unwrap(raw: dict, key: str | None, path: Path) -> tuple[dict[str, Tensor], str]:
    nested = [k for k, v in raw.items() if isinstance(v, dict)]
    flat_wrappers = sorted({k.split(".", 1)[0] for k in raw if "." in k} & set(WRAPPERS))
    candidates = [key] if key is not None else list(WRAPPERS)
    for name in candidates:
        if name in nested:
            return raw[name], f"{path}[{name!r}]"
        if name in flat_wrappers:  # a flattened wrapper, e.g. safetensors "generator_ema.*"
            cut = len(name) + 1
            return {k[cut:]: v for k, v in raw.items() if k.startswith(name + ".")}, \
                f"{path} ({name}.*)"
    if key is not None:
        raise CheckpointError(f"{path}: has no {key!r} entry; it holds "
                              f"{sorted(nested + flat_wrappers) or 'a plain state dict'} "
                              "(set model.checkpoint_key=null to take the plain state dict)")
    if nested:
        raise CheckpointError(f"{path}: top-level entries {sorted(nested)} are not a known "
                              f"wrapper {list(WRAPPERS)}; name one with model.checkpoint_key")
    return raw, str(path)


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if any(w in k for k in state for w in WRAPPED):  # FSDP / activation-checkpoint wrappers
        state = {_unwrapped(k): v for k, v in state.items()}
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in PREFIXES:  # longest first: "model.diffusion_model." before "model."
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _unwrapped(key: str) -> str:
    for w in WRAPPED:
        key = key.replace(w, "")
    return key


def is_diffusers_layout(state: dict[str, Tensor]) -> bool:
    """True when the keys already use diffusers' Wan naming (attn1 / condition_embedder)."""
    return any(".attn1." in k or k.startswith("condition_embedder.") for k in state)


def to_diffusers(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Convert original-layout keys with diffusers' converter.

    Returns:
        The converted state dict and, for each converted key, the key it had in the file.
    """
    if is_diffusers_layout(state):
        return dict(state), {k: k for k in state}
    origin = {id(v): k for k, v in state.items()}  # renaming keeps the tensor objects
    converted = convert_wan_transformer_to_diffusers(dict(state))
    return converted, {k: origin.get(id(v), k) for k, v in converted.items()}


def _listing(keys: list[str]) -> str:
    head = ", ".join(keys[:SHOWN])
    return f"{len(keys)} key(s): {head}" + (", ..." if len(keys) > SHOWN else "")


def read_folder(folder: str | Path) -> tuple[dict[str, Tensor], str]:
    """The weights of a diffusers model folder (one or sharded safetensors, or a ``.bin``).

    diffusers' own ``from_pretrained`` is not used for the Wan transformer: without
    ``accelerate`` it refuses models with ``_keep_in_fp32_modules`` (Wan has them).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        files = [folder / f for f in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if files:
        state: dict[str, Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return state, str(folder)
    bins = sorted(folder.glob("*.bin"))
    if bins:
        return torch.load(bins[0], map_location="cpu", weights_only=True), str(bins[0])
    raise CheckpointError(f"{folder}: no *.safetensors (or *.bin) weights found")


def assign(transformer: torch.nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Copy a state dict (original or diffusers naming) into a diffusers Wan transformer.

    Every parameter must be present with its exact shape; values keep the transformer's own
    dtypes (diffusers' fp32 modules stay fp32).

    Raises:
        CheckpointError: unexpected keys (first ten listed, with the count), missing keys, or a
            shape mismatch (both key names and both shapes).
    """
    converted, origin = to_diffusers(state)
    expected = transformer.state_dict()
    unexpected = sorted(origin[k] for k in converted if k not in expected)
    if unexpected:
        raise CheckpointError(f"{where}: unexpected {_listing(unexpected)} (not parameters of "
                              "a Wan transformer of this config)")
    missing = sorted(k for k in expected if k not in converted)
    if missing:
        raise CheckpointError(f"{where}: missing {_listing(missing)} (diffusers naming)")
    for k, v in converted.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{where}: shape mismatch at {origin[k]!r} (diffusers {k!r}): "
                                  f"checkpoint {tuple(v.shape)} vs model "
                                  f"{tuple(expected[k].shape)}")
    with torch.no_grad():
        for k, param in expected.items():
            param.copy_(converted[k])


def load_checkpoint(transformer: torch.nn.Module, path: str | Path,
                    key: str | None = None) -> str:
    """Load an original-layout (or diffusers-layout) checkpoint file into a Wan transformer.

    Args:
        transformer: the ``WanTransformer3DModel`` to fill.
        path: the checkpoint file.
        key: wrapper entry to take (see ``read_state``).

    Returns:
        Where the weights came from (file and entry).

    Raises:
        CheckpointError: see ``assign``; also a missing file or an unknown wrapper.
    """
    state, where = read_state(path, key)
    assign(transformer, state, where)
    return where
