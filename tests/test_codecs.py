"""KV storage codecs: exact bytes, bounded error, `none` unchanged, any strategy under each."""

import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from strategies import Fade, PackForcing, Sink, Window
from toolkit.core.cache import BlockKV
from toolkit.core.codecs import CODECS, KVCodec, _pack, _unpack, storing
from toolkit.core.rollout import rollout
from toolkit.core.testing import StrategyContract, held_tensors
from toolkit.errors import ConfigError
from toolkit.runs.config import build, build_codec, compose_config
from toolkit.runs.identity import run_key

CODED = [c for c in CODECS if c != "none"]
FRAMES = 12


def _cache_kv(tiny) -> torch.Tensor:
    """Real keys and values (L, B, H, N, D) of the tiny model: a full cache after 6 blocks."""
    strategy = Sink(sink_frames=0, recent_frames=FRAMES)
    rollout(tiny, strategy, ["kv"], FRAMES, seed=0, decode=False)
    return torch.cat([b.keys for b in strategy.blocks] + [b.values for b in strategy.blocks], 3)


def _steps_per_element(codec: KVCodec, coded, d: int) -> torch.Tensor:
    return coded.steps[0].float().repeat_interleave(codec.group_of(d), dim=-1)


def test_pack_unpack_round_trips():
    gen = torch.Generator().manual_seed(0)
    for bits in (1, 2, 4, 8):
        codes = torch.randint(0, 2 ** bits, (3, 5, 24), generator=gen, dtype=torch.uint8)
        packed = _pack(codes, bits)
        assert packed.shape[-1] == 24 * bits // 8 and packed.dtype == torch.uint8
        assert torch.equal(_unpack(packed, bits), codes)


@pytest.mark.parametrize("name", ["int8", "int4", "int2"])
def test_integer_codecs_are_within_half_a_step(tiny, name):
    x = _cache_kv(tiny)
    codec = KVCodec(name, group=8)
    coded = codec.encode(x)
    err = (codec.decode(coded) - x).abs()
    bound = _steps_per_element(codec, coded, x.shape[-1]) / 2
    assert (err <= bound * (1 + 1e-3) + 1e-6).all()
    # the bound is tight: some element sits near half a step away (it is not vacuous)
    assert (err / bound.clamp_min(1e-12)).max() > 0.5
    rel = (err.norm() / x.norm()).item()
    assert rel < {"int8": 0.01, "int4": 0.15, "int2": 0.6}[name], rel


def test_error_falls_with_bits_and_residual2_beats_int2(tiny):
    x = _cache_kv(tiny)
    rel = {}
    for name in CODED:
        codec = KVCodec(name, group=24, token_group=8)
        rel[name] = ((codec.decode(codec.encode(x)) - x).norm() / x.norm()).item()
    assert rel["int8"] < rel["int4"] < rel["int2"]
    assert rel["residual2"] < rel["int2"], rel  # same 2 bits per element, smaller error


