"""The contract suite every cache strategy runs through, a user's own included.

Use it from pytest by subclassing and saying how to build your strategy::

    from toolkit.core.testing import StrategyContract

    class TestMyStrategy(StrategyContract):
        def make_strategy(self):
            return MyStrategy(budget_frames=8)

Set ``codec`` (a ``toolkit.core.codecs`` name or ``KVCodec``) to run every check with the
cache stored in that codec's form, e.g. one subclass per codec.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from torch import Tensor

from toolkit.core.cache import CacheStrategy
from toolkit.core.rollout import rollout
from toolkit.core.sampling import BlockSampler


def held_by_attribute(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, list[Tensor]]:
    """Distinct tensors reachable from a strategy's own state, by the attribute of ``obj``
    they are first reached from (not the shared model; ``__slots__`` objects are not walked)."""
    seen: set[int] = set()
    visited: set[int] = set()

    def walk(x: Any, found: list[Tensor]) -> None:
        if id(x) in visited or isinstance(x, torch.nn.Module):
            return
        visited.add(id(x))
        if isinstance(x, Tensor):
            if id(x) not in seen:
                seen.add(id(x))
                found.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v, found)
        elif isinstance(x, list | tuple | set):
            for v in x:
                walk(v, found)
        elif hasattr(x, "__dict__"):
            for k, v in vars(x).items():
                if k not in skip:
                    walk(v, found)

    out: dict[str, list[Tensor]] = {}
    for k, v in vars(obj).items():
        if k not in skip:
            found: list[Tensor] = []
            walk(v, found)
            if found:
                out[k] = found
    return out


def held_tensors(obj: Any, skip: tuple[str, ...] = ()) -> list[Tensor]:
    """Distinct tensors reachable from a strategy's own state (not the shared model)."""
    return [t for ts in held_by_attribute(obj, skip).values() for t in ts]


def storage_key(t: Tensor) -> tuple[str, int]:
    """What identifies the storage behind ``t``: its device and data pointer (the storage's
    own handle where it has no data, as meta and empty tensors do)."""
    storage = t.untyped_storage()
    return str(t.device), storage.data_ptr() or storage._cdata


@dataclass
class Held:
    """What one attribute of a strategy holds: the bytes of its tensors as the tensors see
    them (``view_bytes``: ``t.nbytes``) and the bytes of the storages behind them
    (``storage_bytes``: each storage once, counted under the first attribute reaching it)."""

    view_bytes: int = 0
    storage_bytes: int = 0


