"""PackForcing's compression: a finished block's compressed stand-in for the mid archive.

:class:`Compression` builds (and keeps, across rollouts: it may be trained) the registered
compressor module (``strategies.compressors``), checks what it needs of the model, and turns a
finished block into per-layer K/V at the compressed cells' positions:

- token compressors (``hr``, ``lr``, ``dual``, ``pool``) make tokens, whose K/V come from
  ``kv``: ``transformer`` (the tokens through the whole transformer at timestep 0, attending
  only to themselves, cross-attending to the block's prompt: ``model.token_kv``) or ``project``
  (each layer's pre-attention norm and K/V projection: ``model.project_kv``);
- K/V compressors (``pool_kv``, ``identity``) compress the block's own K/V, one layer at a
  time (working copies of one layer only), un-rotated and rotated again at the cells.

``spatial``: RoPE rows/columns of the cells at the ``centres`` of the covered full-resolution
cells or the coarse ``grid`` indices (``Compressor.positions``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

from strategies.compressors import Compressor, build_compressor, compressor_class
from strategies.compressors.base import model_sha256
from toolkit.core.cache import BlockKV, FinishedBlock
from toolkit.core.rope import Rope, grid_positions, rotate_at
from toolkit.core.spec import ModelSpec


class Compression:
    """The compressor of a PackForcing cache and how its stand-ins are made (module
    docstring); the arguments are ``PackForcing``'s fields of the same names
    (``compressor_weights`` is ``weights``)."""

    def __init__(self, compressor: str, compress_time: int, compress_space: int | None,
                 hr_channels: int, weights: str | None, allow_random: bool, lr_decode: str,
                 kv: str, spatial: str) -> None:
        learned = compressor_class(compressor).learned  # unknown names fail here
        if weights is not None and not learned:
            raise ValueError(f"compressor_weights={weights!r}: compressor {compressor!r} has no "
                             "parameters (learned: hr, dual)")
        self.compressor, self.compress_time, self.compress_space = (compressor, compress_time,
                                                                    compress_space)
        self.hr_channels, self.weights, self.allow_random = hr_channels, weights, allow_random
        self.lr_decode, self.kv, self.spatial = lr_decode, kv, spatial
        self.module: Compressor | None = None  # kept across rollouts, so trainable
        self._key: tuple = ()

    def build(self, spec: ModelSpec, meta: bool) -> Compressor:
        """A new compressor module for ``spec`` (``meta``: sizes only, no weights read)."""
        with torch.device("meta") if meta else nullcontext():
            return build_compressor(self.compressor, spec, self.compress_time,
                                    self.compress_space, self.hr_channels,
                                    None if meta else self.weights, decode=self.lr_decode)

    def bind(self, model: Any) -> None:
        """Build (or keep) the module for this model, then check what it needs.

        On a meta model (memory accounting) compressors never run: their outputs are meta
        tensors of the declared size, so their runtime needs (VAE, trained weights...) are not
        checked.
        """
        meta = torch.device(getattr(model, "device", "cpu")).type == "meta"
        key = (self.compressor, model.spec, self.compress_time, self.compress_space,
               self.hr_channels, self.weights, self.lr_decode, meta)
        if key != self._key:
            self.module, self._key = self.build(model.spec, meta), key
            if not meta:
                self.module.to(model.device).eval()
        if meta:
            return
        self.module.check_model(model)
        method = "token_kv" if self.kv == "transformer" else "project_kv"
        if self.module.kind == "tokens" and not hasattr(model, method):
            raise ValueError(f"kv={self.kv!r} needs model.{method} (a WanCausalModel)")
        problem = self.module.untrained_problem(model)
        if problem and not self.allow_random:
            raise ValueError(f"{problem}; give trained weights (strategy.compressor_weights"
                             "=FILE) or set strategy.allow_random=true to run it anyway")

    def stand_in(self, block: FinishedBlock, model: Any, rope: Rope) -> BlockKV:
        """The block's compressed stand-in (partition ``pending``): per-layer K/V rotated at
        the cells' positions."""
        module, kv, spec = self.module, block.kv, model.spec
        if kv.is_meta:  # accounting: the declared size, no values
            shape = (*kv.keys.shape[:3], module.tokens(spec), kv.keys.shape[-1])
            keys = torch.empty(shape, dtype=kv.dtype, device="meta")
            return BlockKV(block.index, keys, torch.empty_like(keys), kv.t0, "pending")
        pos = module.positions(self.spatial)
        pos[:, 0] += kv.t0
        if module.kind == "kv":
            keys, values = self._compress_kv(kv, spec, rope, pos)
        else:
            tokens = module.compress(block.latents, model)
            if self.kv == "project":
                keys, values = model.project_kv(tokens, pos)
            elif block.cond is None:
                raise ValueError("kv='transformer' needs the prompt conditioning "
                                 "(FinishedBlock.cond); use kv='project' or pass it")
            else:
                keys, values = model.token_kv(tokens, pos, block.cond)
        return BlockKV(block.index, keys.to(kv.dtype), values.to(kv.dtype), kv.t0, "pending")

    def _compress_kv(self, kv: BlockKV, spec: ModelSpec, rope: Rope, pos: Tensor
                     ) -> tuple[Tensor, Tensor]:
        """A K/V compressor, one layer at a time (working copies of one layer only)."""
        full = grid_positions(spec, kv.rotated_at, spec.block_frames)
        keys, values = [], []
        for layer in range(spec.num_layers):
            k, v = (t.unsqueeze(0) for t in kv.stored_layer(layer))  # (1, B, H, N, D)
            raw = rotate_at(k, rope, full, inverse=True)
            k, v = self.module.compress_kv(raw, v)
            keys.append(rotate_at(k, rope, pos).to(kv.dtype))
            values.append(v.to(kv.dtype))
        return torch.cat(keys), torch.cat(values)

    def provenance(self, model: Any) -> dict[str, Any]:
        """The learned module's weights (file, sha256, the model weights they were trained
        with) and the model's weights; empty for training-free compressors."""
        module = self.module
        if module is None or not module.learned:
            return {}
        return {"compressor": self.compressor, "compressor_weights": module.weights_file,
                "compressor_sha256": module.weights_sha256,
                "compressor_trained_for": module.trained_for,
                "model_sha256": model_sha256(model), "allow_random": self.allow_random}
