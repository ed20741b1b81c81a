"""The compressor contract: one finished block in, its compressed mid stand-in out.

Every compressor covers a block of ``block_frames`` latent frames with a coarse grid of cells,
each cell ``rt`` latent frames by ``rh`` x ``rw`` full-resolution token cells; one compressed
token per cell. The grid, the token count and the cells' RoPE positions follow from the spec and
the rate alone (no weights), so memory accounting on meta tensors needs nothing else.

Two kinds:
- ``tokens``: clean latents (B, C, F, H, W) -> hidden tokens (B, M, width); the strategy turns
  them into per-layer K/V (through the transformer, or each layer's K/V projection);
- ``kv``: the block's per-layer K/V, keys un-rotated (L, B, H, N, D) -> (L, B, H, M, D); the
  strategy rotates the keys at the cells' positions.

A strategy shows a compressor every finished block of a video in order (``observe``; ``reset``
starts a new video), so a compressor can keep state along the stream (``lr`` decodes each
block with its temporal context). Learned compressors record the weights they loaded
(``weights_sha256``) and, from the card beside them, the model weights they were trained
with (``trained_for``); ``untrained_problem`` says when they would stand in untrained.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from toolkit.core.spec import ModelSpec
from toolkit.registry import Registry, UnknownName

COMPRESSORS: Registry[type] = Registry("compressor", "rollbench.compressors",
                                       "strategies.compressors")
SPATIAL = ("centres", "grid")
#: How compressed tokens become K/V (PackForcing's ``kv``, its trainer's too): run through the
#: whole transformer (``transformer``), or each layer's norm and K/V projection (``project``).
KV_MODES = ("transformer", "project")
PAPER_SPACE = 8  # the paper's spatial reduction of the latent grid (3 stride-2 stages)


def _powers_of_two(lo: int, hi: int) -> list[int]:
    out, p = [], 1
    while p <= hi:
        if p >= lo:
            out.append(p)
        p *= 2
    return out


def resolve_rate(spec: ModelSpec, time: int, space: int | None) -> tuple[int, int]:
    """The (time, space) reduction a compressor uses on this model, checked.

    Args:
        spec: model sizes.
        time: latent frames per compressed cell; must divide the block.
        space: latent rows / columns per compressed cell side: a power of two, a multiple of
            the patch, at most the latent grid. None: the paper's 8, or the largest such
            power of two if the latent grid is smaller than 8.

    Raises:
        ValueError: naming the bad value and the allowed ones.
    """
    bf = spec.block_frames
    if time < 1 or bf % time:
        allowed = [d for d in range(1, bf + 1) if bf % d == 0]
        raise ValueError(f"compress_time={time}: must divide the block size {bf} "
                         f"(allowed {allowed})")
    lo = max(spec.patch[1], spec.patch[2], 2)
    allowed = _powers_of_two(lo, min(spec.latent_height, spec.latent_width))
    if not allowed:
        raise ValueError(f"latent grid {spec.latent_height}x{spec.latent_width} is too small "
                         f"to compress spatially (needs at least {lo}x{lo})")
    if space is None:
        return time, min(PAPER_SPACE, allowed[-1])
    if space not in allowed:
        raise ValueError(f"compress_space={space}: allowed {allowed} on the latent grid "
                         f"{spec.latent_height}x{spec.latent_width} with patch {spec.patch[1:]}")
    return time, space


class Compressor(torch.nn.Module):
    """Base of every compressor (a ``torch.nn.Module``: learned ones are trained end-to-end).

    Args:
        spec: model sizes.
        time: temporal reduction (see ``resolve_rate``).
        space: spatial reduction of the latent grid (see ``resolve_rate``).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "tokens"  # "tokens" or "kv"
    needs_vae: ClassVar[bool] = False
    fixed_rate: ClassVar[bool] = False  # True: time / space do not apply (identity)
    learned: ClassVar[bool] = False  # True: has parameters; takes ``weights``

    def __init__(self, spec: ModelSpec, time: int = 2, space: int | None = None) -> None:
        super().__init__()
        self.spec, self.requested = spec, (time, space)
        self.time, self.space = (1, spec.patch[1]) if self.fixed_rate else \
            resolve_rate(spec, time, space)
        self.weights_file: str | None = None  # what ``load`` read, its sha256 and card
        self.weights_sha256: str | None = None
        self.card: dict[str, Any] = {}

    def reset(self) -> None:
        """A new video starts: forget any state kept along the previous one."""

    def observe(self, latents: Tensor, model: Any) -> None:
        """The video's next finished block (B, C, F, H, W), in order, compressed or not."""

    @property
    def trained_for(self) -> str | None:
        """sha256 of the model weights the loaded weights were trained with (from their card)."""
        for key in ("model", "world"):
            entry = self.card.get(key)
            if isinstance(entry, dict) and entry.get("sha256"):
                return str(entry["sha256"])
        return None

    def untrained_problem(self, model: Any) -> str | None:
        """Why this learned compressor would run untrained on ``model`` (None: it would not).

        Without weights it is its random initialisation; with weights whose card names the
        model weights they were trained with, and a model whose weights are known (its card's
        sha256) and differ, it was trained for another model.
        """
        if not self.learned:
            return None
        if self.weights_file is None:
            return (f"compressor={self.name!r} has no trained weights "
                    "(strategy.compressor_weights=null): it would run with its random "
                    "initialisation")
        mine = model_sha256(model)
        if self.trained_for is not None and mine is not None and mine != self.trained_for:
            return (f"compressor weights {self.weights_file} were trained with model weights "
                    f"{self.trained_for[:12]}..., but this model's weights are {mine[:12]}...")
        return None

    def cells(self, spec: ModelSpec | None = None) -> tuple[int, int, int]:
        """Full-resolution token cells per compressed cell: (rt, rh, rw)."""
        spec = spec or self.spec
        if self.fixed_rate:
            return 1, 1, 1
        time, space = resolve_rate(spec, *self.requested)
        return time, space // spec.patch[1], space // spec.patch[2]

    def grid(self, spec: ModelSpec | None = None) -> tuple[int, int, int]:
        """Compressed cells per block: (time, rows, columns); partial cells are dropped."""
        spec = spec or self.spec
        rt, rh, rw = self.cells(spec)
        gh, gw = spec.grid
        return spec.block_frames // rt, gh // rh, gw // rw

    def tokens(self, spec: ModelSpec | None = None) -> int:
        """Compressed tokens per block on this (or another) spec."""
        t, h, w = self.grid(spec)
        return t * h * w

    def positions(self, spatial: str = "centres") -> Tensor:
        """RoPE positions (M, 3) of the compressed tokens, time relative to the block start.

        Time is always the centre of the covered latent frames (e.g. 0.5 and 2.5 for two
        cells over four frames). Space: ``centres`` of the covered full-resolution token cells
        (fractional), or ``grid``, the coarse cell indices 0, 1, 2...
        """
        if spatial not in SPATIAL:
            raise ValueError(f"spatial={spatial!r}: allowed {list(SPATIAL)}")
        axes = []
        for n, r, coarse in zip(self.grid(), self.cells(), (False, True, True), strict=True):
            index = torch.arange(n, dtype=torch.float64)
            axes.append(index if coarse and spatial == "grid" else index * r + (r - 1) / 2)
        tt, hh, ww = torch.meshgrid(*axes, indexing="ij")
        return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)

    def check_model(self, model: Any) -> None:
        """Raise ValueError if the model lacks what this compressor needs (e.g. a VAE)."""
        if self.needs_vae and getattr(model, "vae", None) is None:
            raise ValueError(f"compressor={self.name!r} needs a model with a VAE (it decodes "
                             "and re-encodes the block); this model has vae=None: use 'hr', "
                             "'pool' or 'pool_kv'")
        if self.kind == "tokens" and not hasattr(model, "patch_embed"):
            raise ValueError(f"compressor={self.name!r} needs model.patch_embed")

    def compress(self, latents: Tensor, model: Any) -> Tensor:
        """Hidden tokens (B, M, width) of clean latents (B, C, F, H, W) (``tokens`` kind)."""
        raise NotImplementedError(f"compressor {self.name!r} is of kind {self.kind!r}")

    def compress_kv(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Compressed K/V of un-rotated keys and values (L, B, H, N, D) (``kv`` kind)."""
        raise NotImplementedError(f"compressor {self.name!r} is of kind {self.kind!r}")

    def _checked(self, tokens: Tensor, what: str) -> Tensor:
        if tokens.shape[-2] != self.tokens():
            raise ValueError(f"compressor {self.name!r} made {tokens.shape[-2]} tokens from "
                             f"{what}, but declares {self.tokens()} (grid {self.grid()}); "
                             "choose compress_time / compress_space the model can realise")
        return tokens

    def save(self, path: str | Path) -> Path:
        """Write the parameters (safetensors)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(path))
        return path

    def load(self, path: str | Path) -> None:
        """Read parameters written by ``save`` (shapes must match this configuration)."""
        from safetensors.torch import load_file

        from toolkit.models.weights import find_weights, missing_weights

        path = find_weights(path)
        if not path.exists():
            raise FileNotFoundError(missing_weights(path, "compressor weights",
                                                    "train them with `rollbench train "
                                                    "packforcing`"))
        state = load_file(str(path))
        try:
            self.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"compressor weights {path} do not fit compressor "
                             f"{self.name!r} (rate {self.requested}): {err}") from err
        self.weights_file, self.weights_sha256 = str(path), file_sha256(path)
        card = path.with_suffix(".json")
        self.card = json.loads(card.read_text()) if card.is_file() else {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_sha256(model: Any) -> str | None:
    """sha256 of a model's weights when it knows it (a card's, or ``weights_sha256``)."""
    card = getattr(model, "card", None)
    if isinstance(card, dict) and card.get("sha256"):
        return str(card["sha256"])
    return getattr(model, "weights_sha256", None)


def compressor_class(name: str) -> type[Compressor]:
    """The compressor class of a registered name or ``module.Class`` path.

    Raises:
        ValueError: unknown name (with "did you mean"), or not a ``Compressor``.
    """
    try:
        cls = COMPRESSORS.get(name)
    except UnknownName as err:
        raise ValueError(str(err)) from err
    if not (isinstance(cls, type) and issubclass(cls, Compressor)):
        raise ValueError(f"compressor={name!r} is not a Compressor")
    return cls


def build_compressor(name: str, spec: ModelSpec, time: int = 2, space: int | None = None,
                     channels: int = 16, weights: str | None = None, seed: int = 0,
                     decode: str = "stream") -> Compressor:
    """A registered compressor configured for ``spec``.

    Args:
        name: registered name (``COMPRESSORS.names()``) or a ``module.Class`` path.
        spec: model sizes.
        time: temporal reduction.
        space: spatial reduction of the latent grid (None: the paper's 8, or what fits).
        channels: largest hidden width of a learned compressor's stages (``hr``, ``dual``).
        weights: safetensors file of a learned compressor's trained parameters.
        seed: seeds a learned compressor's random initialisation (without ``weights``).
        decode: how VAE compressors (``lr``, ``dual``) decode a block: ``stream`` (in the
            video's stream, with its temporal context) or ``block`` (on its own).
    """
    cls = compressor_class(name)
    extra = {"decode": decode} if "decode" in inspect.signature(cls).parameters else {}
    if cls.learned:
        return cls(spec, time=time, space=space, channels=channels, weights=weights, seed=seed,
                   **extra)
    if weights is not None:
        raise ValueError(f"compressor_weights={weights!r}: compressor {name!r} has no "
                         "parameters (learned ones: hr, dual)")
    return cls(spec, time=time, space=space, **extra)
