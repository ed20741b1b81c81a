"""Networks for real videos, from local weights only: the DINO, CLIP and RAFT feature backends.

Nothing is ever downloaded. Each backend loads its network from the path the user names
(``tracking.backends.<name>``, i.e. ``MetricInput.backends``) and raises ``Unavailable`` with
the reason when the path is missing, holds another network, or lacks any of the network's
weights, so a measure is never computed on random weights. Hugging Face folders are read with
``from_pretrained(dir, local_files_only=True)`` (safetensors, or ``torch.load`` with
``weights_only``); the RAFT file with ``torch.load(file, weights_only=True)``.

- ``dino``: a DINO ViT (``ViTModel``; ``facebook/dino-vitb16`` is VBench's network) or a DINOv2
  (``Dinov2Model``). Feature: the CLS token of the last, layer-normed hidden state. Frames are
  resized to a ``dino_size`` (224) pixel short side, bilinear, ImageNet mean / std, no crop
  (VBench's DINO transform).
- ``clip``: a ``CLIPModel`` with its tokenizer. Image feature: the projected CLS embedding of
  the frame resized to the model's image size on its short side (bicubic), centre-cropped,
  normalised with the folder's ``preprocessor_config.json`` mean / std (CLIP's when absent):
  VBench's CLIP transform. Text feature: the projected end-of-text embedding, prompts cut to
  the model's context.
- ``raft``: torchvision's ``raft_large`` or ``raft_small``, told apart by the state dict. Frames
  under 128 pixels (RAFT's correlation pyramid needs 128) are enlarged by a whole factor
  (nearest), padded to a multiple of 8 (edge pixels), and refined ``raft_iters`` (20, as VBench)
  times. Its frame feature is the motion into each frame (:func:`flow_top_magnitude`).

Options (``MetricInput.options``): ``backend_device`` (cuda when available, else cpu),
``backend_batch`` (8 frames or frame pairs per forward), ``dino_size`` (224), ``raft_iters``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.metrics.base import Unavailable
from toolkit.metrics.features import FEATURES

WHAT = {"dino": "a Hugging Face folder of a DINO ViTModel or a Dinov2Model",
        "clip": "a Hugging Face folder of a CLIPModel with its tokenizer",
        "raft": "a torchvision raft_large / raft_small state dict file (.pth)"}
HF_TYPES = {"dino": ("vit", "dinov2"), "clip": ("clip",)}
UNUSED = ("pooler.", "embeddings.mask_token")  # parameters the features never read
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
RAFT_MIN = 128  # RAFT's 4-level correlation pyramid needs 1/8-resolution maps of 16 or more
REFERENCE_SIDE = 256  # VBench's dynamic-degree thresholds are in pixels at a 256-px short side


def weights_path(name: str, path: Any) -> Path:
    """The backend's weights path, or Unavailable saying what to set."""
    if path is None or str(path).strip() in ("", "None", "null"):
        raise Unavailable(f"no weights for the {name} backend: set tracking.backends.{name}=PATH "
                          f"({WHAT[name]}); weights are never downloaded")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise Unavailable(f"{name} weights not found: {p} does not exist ({WHAT[name]})")
    return p


def device_of(options: Mapping[str, Any]) -> str:
    """``backend_device``, else cuda when available, else cpu."""
    return str(options.get("backend_device") or ("cuda" if torch.cuda.is_available() else "cpu"))


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


