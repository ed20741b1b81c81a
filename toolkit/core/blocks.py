"""What a cache strategy holds and how it is counted: a cached block's per-layer K/V
(``BlockKV``, stored as made or in a KV codec's form), a block the harness has finished
(``FinishedBlock``), and the tokens and exact bytes per partition (``Usage``, ``usage``).
``toolkit.core.cache`` (the strategy contract) re-exports them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from toolkit.core.codecs import Coded, active_codec
from toolkit.core.rope import Rope


@dataclass
class BlockKV:
    """Per-layer K/V of one cached block (or of a compressed stand-in for one).

    A block made under a KV codec (``toolkit.core.codecs.storing``: the rollout's ``kv.codec``)
    holds its K/V in the codec's stored form for life: ``keys`` / ``values`` decode a new
    tensor, ``layer_kv`` / ``stored_layer`` one layer, assigning them stores them encoded, and
    ``nbytes`` counts the stored tensors. Without a codec the tensors are held as made.

    Attributes:
        index: the block's number in the video.
        keys: (L, B, H, N, D), rotated at temporal start ``rotated_at``.
        values: (L, B, H, N, D).
        t0: temporal position (in latent frames) the block sits at now.
        partition: name of the partition holding it (for accounting).
        rotated_at: temporal start the stored keys are rotated at (default ``t0``); reads
            (``layer_kv``, ``keys_at_t0``) rotate them by ``t0 - rotated_at``.
    """

    index: int
    keys: Tensor
    values: Tensor
    t0: float
    partition: str = "cache"
    rotated_at: float | None = None

    def __post_init__(self) -> None:
        if self.rotated_at is None:
            self.rotated_at = self.t0

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _KV:  # new tensors: forget the old ones' layer views
            state = self.__dict__
            state.pop("_views", None)
            if "_codec" not in state:  # the codec of the block's first tensors, for life
                state["_codec"] = active_codec()
            if state["_codec"] is not None:
                state.pop(name, None)
                state[_KV[name]] = state["_codec"].encode(value)
                return
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:  # only reached for attributes not held as made
        coded = self.__dict__.get(_KV.get(name, ""))
        if coded is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.__dict__["_codec"].decode(coded)

    def _coded(self, name: str) -> Coded | None:  # the stored form, None when held as made
        return self.__dict__.get(_KV[name])

    @property
    def tokens(self) -> int:
        coded = self._coded("keys")
        return coded.shape[-2] if coded is not None else self.keys.shape[-2]

    @property
    def nbytes(self) -> int:
        """Bytes held: the tensors', or their stored form's (codes, steps, shared parts)."""
        ck, cv = self._coded("keys"), self._coded("values")
        if ck is not None:
            return ck.nbytes + cv.nbytes
        return self.keys.nbytes + self.values.nbytes

    @property
    def is_meta(self) -> bool:
        """Whether the block is sizes only (memory accounting on meta tensors)."""
        coded = self._coded("keys")
        return coded.is_meta if coded is not None else self.keys.is_meta

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the K/V (as read; the stored form may be narrower)."""
        coded = self._coded("keys")
        return coded.dtype if coded is not None else self.keys.dtype

    def move_to(self, t0: float, rope: Rope | None = None) -> None:
        """Place the block at temporal start t0 (keys are rotated there when read)."""
        self.t0 = float(t0)

    def stored_layer(self, layer: int) -> tuple[Tensor, Tensor]:
        """Keys (rotated at ``rotated_at``, as stored) and values (B, H, N, D) of one layer:
        views of the held tensors, or that layer decoded from the stored form."""
        ck = self._coded("keys")
        if ck is not None:
            codec = self.__dict__["_codec"]
            return codec.decode(ck, layer), codec.decode(self._coded("values"), layer)
        views = self.__dict__.get("_views")
        if views is None:
            views = self.__dict__["_views"] = _LayerViews(self.keys, self.values)
        return views.layers[layer]

    def layer_kv(self, layer: int, rope: Rope) -> tuple[Tensor, Tensor]:
        """Keys (rotated at ``t0``) and values (B, H, N, D) of one layer."""
        from toolkit.core.rope import shift_time

        k, v = self.stored_layer(layer)
        return shift_time(k, rope, self.t0 - self.rotated_at), v

    def keys_at_t0(self, rope: Rope) -> Tensor:
        """All layers' keys (L, B, H, N, D) rotated at ``t0`` (a copy when the block moved)."""
        from toolkit.core.rope import shift_time

        return shift_time(self.keys, rope, self.t0 - self.rotated_at)

    def drop_frames(self, frames: int, tokens_per_frame: int) -> None:
        """Forget the first ``frames`` latent frames (copies the rest, so memory is freed)."""
        if frames <= 0:
            return
        cut = frames * tokens_per_frame
        ck = self._coded("keys")
        if ck is not None:
            codec = self.__dict__["_codec"]
            self.__dict__[_KV["keys"]] = codec.drop_tokens(ck, cut)
            self.__dict__[_KV["values"]] = codec.drop_tokens(self._coded("values"), cut)
        else:
            self.keys = self.keys[..., cut:, :].clone()
            self.values = self.values[..., cut:, :].clone()
        self.t0 += frames
        self.rotated_at += frames


_KV = {"keys": "_coded_keys", "values": "_coded_values"}  # attribute -> its stored form


class _LayerViews:
    """Per-layer views of a block's K/V, made once (indexing a layer is an op per call).

    Views share the block's storage and hold no bytes of their own; ``__slots__`` keeps them
    out of walks over a strategy's state (``toolkit.core.testing.held_tensors``).
    """

    __slots__ = ("layers",)

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.layers = list(zip(keys.unbind(0), values.unbind(0), strict=True))


@dataclass
class FinishedBlock:
    """A block the harness has finished: its clean latents and its cache-fill K/V.

    ``cond`` is the conditioning the block was made under (``model.encode_prompt`` of the
    prompt in force at its first frame, see ``toolkit.core.schedule``), for strategies that run more
    tokens through the model (e.g. compressed stand-ins); None when unknown.
    """

    index: int
    latents: Tensor  # (B, C, F, H, W) clean
    kv: BlockKV  # rotated at the position it was generated at
    cond: Tensor | None = None  # (B, L, C)


@dataclass
class Usage:
    """Tokens and exact bytes held by one partition."""

    tokens: int = 0
    bytes: int = 0


def usage(blocks: Iterable[BlockKV], partitions: Iterable[str] = ()) -> dict[str, Usage]:
    """Per-partition usage of blocks; listed partitions appear even when empty."""
    out = {p: Usage() for p in partitions}
    for b in blocks:
        u = out.setdefault(b.partition, Usage())
        u.tokens += b.tokens
        u.bytes += b.nbytes
    return out
