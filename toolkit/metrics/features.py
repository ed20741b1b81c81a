"""Pluggable frame-feature backends, and the LPIPS network where its weights are present.

A feature backend maps frames (F, 3, H, W) in [0, 1] to features (F, D). Register another with
``@FEATURES.register("name")`` or the entry-point group ``rollbench.features``, and select it
with ``MetricInput(feature="name")``. Worlds register their own (the sprite world's ``world``,
built from its analysers' colour classes, is the default). A backend whose class sets
``local_weights = True`` is built as ``cls(weights, options)`` from
``MetricInput.backends[name]`` (``dino``, ``clip`` and ``raft`` in ``toolkit.metrics.backends``
load their networks from local files only).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg

from toolkit.compat import moved_names
from toolkit.plugins import WORLDS
from toolkit.registry import Registry

FEATURES: Registry[type] = Registry("feature backend", "rollbench.features",
                                    "toolkit.metrics.features", extended_by=(WORLDS,))


def make_backend(name: str, weights: Any = None, options: Mapping[str, Any] | None = None) -> Any:
    """A feature backend: ``cls(weights, options)`` for one with ``local_weights`` (dino, clip,
    raft: ``toolkit.metrics.backends``), else ``cls()``."""
    cls = FEATURES.get(name)
    if getattr(cls, "local_weights", False):
        return cls(weights, dict(options or {}))
    return cls()


def frame_features(frames: np.ndarray, backend: str = "world", weights: Any = None,
                   options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Features (F, D) of frames (F, 3, H, W) with a registered backend (``weights``: its local
    weights, for a backend that needs them)."""
    return np.asarray(make_backend(backend, weights, options)(frames), dtype=np.float64)


# --- distances between feature sets -------------------------------------------------
def frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, root2: np.ndarray) -> float:
    """Frechet distance of Gaussians; ``root2`` = sqrtm(s2).

    ``tr sqrtm(s1 s2)`` is the sum of square roots of the eigenvalues of the symmetric PSD
    ``root2 s1 root2`` (same spectrum), which stays real where ``s1`` is singular.
    """
    ev = np.linalg.eigvalsh(root2 @ s1 @ root2)
    cross = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(root2 @ root2) - 2 * cross)


def psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (``scipy.linalg.sqrtm`` without its warnings on
    the singular covariances that constant feature dims give)."""
    w, v = linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# --- LPIPS --------------------------------------------------------------------------------
LPIPS_NETS = ("alex", "vgg", "squeeze")


def lpips_backbone_file(net: str = "alex") -> Path:
    """Where torchvision would look for the ImageNet backbone of an LPIPS net (never fetched)."""
    from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

    weights = {"alex": AlexNet_Weights, "vgg": VGG16_Weights, "squeeze": SqueezeNet1_1_Weights}
    if net not in weights:
        raise ValueError(f"LPIPS net {net!r}: allowed {LPIPS_NETS}")
    url = weights[net].IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """(present, reason): whether the LPIPS backbone weights are in the torch hub cache."""
    path = lpips_backbone_file(net)
    if not path.is_file():
        return False, (f"LPIPS {net} backbone weights are not present at {path}; they are "
                       "never downloaded. Put torchvision's file there to enable LPIPS")
    return True, f"LPIPS {net} backbone weights found at {path}"


def load_lpips(net: str = "alex") -> torch.nn.Module:
    """The LPIPS network with its backbone loaded from the local file only.

    The network is built with a random trunk (no download) and the trunk's weights are then
    copied from the cached torchvision file; any failure raises, so LPIPS is never computed on
    a random backbone.

    Raises:
        FileNotFoundError: the backbone file is missing.
        RuntimeError: the file is present but is not the backbone's weights.
    """
    import lpips

    present, reason = lpips_status(net)
    if not present:
        raise FileNotFoundError(reason)
    path = lpips_backbone_file(net)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{path} is present but could not be read as weights: {err}") from err
    with warnings.catch_warnings():  # lpips uses torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
    loaded = 0
    for slice_ in model.net.children():
        for idx, layer in slice_.named_children():
            sub = {k.split(".", 2)[2]: v for k, v in state.items()
                   if k.startswith(f"features.{idx}.")}
            if list(layer.state_dict()):
                layer.load_state_dict(sub)  # strict: every trunk tensor must come from the file
                loaded += 1
    if loaded == 0:
        raise RuntimeError(f"{path} held no weights of the {net} trunk")
    return model


__getattr__ = moved_names(__name__)  # names that moved to a world (toolkit.compat)