@contextmanager
def _quiet() -> Iterator[None]:
    """transformers without its progress bars and load reports (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=4)
def load_hf(name: str, path: Any, device: str) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer or None) of the ``dino`` or ``clip`` backend from a local folder.

    Raises:
        Unavailable: the folder is missing, is not a model folder, holds another kind of model,
            cannot be loaded, or lacks weights the features use.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    p = weights_path(name, path)
    if not (p / "config.json").is_file():
        raise Unavailable(f"{p} is not a Hugging Face model folder (no config.json); the {name} "
                          f"backend needs {WHAT[name]}")
    try:
        with _quiet():
            kind = AutoConfig.from_pretrained(p, local_files_only=True).model_type
    except Exception as err:
        raise Unavailable(f"{p / 'config.json'} could not be read: {_short(err)}") from err
    if kind not in HF_TYPES[name]:
        raise Unavailable(f"{p} holds a {kind!r} model; the {name} backend needs "
                          f"{' or '.join(map(repr, HF_TYPES[name]))} ({WHAT[name]})")
    try:
        with _quiet():
            model, info = AutoModel.from_pretrained(p, local_files_only=True,
                                                    output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True) \
                if name == "clip" else None
    except Exception as err:
        raise Unavailable(f"{p} could not be loaded as {name} weights: {type(err).__name__}: "
                          f"{_short(err)}") from err
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(UNUSED))
    missing += sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing:
        raise Unavailable(f"{p} lacks {len(missing)} of the {name} network's weights (e.g. "
                          f"{', '.join(missing[:3])}); it is never run on random weights")
    return model.eval().to(device), tokenizer


def _batches(frames: np.ndarray | torch.Tensor, size: int, device: str) -> Iterator[torch.Tensor]:
    x = torch.as_tensor(np.asarray(frames, dtype=np.float32))
    for a in range(0, len(x), size):
        yield x[a:a + size].to(device)


def resize_short(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize (N, 3, H, W) so its short side is ``size`` (the long side scaled and truncated)."""
    h, w = x.shape[-2:]
    out = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    return F.interpolate(x, size=out, mode=mode, align_corners=False).clamp(0, 1)