def test_each_one_bit_stage_lowers_every_groups_squared_error(tiny):
    x = _cache_kv(tiny)
    d = x.shape[-1]
    errors = []
    for stages in ((1,), (1, 1), (1, 1, 1)):
        codec = KVCodec("residual2", group=8, token_group=8, stages=stages)
        err = codec.decode(codec.encode(x)) - x
        errors.append(err.unflatten(-1, (d // 8, 8)).pow(2).sum(-1))  # per group
    shared = KVCodec("residual2", group=8, token_group=8)
    smooth = x - shared._expand(shared.encode(x).shared, x.shape[-2])
    before = smooth.unflatten(-1, (d // 8, 8)).pow(2).sum(-1)
    for worse, better in zip([before, *errors], errors, strict=False):
        assert (better <= worse * (1 + 1e-4) + 1e-7).all()
    assert errors[-1].sum() < 0.5 * before.sum()


@pytest.mark.parametrize("name", CODED)
def test_stored_bytes_are_the_tensors_held(tiny, name):
    x = _cache_kv(tiny)
    codec = KVCodec(name, group=8, token_group=8)
    with storing(codec):
        block = BlockKV(0, x, x.clone(), 0.0)
    held = held_tensors(block)
    assert all(t.dtype in (torch.uint8, torch.float16) for t in held)
    assert block.nbytes == sum(t.untyped_storage().nbytes() for t in held)
    assert block.nbytes == 2 * codec.stored_bytes(tuple(x.shape))
    assert block.tokens == x.shape[-2]
    layer = block.stored_layer(1)[0]
    assert torch.equal(layer, block.keys[1])  # one layer decodes as the whole does


def test_meta_sizes_equal_real_sizes(tiny):
    x = _cache_kv(tiny)
    for name in CODED:
        codec = KVCodec(name, group=8, token_group=5)
        real, meta = codec.encode(x), codec.encode(torch.empty_like(x, device="meta"))
        assert real.nbytes == meta.nbytes and meta.is_meta


def test_dropping_frames_slices_the_stored_form(tiny):
    x = _cache_kv(tiny)
    tpf = tiny.spec.tokens_per_frame
    for name, token_group in (("int4", 8), ("residual2", tpf), ("residual2", 3)):
        codec = KVCodec(name, group=8, token_group=token_group)
        with storing(codec):
            block = BlockKV(0, x, x.clone(), 0.0)
        whole = block.keys
        block.drop_frames(2, tpf)
        assert block.tokens == x.shape[-2] - 2 * tpf and block.t0 == 2.0
        if name == "int4" or token_group == tpf:  # on group boundaries: the same numbers
            assert torch.equal(block.keys, whole[..., 2 * tpf:, :])
        else:  # re-stored: still close
            assert (block.keys - whole[..., 2 * tpf:, :]).norm() < 0.5 * x.norm()


def test_none_is_bit_identical_to_no_codec(tiny):
    for make in (lambda: Sink(sink_frames=2, recent_frames=4),
                 lambda: PackForcing(sink_frames=2, recent_frames=2, capacity=2, top_k=1,
                                     compressor="pool_kv", compress_space=2)):
        plain = rollout(tiny, make(), ["x"], FRAMES, seed=1, decode=False)
        for codec in (None, "none", KVCodec("none"), {"codec": "none", "group": 8}):
            got = rollout(tiny, make(), ["x"], FRAMES, seed=1, decode=False, codec=codec)
            assert torch.equal(got.latents, plain.latents)
            assert [b.bytes for b in got.trace.blocks] == [b.bytes for b in plain.trace.blocks]


def test_a_codec_shrinks_the_recorded_bytes_and_stays_close(tiny):
    plain = rollout(tiny, Window(window_frames=6), ["x"], FRAMES, seed=1, decode=False)
    for name, ratio in (("int8", 0.35), ("int4", 0.2)):
        got = rollout(tiny, Window(window_frames=6), ["x"], FRAMES, seed=1, decode=False,
                      codec=KVCodec(name, group=8))
        assert got.trace.meta["kv_codec"] == f"{name}/g8"
        made, stored = plain.trace.blocks[-1].total_bytes, got.trace.blocks[-1].total_bytes
        assert stored < ratio * made, (name, stored, made)
        rel = ((got.latents - plain.latents).norm() / plain.latents.norm()).item()
        assert 0 < rel < 0.05, (name, rel)


# -- configs ---------------------------------------------------------------------------------
def test_bad_codec_options_are_named():
    with pytest.raises(ValueError, match=r"kv.codec='int3': allowed \['none', 'int8'"):
        KVCodec("int3")
    with pytest.raises(ValueError, match=r"kv.stages=\[3\]"):
        KVCodec("residual2", stages=(3,))
    with pytest.raises(ValueError, match=r"kv\.group=0: must be a whole number >= 1"):
        KVCodec("int4", group=0)
    with pytest.raises(ValueError, match=r"kv\.group=16: must divide the head dim 24"):
        KVCodec("int4", group=16).check(24)
    with pytest.raises(ConfigError, match=r"kv\.codec='int3'"):
        build_codec(compose_config(["kv.codec=int3"]))
    with pytest.raises(ConfigError, match=r"kv\.group=16: must divide the head dim 24"):
        build(compose_config(["model=tiny-random", "kv.codec=int4", "kv.group=16"]))


def test_run_keys_ignore_none_and_resolve_defaults():
    base = compose_config(["model=tiny-random"])
    data = {k: v for k, v in OmegaConf.to_container(base, resolve=True).items() if k != "kv"}
    assert run_key(base) == run_key(compose_config(["model=tiny-random", "kv.codec=none"]))
    assert run_key(base) == run_key(data)  # a config from before codecs: the same key
    int2 = run_key(compose_config(["model=tiny-random", "kv.codec=int2"]))
    assert int2 != run_key(base)
    assert int2 == run_key(compose_config(["model=tiny-random", "kv.codec=int2",
                                           f"kv.group={KVCodec().group}"]))


def test_int2_with_its_steps_is_at_most_a_seventh_at_real_scale():
    """Wan 1.3B sizes (bf16, 832x480), meta tensors; the ratio is per token, so a short
    video shows what 120 s shows (``rollbench memory ... codecs=[none,int2]``)."""
    from hydra.utils import instantiate

    from toolkit.bench.kv import account
    from toolkit.models.specmodel import SpecModel
    from toolkit.runs.config import build_strategy

    cfg = compose_config(["model=wan-t2v-1.3b", "video.seconds=6"])
    model = SpecModel.of(instantiate(cfg.model))
    assert model.spec.dtype == "bfloat16" and model.spec.grid == (30, 52)
    for name in ("sink", "packforcing"):
        strategy = build_strategy(compose_config([f"strategy={name}"]).strategy)
        made = account(model, strategy, 24).peak.total_bytes
        stored = account(model, strategy, 24, codec="int2").peak.total_bytes
        assert stored <= made / 7, (name, stored / made)


# -- any strategy, a user's own included, under every codec ----------------------------------
USER_STRATEGY = '''
from dataclasses import dataclass
from toolkit.core.cache import KeepBlocksStrategy

@dataclass
class EveryOther(KeepBlocksStrategy):
    """Keeps every other finished block, and reads its keys back whole (as users do)."""
    stride: int = 2

    def assign(self, index, upcoming):
        return "cache" if index % self.stride == 0 else None

    def info(self):
        return {"key_norms": [float(b.keys.norm()) for b in self.blocks]}
'''


@pytest.fixture(scope="module")
def user_strategy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_codec_cache.py").write_text(textwrap.dedent(USER_STRATEGY))
    sys.path.insert(0, str(folder))
    import my_codec_cache

    yield my_codec_cache.EveryOther
    sys.path.remove(str(folder))
    sys.modules.pop("my_codec_cache", None)


MAKERS = {
    "sink": lambda: Sink(sink_frames=2, recent_frames=2),
    "window": lambda: Window(window_frames=5, include_current=True),  # drops frames
    "packforcing": lambda: PackForcing(sink_frames=2, recent_frames=2, capacity=1, top_k=1,
                                       compressor="pool_kv", compress_space=2,
                                       positions="repack"),
    "fade": lambda: Fade(budget_frames=6, sink_frames=2, recent_frames=2, pool_space=2),
}
#: Every codec with the user's strategy and the two that build their own blocks (stand-ins,
#: merges); the plain templates with the 2-bit codecs. The rest of the product: ``-m slow``.
FAST = [(s, c) for s in ("user", "packforcing", "fade") for c in CODED] + \
    [(s, c) for s in ("sink", "window") for c in ("int2", "residual2")]
PAIRS = [pytest.param(p, id=f"{p[0]}-{p[1]}") for p in FAST] + \
    [pytest.param((s, c), id=f"{s}-{c}", marks=pytest.mark.slow)
     for s in [*MAKERS, "user"] for c in CODED if (s, c) not in FAST]


@pytest.fixture(params=PAIRS)
def strategy_codec(request, user_strategy):
    name, codec = request.param
    return (user_strategy if name == "user" else MAKERS[name]), KVCodec(codec, token_group=8)


class TestEveryCodec(StrategyContract):
    latent_frames = 8  # four blocks: the sink, evictions, stand-ins and merges all happen

    @pytest.fixture(autouse=True)
    def _pick(self, strategy_codec):
        self.make, self.codec = strategy_codec

    def make_strategy(self):
        return self.make()


def test_a_user_strategy_runs_with_a_codec_from_the_command_line(user_strategy, tmp_path):
    from toolkit.cli import main

    assert main(["run", "strategy._target_=my_codec_cache.EveryOther", "kv.codec=residual2",
                 "model=tiny-random", "video.latent_frames=8", f"run_root={tmp_path}",
                 "progress=false", "tracking.metrics=fast"]) == 0
