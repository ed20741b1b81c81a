"""KV storage codecs: the form in which the harness stores every cached block.

A codec is orthogonal to which blocks a strategy keeps: the rollout stores each ``BlockKV``
made while it runs (the blocks the harness hands a strategy, and any stand-in a strategy
builds as a ``BlockKV``, e.g. PackForcing's compressed copies) in the codec's form, and a
read (``BlockKV.layer_kv``, ``.keys``) dequantizes what it reads, one layer at a time when the
harness asks for a layer: the harness copies that layer into its reused attention buffer, and
no full-precision copy of the cache is held. Bytes are those of the stored tensors (codes +
scales + shared components), so ``footprint`` and the run table report the stored form.

- ``none``: the tensors as made (bit-identical to a rollout without a codec);
- ``int8`` / ``int4`` / ``int2``: per-group integer codes, ``group`` consecutive head-dim
  channels of one token sharing one float16 step; uniform levels ``(c - m) * step`` with
  ``m = (2^b - 1) / 2`` (no level at zero, all ``2^b`` levels used), ``step = absmax / m``, so
  every element is within ``step / 2`` of its level;
- ``residual2`` (after Quant VideoGen, Xi et al., ICML 2026: smooth the cache by removing what
  neighbouring tokens share, then quantize the small residual coarse-to-fine): the mean of
  each run of ``token_group`` consecutive tokens (a row segment of a frame: spatial
  neighbours) is stored in float16 and subtracted; the residual is quantized in ``stages``
  (bits per stage, default two 1-bit stages = 2 bits per element), each stage quantizing what
  the stages before left; 1-bit stages use the sign and the group's mean magnitude (the
  least-squares step; such a stage never raises a group's squared error, tested), wider
  stages the uniform levels above.

A strategy that assigns new tensors to a coded block (``block.keys = ...``, e.g. DeepSink
pruning tokens) has them stored again: their decoded values are quantized anew.

Codes are packed into uint8 along the head dim (``8 // bits`` codes per byte).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

CODECS = ("none", "int8", "int4", "int2", "residual2")
STAGE_BITS = (1, 2, 4, 8)
SCALE_DTYPE = torch.float16  # steps and shared components
_FP16_MAX = torch.finfo(torch.float16).max


@dataclass(frozen=True)
class Coded:
    """One tensor (L, B, H, N, D) in stored form.

    Attributes:
        shape: the tensor's shape; dtype / device: its dtype and device.
        codes: per stage, packed codes (L, B, H, N, D * bits / 8) uint8.
        steps: per stage, float16 steps (L, B, H, N, D / group).
        shared: the smoothing component (L, B, H, ceil(N / token_group), D) float16, or None.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    codes: tuple[Tensor, ...]
    steps: tuple[Tensor, ...]
    shared: Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor."""
        held = [*self.codes, *self.steps, *([self.shared] if self.shared is not None else [])]
        return sum(t.nbytes for t in held)

    @property
    def is_meta(self) -> bool:
        return self.codes[0].is_meta

    @property
    def device(self) -> torch.device:
        return self.codes[0].device


@dataclass(frozen=True)
class KVCodec:
    """How blocks are stored (``kv.codec`` and its options in a run config).

    Attributes:
        name: ``none`` | ``int8`` | ``int4`` | ``int2`` | ``residual2``.
        group: head-dim channels sharing one step (capped at the head dim, which it must then
            divide).
        token_group: ``residual2``: consecutive tokens sharing one smoothing component.
        stages: ``residual2``: bits of each residual stage, coarse first (each 1, 2, 4 or 8).
    """

    name: str = "none"
    group: int = 64
    token_group: int = 64
    stages: tuple[int, ...] = (1, 1)

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"kv.codec={self.name!r}: allowed {list(CODECS)}")
        for key in ("group", "token_group"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"kv.{key}={value!r}: must be a whole number >= 1")
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages or any(b not in STAGE_BITS for b in self.stages):
            raise ValueError(f"kv.stages={list(self.stages)}: a non-empty list of bits per "
                             f"stage, each one of {list(STAGE_BITS)}")

    @classmethod
    def of(cls, spec: Any) -> KVCodec | None:
        """A codec from a name, a mapping of the fields (``kv`` of a run config) or a codec;
        None for ``none`` (store as made)."""
        if spec is None or isinstance(spec, KVCodec):
            codec = spec
        elif isinstance(spec, str):
            codec = cls(spec)
        else:
            data = {k: v for k, v in dict(spec).items() if v is not None}
            unknown = sorted(set(data) - {"codec", "group", "token_group", "stages"})
            if unknown:
                raise ValueError(f"kv has no option(s) {unknown}; allowed: codec, group, "
                                 "token_group, stages")
            codec = cls(str(data.pop("codec", "none")), **{k: v if k != "stages" else tuple(v)
                                                          for k, v in data.items()})
        return None if codec is None or codec.name == "none" else codec

    @property
    def bits(self) -> tuple[int, ...]:
        """Bits of each stage (one stage for the integer codecs)."""
        return self.stages if self.smooth else (int(self.name[3:]),)

    @property
    def smooth(self) -> bool:
        return self.name == "residual2"

    def label(self) -> str:
        """The codec as a run's name shows it, e.g. ``int4/g64`` or ``residual2[1,1]/g64t64``."""
        if not self.smooth:
            return f"{self.name}/g{self.group}"
        return f"{self.name}[{','.join(map(str, self.stages))}]/g{self.group}t{self.token_group}"

    def group_of(self, head_dim: int) -> int:
        """The step group for a head dim (ValueError when it cannot be realised)."""
        g = min(self.group, head_dim)
        if head_dim % g:
            raise ValueError(f"kv.group={self.group}: must divide the head dim {head_dim} "
                             f"(e.g. {', '.join(str(d) for d in _divisors(head_dim))})")
        for b in self.bits:
            if head_dim * b % 8:
                raise ValueError(f"kv.codec={self.name} packs {b}-bit codes into bytes: the "
                                 f"head dim {head_dim} times {b} must be a multiple of 8")
        return g

    def check(self, head_dim: int) -> None:
        """Raise ValueError when this codec cannot store keys of ``head_dim`` channels."""
        self.group_of(head_dim)

    # -- encode / decode ----------------------------------------------------------------------
    def encode(self, x: Tensor) -> Coded:
        """The stored form of x (..., N, D); a tensor of layers (L, B, H, N, D) one layer at a
        time (the float32 working copies are one layer's)."""
        shape, d = tuple(x.shape), x.shape[-1]
        g = self.group_of(d)
        if x.is_meta:
            return self._meta(x, g)
        if x.dim() == 5:
            layers = [self.encode(layer) for layer in x.unbind(0)]
            shared = None if layers[0].shared is None else \
                torch.stack([c.shared for c in layers])
            codes = zip(*(c.codes for c in layers), strict=True)  # per stage, per layer
            steps = zip(*(c.steps for c in layers), strict=True)
            return Coded(shape, x.dtype, tuple(map(torch.stack, codes)),
                         tuple(map(torch.stack, steps)), shared)
        work = x.float()
        shared = None
        if self.smooth:
            shared = _token_means(work, min(self.token_group, x.shape[-2])).to(SCALE_DTYPE)
            work = work - self._expand(shared, x.shape[-2])
        codes, steps = [], []
        for b in self.bits:
            code, step = _quantize(work, b, g)
            codes.append(_pack(code, b))
            steps.append(step)
            if len(codes) < len(self.bits):
                work = work - _dequantize(code, step, b, g)
        return Coded(shape, x.dtype, tuple(codes), tuple(steps), shared)

    def decode(self, coded: Coded, layer: int | None = None) -> Tensor:
        """The tensor again (a new one), or only ``layer`` of its first dim."""
        shape = coded.shape if layer is None else coded.shape[1:]
        if coded.is_meta:
            return torch.empty(shape, dtype=coded.dtype, device="meta")

        def pick(t: Tensor) -> Tensor:
            return t if layer is None else t[layer]

        g = self.group_of(shape[-1])
        out = None
        for b, codes, step in zip(self.bits, coded.codes, coded.steps, strict=True):
            part = _dequantize(_unpack(pick(codes), b), pick(step), b, g)
            out = part if out is None else out.add_(part)
        if coded.shared is not None:
            out.add_(self._expand(pick(coded.shared), shape[-2]))
        return out.to(coded.dtype)

    def drop_tokens(self, coded: Coded, cut: int) -> Coded:
        """The stored form without the first ``cut`` tokens: codes and steps sliced (exact),
        the smoothing groups too when ``cut`` falls on a group boundary; otherwise the rest is
        decoded and stored again."""
        tg = min(self.token_group, coded.shape[-2])
        shape = (*coded.shape[:-2], coded.shape[-2] - cut, coded.shape[-1])
        if coded.shared is not None and cut % tg:
            return self.encode(self.decode(coded)[..., cut:, :])

        def rest(t: Tensor, start: int) -> Tensor:
            return t[..., start:, :].clone()

        shared = None if coded.shared is None else rest(coded.shared, cut // tg)
        return Coded(shape, coded.dtype, tuple(rest(c, cut) for c in coded.codes),
                     tuple(rest(s, cut) for s in coded.steps), shared)

    def _expand(self, shared: Tensor, tokens: int) -> Tensor:
        """Per-token view of the smoothing component (..., G, D) -> (..., tokens, D)."""
        tg = min(self.token_group, tokens)
        return shared.float().repeat_interleave(tg, dim=-2)[..., :tokens, :]

    def _meta(self, x: Tensor, g: int) -> Coded:
        """Stored form of a meta tensor: the exact sizes, no values."""
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        codes = tuple(torch.empty((*lead, n, d * b // 8), dtype=torch.uint8, device="meta")
                      for b in self.bits)
        steps = tuple(torch.empty((*lead, n, d // g), dtype=SCALE_DTYPE, device="meta")
                      for _ in self.bits)
        shared = None
        if self.smooth:
            groups = -(-n // min(self.token_group, n)) if n else 0
            shared = torch.empty((*lead, groups, d), dtype=SCALE_DTYPE, device="meta")
        return Coded(tuple(x.shape), x.dtype, codes, steps, shared)

    def stored_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of the stored form of a tensor of ``shape`` (from the sizes alone)."""
        return self._meta(torch.empty(shape, device="meta"), self.group_of(shape[-1])).nbytes


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0][-4:]


def _middle(bits: int) -> float:
    return (2 ** bits - 1) / 2


def _quantize(x: Tensor, bits: int, g: int) -> tuple[Tensor, Tensor]:
    """Codes (..., D) uint8 and float16 steps (..., D / g) of x (..., D) (float32)."""
    grouped = x.unflatten(-1, (-1, g))  # (..., D / g, g)
    m = _middle(bits)
    if bits == 1:  # sign: levels +-step/2 with step/2 = mean |x| (least squares)
        step = 2 * grouped.abs().mean(-1)
    else:  # uniform: the largest magnitude on the outermost level
        step = grouped.abs().amax(-1) / m * (1 + 2 ** -10)  # float16 rounding never clips
    step16 = step.clamp(max=_FP16_MAX).to(SCALE_DTYPE)
    safe = torch.where(step16 == 0, torch.ones_like(step16), step16).float().unsqueeze(-1)
    code = torch.round(grouped / safe + m).clamp_(0, 2 ** bits - 1).to(torch.uint8)
    return code.flatten(-2), step16


def _dequantize(code: Tensor, step: Tensor, bits: int, g: int) -> Tensor:
    """Float32 values (..., D) of codes (..., D) and steps (..., D / g)."""
    levels = code.float().unflatten(-1, (-1, g)) - _middle(bits)
    return (levels * step.float().unsqueeze(-1)).flatten(-2)


def _pack(code: Tensor, bits: int) -> Tensor:
    """uint8 codes (..., D) of ``bits`` each -> (..., D * bits / 8) bytes."""
    if bits == 8:
        return code
    per = 8 // bits
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=code.device)
    return (code.unflatten(-1, (-1, per)) << shifts).sum(-1, dtype=torch.uint8)


def _unpack(packed: Tensor, bits: int) -> Tensor:
    if bits == 8:
        return packed
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & (2 ** bits - 1)).flatten(-2)


def _token_means(x: Tensor, tg: int) -> Tensor:
    """Mean over each run of ``tg`` consecutive tokens (..., N, D) -> (..., ceil(N / tg), D)
    (the last run may be shorter)."""
    n = x.shape[-2]
    groups = -(-n // tg)
    pad = groups * tg - n
    if pad:
        x = torch.cat([x, x.new_zeros((*x.shape[:-2], pad, x.shape[-1]))], dim=-2)
    sums = x.unflatten(-2, (groups, tg)).sum(-2)
    counts = torch.full((groups, 1), float(tg), device=x.device)
    counts[-1] = tg - pad
    return sums / counts


# -- the rollout's codec ---------------------------------------------------------------------
_ACTIVE: ContextVar[KVCodec | None] = ContextVar("kv_codec", default=None)


def active_codec() -> KVCodec | None:
    """The codec blocks made now are stored with (None: as made)."""
    return _ACTIVE.get()


@contextmanager
def storing(codec: Any) -> Iterator[KVCodec | None]:
    """Blocks made inside are stored with ``codec`` (a ``KVCodec``, a name, ``kv`` options or
    None) for the rest of their life; ``none`` / None: as made."""
    token = _ACTIVE.set(KVCodec.of(codec))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)
