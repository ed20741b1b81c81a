"""The contract's written rules: the fill flag, old-contract strategies, renamed
hyperparameters, names in traces, the contract suite's messages, the weights search path."""

import warnings
from dataclasses import dataclass

import pytest
import torch

from strategies import DeepSink, Full, RollingAnchor, Sink, Window
from toolkit.core.cache import CacheStrategy, KeepBlocksStrategy, usage
from toolkit.core.rollout import rollout
from toolkit.core.testing import StrategyContract, bytes_problem, held_storages
from toolkit.errors import ConfigError
from toolkit.registry import where
from toolkit.runs.config import build_strategy, compose_config

FRAMES = 12  # six blocks of the tiny model (2 frames each)


def _history(strategy: CacheStrategy, layer: int, q: torch.Tensor):
    """Every kept block's K/V of one layer, concatenated (an empty context at first)."""
    if not strategy.blocks:
        empty = q.new_zeros((q.shape[0], q.shape[1], 0, q.shape[3]))
        return empty, empty
    parts = [b.layer_kv(layer, strategy.rope) for b in strategy.blocks]
    return torch.cat([k for k, _ in parts], 2), torch.cat([v for _, v in parts], 2)


class _History(CacheStrategy):
    """Full history written against the contract, logging what each request was."""

    def reset(self) -> None:
        self.blocks, self.calls = [], []

    def begin_block(self, index: int) -> float:
        return float(index * self.spec.block_frames)

    def commit(self, block) -> None:
        self.blocks.append(block.kv)

    def footprint(self):
        return usage(self.blocks, ("cache",))


# -- one of context / context_parts ---------------------------------------------------------
def test_a_strategy_writes_context_or_its_parts(tiny):
    """``context`` defaults to the parts concatenated; ``context_parts`` to ``[context]``; a
    strategy writing neither is told so at its first request."""
    class Parts(_History):
        def context_parts(self, layer, q, step, fill=False):
            return [b.layer_kv(layer, self.rope) for b in self.blocks]

    class Whole(_History):
        def context(self, layer, q, step, fill=False):
            return _history(self, layer, q)

    full = rollout(tiny, Full(), ["x"], FRAMES, seed=1).latents
    for cls in (Parts, Whole):
        strategy = cls()
        assert torch.equal(rollout(tiny, strategy, ["x"], FRAMES, seed=1).latents, full)
        q = torch.randn(1, tiny.spec.num_heads, 3, tiny.spec.head_dim)
        k, v = strategy.context(0, q, 0)
        ref_k, ref_v = _history(strategy, 0, q)
        assert torch.equal(k, ref_k) and torch.equal(v, ref_v)
    with pytest.raises(NotImplementedError, match="Neither writes neither context nor"):
        type("Neither", (_History,), {})().context(0, q, 0)