def held_storages(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Held]:
    """Per attribute of ``obj``, the bytes of the tensors and of the untyped storages it holds
    (``held_by_attribute``'s tensors): a storage reached by several views or attributes counts
    once, so a view of a large buffer counts the whole buffer, which it keeps alive."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, Held] = {}
    for attr, tensors in held_by_attribute(obj, skip).items():
        h = out[attr] = Held()
        for t in tensors:
            h.view_bytes += t.nbytes
            key = storage_key(t)
            if key not in seen:
                seen.add(key)
                h.storage_bytes += t.untyped_storage().nbytes()
    return out


def bytes_problem(strategy: CacheStrategy, reported: int) -> str | None:
    """Why ``reported`` (the footprint's total bytes) is not the bytes of the storages the
    strategy holds, or None when they agree.

    Counted: the untyped storage behind every tensor reachable from the strategy's own state
    (not the shared model), each storage once however many views or attributes reach it. A
    slice of a larger tensor keeps the whole of it alive, so it counts the whole. The message
    names both totals, their difference, the bytes held per attribute, the attributes whose
    views keep more storage alive than they show (with both sizes) and, when some attributes'
    bytes add up to exactly the difference, those attributes (the ones the footprint leaves
    out, or counts without holding).
    """
    gc.collect()
    by_attr = held_storages(strategy, skip=CacheStrategy.shared)
    held = sum(h.storage_bytes for h in by_attr.values())
    if reported == held:
        return None
    diff = held - reported
    what = "unaccounted (held, not reported)" if diff > 0 else "reported but not held"
    lines = [f"{type(strategy).__name__}: footprint() reports {reported:,} bytes, the storages "
             f"it holds are {held:,} bytes: {abs(diff):,} bytes {what}"]
    lines.append("held per attribute: " + (", ".join(f"{k} {h.storage_bytes:,}"
                                                     for k, h in by_attr.items()) or "none"))
    wider = [f"{k} (views of {h.view_bytes:,} bytes keep {h.storage_bytes:,} bytes of storage "
             "alive)" for k, h in by_attr.items() if h.storage_bytes > h.view_bytes]
    if wider:
        lines.append("attributes holding views of larger storages: " + ", ".join(wider)
                     + " (hold a .clone() of the view, or count the whole storage)")
    if diff > 0:
        sizes = {k: h.storage_bytes for k, h in by_attr.items() if h.storage_bytes}
        culprits = _exact_subset(sizes, diff)
        if culprits:
            lines.append(f"attributes holding the unaccounted tensors: {', '.join(culprits)} "
                         "(count them in footprint(), or stop holding them)")
    return "\n".join(lines)


def _exact_subset(sizes: dict[str, int], total: int, most: int = 3) -> list[str]:
    """The fewest (up to ``most``) names whose sizes add up to ``total``; [] when none do."""
    from itertools import combinations

    for n in range(1, min(most, len(sizes)) + 1):
        for names in combinations(sizes, n):
            if sum(sizes[k] for k in names) == total:
                return list(names)
    return []


def tiny_model() -> Any:
    """The seeded random tiny Wan the suite runs on."""
    from toolkit.models.zoo import tiny_random

    return tiny_random(seed=0)


class StrategyContract:
    """Checks any ``CacheStrategy`` must pass. Subclass and implement ``make_strategy``."""

    latent_frames = 24
    codec: Any = None  # the KV storage codec every check runs with (None: as made)

    def make_strategy(self) -> CacheStrategy:
        raise NotImplementedError

    def _run(self, seed: int = 0):
        model = tiny_model()
        strategy = self.make_strategy()
        return model, strategy, rollout(model, strategy, ["contract"], self.latent_frames,
                                        seed=seed, decode=False, codec=self.codec)

    def test_is_a_cache_strategy(self) -> None:
        assert isinstance(self.make_strategy(), CacheStrategy)

    def test_rollout_is_finite_and_shaped(self) -> None:
        model, _, out = self._run()
        s = model.spec
        assert out.latents.shape == (1, s.latent_channels, self.latent_frames,
                                     s.latent_height, s.latent_width)
        assert torch.isfinite(out.latents).all()
        assert len(out.trace.blocks) == s.blocks_of(self.latent_frames)

    def test_same_seed_same_numbers(self) -> None:
        _, _, a = self._run(seed=3)
        _, _, b = self._run(seed=3)
        assert torch.equal(a.latents, b.latents)

    def test_bytes_are_the_tensors_held(self) -> None:
        model = tiny_model()
        strategy = self.make_strategy()
        checked = []

        def check(record) -> None:
            problem = bytes_problem(strategy, record.total_bytes)
            assert problem is None, f"after block {record.index}: {problem}"
            checked.append(record.index)

        rollout(model, strategy, ["contract"], self.latent_frames, decode=False,
                callbacks=[check], codec=self.codec)
        assert len(checked) == model.spec.blocks_of(self.latent_frames)

    def test_processors_restored(self) -> None:
        model = tiny_model()
        before = [type(b.attn1.processor) for b in model.transformer.blocks]
        rollout(model, self.make_strategy(), ["contract"], 2 * model.spec.block_frames,
                decode=False, codec=self.codec)
        assert [type(b.attn1.processor) for b in model.transformer.blocks] == before

    def test_rebind_forgets_previous_rollout(self) -> None:
        model = tiny_model()
        strategy = self.make_strategy()
        first = rollout(model, strategy, ["contract"], self.latent_frames, decode=False,
                        codec=self.codec)
        second = rollout(model, strategy, ["contract"], self.latent_frames, decode=False,
                         codec=self.codec)
        assert torch.equal(first.latents, second.latents)


class MaskedWanProcessor:
    """diffusers' own Wan processor, given a fixed attention mask."""

    def __init__(self, mask: Tensor) -> None:
        self.mask, self.inner = mask, WanAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None):
        return self.inner(attn, hidden_states, encoder_hidden_states, self.mask, rotary_emb)


def block_causal_reference(model: Any, prompts: list[Any], frames: int, seed: int,
                           local_frames: int | None = None) -> Tensor:
    """Chunk-wise sampling WITHOUT a cache: every step re-runs diffusers' own forward (its RoPE,
    its Wan processor) over the prefix with a block-causal mask, at the model's sampler
    settings. Cached generation under ``full`` must equal it (the harness's reference).

    ``local_frames``: Self-Forcing's local attention instead (its
    ``_prepare_blockwise_causal_attn_mask``): a token of a block ending at frame e attends to
    the frames [e - local_frames, e), its own block included. ``window`` with
    ``include_current=True`` must equal it."""
    spec, tf = model.spec, model.transformer
    bf, tpf = spec.block_frames, spec.tokens_per_frame
    raw = model.prompt_encoder(prompts)
    gen = torch.Generator().manual_seed(seed)
    sampler = BlockSampler(model.sampler)
    shape = (len(prompts), spec.latent_channels, bf, spec.latent_height, spec.latent_width)
    done, originals = [], [b.attn1.processor for b in tf.blocks]
    try:
        for n in range(frames // bf):
            noise = torch.randn(shape, generator=gen)
            f = (n + 1) * bf
            frame = torch.arange(f).repeat_interleave(tpf)
            end = (frame // bf + 1) * bf  # each token's block end (exclusive), in frames
            mask = frame[None, :] < end[:, None]
            if local_frames is not None:
                mask &= frame[None, :] >= end[:, None] - local_frames
            for b in tf.blocks:
                b.attn1.set_processor(MaskedWanProcessor(mask))

            def predict(x, sigma, step, n=n, f=f):
                t = torch.zeros(x.shape[0], f * tpf)
                t[:, n * bf * tpf:] = 1000.0 * sigma
                out = tf(torch.cat([*done, x], dim=2), t, raw, return_dict=False)[0]
                return x - sigma * out[:, :, n * bf:]

            done.append(sampler.sample(predict, noise, gen))
    finally:
        for b, p in zip(tf.blocks, originals, strict=True):
            b.attn1.set_processor(p)
    return torch.cat(done, dim=2)
