"""Compressors of PackForcing's mid partition; importing the package registers the built-ins.

| name | kind | what | learned |
|---|---|---|---|
| ``hr`` | tokens | strided 3D convs on latents + projection (paper's HR branch) | yes |
| ``lr`` | tokens | VAE decode, pixel pool, re-encode, patch-embed (paper's LR branch) | no |
| ``dual`` | tokens | ``hr`` + ``lr`` summed (paper's default) | yes |
| ``pool`` | tokens | average-pooled latents, patch-embedded | no |
| ``pool_kv`` | kv | average-pooled per-layer K/V | no |
| ``identity`` | kv | the block's own K/V (no compression) | no |

A user's compressor: subclass ``Compressor`` and register it with ``@COMPRESSORS.register``
(or name it as ``module.Class``).
"""

from strategies.compressors.base import (
    COMPRESSORS,
    KV_MODES,
    SPATIAL,
    Compressor,
    build_compressor,
    compressor_class,
    resolve_rate,
)
from strategies.compressors.hr import HR
from strategies.compressors.lr import LR, Dual
from strategies.compressors.pool import Identity, Pool, PoolKV

__all__ = ["COMPRESSORS", "HR", "KV_MODES", "LR", "SPATIAL", "Compressor", "Dual", "Identity",
           "Pool", "PoolKV", "build_compressor", "compressor_class", "resolve_rate"]