# -- the fill flag ---------------------------------------------------------------------------
def test_context_is_told_which_pass_is_the_cache_fill(tiny):
    class Logged(_History):
        def context(self, layer, q, step, fill=False):
            self.calls.append((step, fill))
            return _history(self, layer, q)

    strategy = Logged()
    out = rollout(tiny, strategy, ["x"], FRAMES, seed=1)
    steps, layers = tiny.sampler.steps, tiny.spec.num_layers
    per_block = [(s, False) for s in range(steps) for _ in range(layers)] + \
        [(steps, True)] * layers  # the fill pass carries step == steps (fill_step)
    assert strategy.calls == per_block * (FRAMES // tiny.spec.block_frames)
    assert torch.equal(out.latents, rollout(tiny, Full(), ["x"], FRAMES, seed=1).latents)


# -- strategies written against the old contract -----------------------------------------------
def test_an_old_contract_strategy_still_runs_with_one_clear_warning(tiny):
    class OldFull(_History):
        def context(self, layer, q, step):  # the old contract: no fill flag
            self.calls.append(step == self.fill_step)  # the old way to tell the fill pass
            return _history(self, layer, q)

    strategy = OldFull()
    with pytest.warns(FutureWarning) as caught:
        old = rollout(tiny, strategy, ["x"], FRAMES, seed=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert len(messages) == 1, messages
    assert "OldFull.context(self, layer, q, step) is the old cache contract" in messages[0]
    assert "def context(self, layer, q, step, fill=False)" in messages[0]
    assert torch.equal(old.latents, rollout(tiny, Full(), ["x"], FRAMES, seed=1).latents)
    blocks, layers = FRAMES // tiny.spec.block_frames, tiny.spec.num_layers
    assert sum(strategy.calls) == blocks * layers  # it still sees the fill pass, as before
    with pytest.warns(FutureWarning, match="OldFull.context"):  # a new class warns again
        rollout(tiny, type("OldFull", (OldFull,), {})(), ["x"], 4)


def test_an_old_contract_template_override_still_runs(tiny):
    @dataclass
    class OldSink(Sink):
        def context_parts(self, layer, q, step):  # old signature, calling the base the old way
            return super().context_parts(layer, q, step)

    with pytest.warns(FutureWarning, match="OldSink.context_parts"):
        old = rollout(tiny, OldSink(sink_frames=4, recent_frames=4), ["x"], FRAMES, seed=2)
    new = rollout(tiny, Sink(sink_frames=4, recent_frames=4), ["x"], FRAMES, seed=2)
    assert torch.equal(old.latents, new.latents)


def test_a_context_the_harness_cannot_call_says_what_to_write(tiny):
    class Broken(_History):
        def context(self, layer, q):  # no step: neither contract
            return _history(self, layer, q)

    with pytest.raises(TypeError) as err:
        rollout(tiny, Broken(), ["x"], 4)
    message = str(err.value)
    assert "Broken.context(self, layer, q) cannot take the contract's arguments" in message
    assert "write def context(self, layer, q, step, fill=False)" in message


# -- one vocabulary; old names still accepted ----------------------------------------------------
@pytest.mark.parametrize("make, old, new", [
    (lambda: Sink(window_frames=12), "window_frames", "recent_frames"),
    (lambda: DeepSink(middle_tokens=7), "middle_tokens", "mid_tokens"),
    (lambda: RollingAnchor(anchor_frames=8), "anchor_frames", "sink_frames"),
])
def test_renamed_hyperparameters_still_work_with_a_deprecation(make, old, new):
    with pytest.warns(FutureWarning, match=f"hyperparameter {old} was renamed {new}"):
        strategy = make()
    assert old not in strategy.hparams() and new in strategy.hparams()


def test_renamed_hyperparameters_in_configs(tiny):
    with pytest.warns(FutureWarning, match="strategy.window_frames was renamed "
                                           "strategy.recent_frames"):
        cfg = compose_config(["strategy=sink", "strategy.window_frames=12"])
    assert cfg.strategy.recent_frames == 12 and "window_frames" not in cfg.strategy
    with pytest.warns(FutureWarning):
        assert build_strategy({"_target_": "sink", "window_frames": 4}).recent_frames == 4
    with pytest.raises(ConfigError, match="window_frames=4 and recent_frames=8: window_frames "
                                          "is the old name of recent_frames"):
        build_strategy({"_target_": "sink", "window_frames": 4, "recent_frames": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a strategy without the new name: no deprecation,
        with pytest.raises(ConfigError, match="unknown config key 'strategy.window_frames' "
                                              r"\(strategy.window_frames=4\)"):  # as written
            compose_config(["strategy=full", "strategy.window_frames=4"])
    # the window keeps its span: window_frames is its own knob, not a renamed one
    assert compose_config(["strategy=window", "strategy.window_frames=8"]).strategy \
        .window_frames == 8


def test_partitions_share_one_vocabulary(tiny):
    names = set()
    for strategy in (Sink(), DeepSink(sink_frames=4, recent_frames=4, mid_tokens=8),
                     RollingAnchor(), Window()):
        names |= set(rollout(tiny, strategy, ["x"], 20).trace.blocks[-1].tokens)
    assert names == {"sink", "mid", "recent"}


def test_sink_recent_assignment_is_shared():
    sink = Sink(sink_frames=4, recent_frames=8)
    sink.spec = type("S", (), {"blocks_of": lambda self, f: -(-f // 4)})()
    assert [sink.assign(i, 6) for i in range(6)] == ["sink", None, None, None, "recent",
                                                     "recent"]
    assert [sink.sink_recent(i, 6, 4, 8, "mid") for i in range(6)] == \
        ["sink", "mid", "mid", "mid", "recent", "recent"]
    assert [sink.sink_recent(i, 6, 0, 5) for i in range(6)] == \
        [None, None, None, None, "recent", "recent"]  # a partly covered block counts


# -- names ---------------------------------------------------------------------------------------
def test_the_trace_stores_the_registry_name(tiny):
    assert rollout(tiny, Sink(), ["x"], 4).trace.strategy == "sink"

    @dataclass
    class MySink(Sink):  # a user's subclass is not "sink": it is named by its path
        pass

    name = rollout(tiny, MySink(), ["x"], 4).trace.strategy
    assert name == where(MySink) and name.endswith("MySink")


# -- the contract suite's message ----------------------------------------------------------------
@dataclass
class Forgetful(Full):
    """Full history that also keeps a scratch tensor it does not report."""

    def reset(self) -> None:
        super().reset()
        self.scratch = None

    def commit(self, block) -> None:
        super().commit(block)
        self.scratch = torch.zeros(10)  # 40 bytes held, never in footprint()


class _ForgetfulSuite(StrategyContract):
    latent_frames = 8

    def make_strategy(self):
        return Forgetful()


def test_contract_suite_names_the_difference_and_the_attributes(tiny):
    with pytest.raises(AssertionError) as err:
        _ForgetfulSuite().test_bytes_are_the_tensors_held()
    message = str(err.value)
    print(message)
    reported = tiny.spec.tokens_per_block * tiny.spec.kv_bytes_per_token  # block 0's K/V
    assert f"after block 0: Forgetful: footprint() reports {reported:,} bytes" in message
    assert f"the storages it holds are {reported + 40:,} bytes: 40 bytes unaccounted" in message
    assert f"held per attribute: blocks {reported:,}, scratch 40" in message
    assert "attributes holding the unaccounted tensors: scratch" in message


def test_over_reporting_is_named_too(tiny):
    @dataclass
    class Boastful(Full):
        def footprint(self):
            out = super().footprint()
            out["cache"].bytes += 8
            return out

    strategy = Boastful()
    rollout(tiny, strategy, ["x"], 4)
    problem = bytes_problem(strategy, strategy.footprint()["cache"].bytes)
    assert "8 bytes reported but not held" in problem
    assert bytes_problem(strategy, strategy.footprint()["cache"].bytes - 8) is None


@dataclass
class Slicer(Full):
    """Full history that also keeps a 10-float window of a million-float buffer, and reports
    the window's 40 bytes (not the 4,000,000 it keeps alive)."""

    def reset(self) -> None:
        super().reset()
        self.window = torch.zeros(1_000_000)[:10]

    def footprint(self):
        out = super().footprint()
        out["cache"].bytes += self.window.nbytes
        return out


class _SlicerSuite(StrategyContract):
    latent_frames = 4

    def make_strategy(self):
        return Slicer()


def test_a_view_of_a_large_buffer_counts_the_buffer(tiny):
    with pytest.raises(AssertionError) as err:
        _SlicerSuite().test_bytes_are_the_tensors_held()
    message = str(err.value)
    kv = tiny.spec.tokens_per_block * tiny.spec.kv_bytes_per_token  # block 0's K/V
    assert f"footprint() reports {kv + 40:,} bytes" in message
    assert f"the storages it holds are {kv + 4_000_000:,} bytes" in message
    assert f"{4_000_000 - 40:,} bytes unaccounted" in message
    assert ("window (views of 40 bytes keep 4,000,000 bytes of storage alive)"
            in message), message


@dataclass
class Aliased(Full):
    """Full history that reaches its newest block's keys twice more: the tensor itself under
    a second attribute and a view of it (one layer) under a third; they hold no new bytes."""

    def reset(self) -> None:
        super().reset()
        self.newest_keys = self.newest_layer0 = None

    def commit(self, block) -> None:
        super().commit(block)
        self.newest_keys = block.kv.keys
        self.newest_layer0 = block.kv.keys[0]


class _AliasedSuite(StrategyContract):
    latent_frames = 6

    def make_strategy(self):
        return Aliased()


def test_a_storage_reached_twice_counts_once(tiny):
    _AliasedSuite().test_bytes_are_the_tensors_held()  # passes: each storage counted once
    strategy = Aliased()
    rollout(tiny, strategy, ["x"], 6)
    held = held_storages(strategy, skip=Aliased.shared)
    assert "newest_keys" not in held  # the same tensor object: reached once, under blocks
    layer0 = strategy.blocks[-1].keys[0].nbytes  # a new view of the keys' storage
    assert held["newest_layer0"].view_bytes == layer0 and held["newest_layer0"].storage_bytes == 0
    assert sum(h.storage_bytes for h in held.values()) == strategy.footprint()["cache"].bytes


# -- weights -------------------------------------------------------------------------------------
def test_weights_are_found_on_the_search_path(tmp_path, monkeypatch):
    from toolkit.models.weights import (
        WEIGHT_DIRS,
        find_weights,
        missing_weights,
        register_weights_dir,
    )

    found = find_weights("compressor-hr.safetensors")  # the world registers its own folder
    assert found.is_file() and found.parent.name == "weights"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "extra.safetensors").write_bytes(b"x")
    monkeypatch.setattr(WEIGHT_DIRS, "_items", dict(WEIGHT_DIRS._items))  # undone after
    register_weights_dir("test-folder", tmp_path / "mine")
    assert find_weights("extra.safetensors") == tmp_path / "mine" / "extra.safetensors"
    assert find_weights("nowhere.safetensors").name == "nowhere.safetensors"
    assert str(tmp_path / "mine") in missing_weights("nowhere.safetensors", "w", "train them")


def test_keep_blocks_template_still_concatenates_for_direct_callers(tiny):
    strategy = Full()
    rollout(tiny, strategy, ["x"], 8)
    q = torch.zeros(1, tiny.spec.num_heads, tiny.spec.tokens_per_block, tiny.spec.head_dim)
    k, _ = KeepBlocksStrategy.context(strategy, 0, q, 0)
    assert k.shape[2] == tiny.spec.blocks_of(8) * tiny.spec.tokens_per_block