def _normalise(x: torch.Tensor, norm: tuple[Sequence[float], Sequence[float]]) -> torch.Tensor:
    mean = torch.tensor(norm[0], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(norm[1], device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@FEATURES.register("dino")
class DinoFeatures:
    """DINO / DINOv2 CLS features (F, D) of frames, from a local Hugging Face folder."""

    local_weights = True

    def __init__(self, weights: Any = None, options: Mapping[str, Any] | None = None) -> None:
        options = options or {}
        self.device = device_of(options)
        self.model, _ = load_hf("dino", weights, self.device)
        self.size = int(options.get("dino_size", 224))
        self.batch = int(options.get("backend_batch", 8))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        extra = {"interpolate_pos_encoding": True} if self.model.config.model_type == "vit" else {}
        out = []
        with torch.no_grad():
            for x in _batches(frames, self.batch, self.device):
                x = _normalise(resize_short(x, self.size, "bilinear"), IMAGENET)
                hidden = self.model(pixel_values=x, **extra).last_hidden_state
                out.append(hidden[:, 0].float().cpu())
        return torch.cat(out).numpy().astype(np.float64)


@FEATURES.register("clip")
class ClipFeatures:
    """CLIP image features (F, D) of frames, and text features of prompts, from a local folder."""

    local_weights = True

    def __init__(self, weights: Any = None, options: Mapping[str, Any] | None = None) -> None:
        options = options or {}
        self.device = device_of(options)
        self.model, self.tokenizer = load_hf("clip", weights, self.device)
        self.size = int(self.model.config.vision_config.image_size)
        self.batch = int(options.get("backend_batch", 8))
        self.norm = CLIP_NORM
        pre = weights_path("clip", weights) / "preprocessor_config.json"
        if pre.is_file():
            data = json.loads(pre.read_text())
            self.norm = (data.get("image_mean", CLIP_NORM[0]), data.get("image_std", CLIP_NORM[1]))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for x in _batches(frames, self.batch, self.device):
                x = resize_short(x, self.size, "bicubic")
                h, w = x.shape[-2:]
                top, left = (h - self.size) // 2, (w - self.size) // 2
                x = _normalise(x[..., top:top + self.size, left:left + self.size], self.norm)
                pooled = self.model.vision_model(pixel_values=x).pooler_output
                out.append(self.model.visual_projection(pooled).float().cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def text(self, prompts: Sequence[str]) -> np.ndarray:
        """Text features (N, D) of prompts (cut to the model's context length)."""
        limit = int(self.model.config.text_config.max_position_embeddings)
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=limit,
                             return_tensors="pt").to(self.device)
        with torch.no_grad():
            pooled = self.model.text_model(input_ids=enc["input_ids"],
                                           attention_mask=enc["attention_mask"]).pooler_output
            return self.model.text_projection(pooled).float().cpu().numpy().astype(np.float64)


@functools.lru_cache(maxsize=2)
def load_raft(path: Any, device: str) -> torch.nn.Module:
    """torchvision's RAFT (large or small, from the state dict's keys) with its weights.

    ``path`` is the ``.pth`` file, or a folder holding exactly one ``.pth`` / ``.pt`` file.

    Raises:
        Unavailable: missing, unreadable, or not a complete RAFT state dict.
    """
    from torchvision.models.optical_flow import raft_large, raft_small

    p = weights_path("raft", path)
    if p.is_dir():
        files = sorted([*p.glob("*.pth"), *p.glob("*.pt")])
        if len(files) != 1:
            raise Unavailable(f"{p} is a folder with {len(files)} .pth / .pt files; the raft "
                              f"backend needs {WHAT['raft']}: name the file")
        p = files[0]
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise Unavailable(f"{p} could not be read as weights: {_short(err)}") from err
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise Unavailable(f"{p} is not a state dict of tensors; the raft backend needs "
                          f"{WHAT['raft']}")
    for build in (raft_large, raft_small):
        model = build(weights=None, progress=False)
        want = model.state_dict()
        if set(want) == set(state) and all(want[k].shape == state[k].shape for k in want):
            model.load_state_dict(state)
            return model.eval().to(device)
    raise Unavailable(f"{p} is not the state dict of torchvision's raft_large or raft_small "
                      f"({len(state)} tensors, e.g. {', '.join(list(state)[:2])})")


def flow_top_magnitude(flow: torch.Tensor, top: float = 0.05) -> np.ndarray:
    """Per flow field (N, 2, H, W): the mean of its largest ``top`` share of magnitudes (at
    least one pixel), in pixels at a 256-pixel short side (VBench's score of a frame pair,
    scaled so that its thresholds hold at any resolution)."""
    mag = flow.float().norm(dim=1).flatten(1)  # (N, H*W)
    k = max(1, int(mag.shape[1] * top))
    scale = REFERENCE_SIDE / min(flow.shape[-2:])
    return (mag.topk(k, dim=1).values.mean(1) * scale).cpu().numpy().astype(np.float64)


@FEATURES.register("raft")
class RaftFlow:
    """Optical flow between frames with torchvision's RAFT, from a local state dict file.

    As a frame-feature backend it gives (F, 1): the top-5% flow magnitude into each frame from
    the one before (frame 0 takes frame 1's), so ``drift`` with it follows the motion level.
    """

    local_weights = True

    def __init__(self, weights: Any = None, options: Mapping[str, Any] | None = None) -> None:
        options = options or {}
        self.device = device_of(options)
        self.model = load_raft(weights, self.device)
        self.iters = int(options.get("raft_iters", 20))
        self.batch = int(options.get("backend_batch", 8))

    @staticmethod
    def prepare(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames (F, 3, H, W) in [0, 1] at RAFT's working size: enlarged by the smallest whole
        factor (nearest) that makes both sides at least 128 pixels."""
        x = torch.as_tensor(np.asarray(frames, dtype=np.float32))
        k = math.ceil(RAFT_MIN / min(x.shape[-2:]))
        return x.repeat_interleave(k, -2).repeat_interleave(k, -1) if k > 1 else x

    def flow(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Flow (N, 2, H, W) from ``first`` to ``second`` (prepared frames, N each): channel 0
        is the horizontal (x) displacement in pixels, channel 1 the vertical (y)."""
        h, w = first.shape[-2:]
        pad = (0, -w % 8, 0, -h % 8)
        out = []
        with torch.no_grad():
            for a in range(0, len(first), self.batch):
                x1, x2 = (F.pad(t[a:a + self.batch].to(self.device) * 2 - 1, pad, mode="replicate")
                          for t in (first, second))
                out.append(self.model(x1, x2, num_flow_updates=self.iters)[-1][..., :h, :w].cpu())
        return torch.cat(out).float()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if len(frames) < 2:
            raise Unavailable("flow needs at least 2 frames")
        x = self.prepare(frames)
        mags = flow_top_magnitude(self.flow(x[:-1], x[1:]))
        return np.concatenate([mags[:1], mags])[:, None]
