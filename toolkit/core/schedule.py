"""Prompt schedules: conditioning that switches at block boundaries.

A rollout takes, per video, one prompt or a :class:`PromptSchedule`: prompts that start at given
latent frames. Every block is generated under the prompt in force at its first frame, and its
cached K/V (and :class:`toolkit.core.cache.FinishedBlock`) carry that block's conditioning. This
serves LongLive-style prompt switching on real models and the memory world's shots.

In a config (``rollbench run prompt=...``) a schedule is a list of ``[frame, prompt]`` pairs or
``{frame: ..., prompt: ...}`` maps, e.g. ``prompt='[[0,"a red circle on navy, slow"],
[40,"a blue square on charcoal, fast"]]'``, or the same list as JSON text (how a grid sweeps
schedules: ``experiment=switching``); any other string is one prompt for the whole video.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class PromptSchedule:
    """Prompts by start frame: ``segments`` = ((0, p0), (f1, p1), ...), starts increasing.

    The last prompt runs to the end of the video; starts past the end are never reached.
    """

    segments: tuple[tuple[int, Any], ...]

    def __post_init__(self) -> None:
        segs = tuple((int(f), p) for f, p in self.segments)
        object.__setattr__(self, "segments", segs)
        if not segs:
            raise ValueError("a prompt schedule needs at least one prompt")
        starts = [f for f, _ in segs]
        if starts[0] != 0:
            raise ValueError(f"prompt schedule starts at frame {starts[0]}: the first prompt "
                             "must start at frame 0")
        bad = [b for a, b in itertools.pairwise(starts) if b <= a]
        if bad:
            raise ValueError(f"prompt schedule starts {starts}: must increase strictly "
                             f"(frame {bad[0]} comes after a start at or beyond it)")

    @classmethod
    def of(cls, value: Any) -> PromptSchedule:
        """A schedule from a schedule, a config list of pairs / maps, or one plain prompt."""
        if isinstance(value, PromptSchedule):
            return value
        items = _json_list(_plain(value))
        if isinstance(items, list) and items and all(_is_entry(e) for e in items):
            segs = []
            for e in items:
                if isinstance(e, Mapping):
                    unknown = sorted(set(e) - {"frame", "prompt"})
                    if unknown or "frame" not in e or "prompt" not in e:
                        raise ValueError(f"prompt schedule entry {e}: needs exactly the keys "
                                         "'frame' and 'prompt'")
                    frame, prompt = e["frame"], e["prompt"]
                else:
                    frame, prompt = e
                if isinstance(frame, bool) or not isinstance(frame, int):
                    raise ValueError(f"prompt schedule entry {e}: the frame must be an integer, "
                                     f"got {frame!r}")
                segs.append((frame, prompt))
            return cls(tuple(segs))
        return cls(((0, value),))

    def text(self, limit: int = 480) -> str:
        """The prompts with their start frames, ``"0: ... | 40: ..."`` (one prompt: its text),
        cut to about ``limit`` characters."""
        def one(p: Any) -> str:
            return p.text() if hasattr(p, "text") else str(p)

        if len(self.segments) == 1:
            return one(self.segments[0][1])
        out = " | ".join(f"{f}: {one(p)}" for f, p in self.segments)
        if len(out) > limit:
            out = out[:limit].rsplit(" | ", 1)[0] + f" | ... ({len(self.segments)} prompts)"
        return out

    def __str__(self) -> str:
        return self.text()

    def at(self, frame: int) -> Any:
        """The prompt in force at latent frame ``frame``."""
        current = self.segments[0][1]
        for start, prompt in self.segments:
            if start > frame:
                break
            current = prompt
        return current

    def starts(self, frames: int) -> list[int]:
        """Start frames reached in a video of ``frames`` latent frames (0 first)."""
        return [f for f, _ in self.segments if f < frames]

    def check(self, block_frames: int, frames: int) -> None:
        """Raise ValueError unless every start inside the video is on a block boundary."""
        off = [f for f in self.starts(frames) if f % block_frames]
        if off:
            raise ValueError(f"prompt schedule switches at frames {off}: switches must fall on "
                             f"block boundaries (multiples of the block size {block_frames})")


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain Python lists / dicts."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _json_list(value: Any) -> Any:
    """A schedule written as JSON text (``'[[0, "a ..."], [16, "b ..."]]'``, e.g. one choice of
    a grid's ``prompt`` sweep) as its list; any other value as it is."""
    if isinstance(value, str) and value.lstrip().startswith("[["):
        try:
            found = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(found, list) and found and all(_is_entry(e) for e in found):
            return found
    return value


def _is_entry(e: Any) -> bool:
    if isinstance(e, Mapping):
        return True
    return isinstance(e, Sequence) and not isinstance(e, str) and len(e) == 2


def _key(prompt: Any) -> Any:
    try:
        hash(prompt)
        return prompt
    except TypeError:
        return repr(prompt)


class Conditioning:
    """The conditioning of every block of a batch of videos, encoded once per distinct prompt.

    Every distinct prompt is encoded up front (an unknown prompt fails before any block is
    generated). ``at(frame)`` returns the batch's (B, L, C) conditioning at a frame; it returns
    the same tensor object while no prompt changes, so cross-attention K/V are reused.
    """

    def __init__(self, encode: Callable[[list[Any]], Tensor], prompts: Sequence[Any],
                 block_frames: int, frames: int) -> None:
        self.schedules = [PromptSchedule.of(p) for p in prompts]
        for s in self.schedules:
            s.check(block_frames, frames)
        distinct: dict[Any, Any] = {}
        for s in self.schedules:
            for f in s.starts(frames):
                distinct.setdefault(_key(s.at(f)), s.at(f))
        keys = list(distinct)
        encoded = encode([distinct[k] for k in keys])
        self._one = {k: encoded[i:i + 1] for i, k in enumerate(keys)}
        self._batch: dict[tuple, Tensor] = {}
        self.frames = frames

    def at(self, frame: int) -> Tensor:
        keys = tuple(_key(s.at(frame)) for s in self.schedules)
        if keys not in self._batch:
            self._batch[keys] = torch.cat([self._one[k] for k in keys])
        return self._batch[keys]

    def switches(self) -> list[int]:
        """Frames (after 0) where any video's prompt changes."""
        return sorted({f for s in self.schedules for f in s.starts(self.frames)
                       if f and _key(s.at(f)) != _key(s.at(f - 1))})

    def describe(self) -> list[list[Any]]:
        """The first video's schedule inside the video: [[frame, str(prompt)], ...]."""
        s = self.schedules[0]
        return [[f, str(s.at(f))] for f in s.starts(self.frames)]
