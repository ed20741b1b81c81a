"""Memory accounting at the real model's scale, on meta tensors."""

import pytest

from strategies import Full, Sink, Window
from strategies.packforcing import PackForcing
from toolkit.bench.kv import account
from toolkit.cli import main
from toolkit.core.rollout import rollout
from toolkit.core.testing import held_tensors
from toolkit.models.specmodel import SpecModel, wan_spec_model

PAPER_FRAMES = 480  # 120 s at 16 fps, 4x temporal VAE


@pytest.fixture(scope="module")
def wan():
    return wan_spec_model()


def test_full_history_at_120_s_is_the_papers_138_gb(wan):
    report = account(wan, Full(), wan.spec.frames_for(120))
    last = report.blocks[-1]
    assert report.latent_frames == PAPER_FRAMES and wan.spec.tokens_per_frame == 1560
    assert last.tokens == {"cache": 748_800}
    assert last.total_bytes == 748_800 * 30 * 2 * 1536 * 2
    assert round(last.total_bytes / 1e9) == 138
    assert report.peak_attended == 748_800  # the last block: 119 cached blocks + itself


def test_packforcing_default_budget_is_the_papers_27872(wan):
    strategy = PackForcing()
    report = account(wan, strategy, PAPER_FRAMES)
    assert report.peak_attended == 2 * 6240 + 16 * 182 + 6240 + 6240 == 27_872
    assert report.attended(report.blocks[-1]) == 27_872
    assert round(report.gb(27_872 - 6240)) == 4  # sink + 16 mid + 1 recent: "about 4 GB"
    last = report.blocks[-1]
    assert last.tokens == {"sink": 12_480, "mid": 32 * 182, "recent": 6240, "pending": 182,
                           "queries": 0}  # the recent block's summed queries: bytes, no tokens
    assert all(t.is_meta for t in held_tensors(strategy, skip=PackForcing.shared))
    assert {b.total_bytes for b in report.blocks[40:]} == {last.total_bytes}  # flat


def test_paper_preset_accounts_without_weights_or_vae(wan, capsys):
    assert main(["memory", "model=wan-t2v-1.3b", "strategy=packforcing-paper",
                 "video.seconds=60"]) == 0
    assert "27,872" in capsys.readouterr().out


def test_cli_prints_the_papers_numbers(capsys):
    assert main(["memory", "model=wan-t2v-1.3b", "strategy=packforcing",
                 "video.seconds=120"]) == 0
    out = capsys.readouterr().out
    print(out)
    for needle in ("27,872", "748,800", "138.02", "12,480", "5,824", "sink", "mid", "recent"):
        assert needle in out, needle
    assert main(["memory", "model=wan-t2v-1.3b", "strategy=full", "video.seconds=120"]) == 0
    out = capsys.readouterr().out
    assert "748,800" in out and "138.02" in out


def test_any_resolution_fps_and_length(capsys):
    model = wan_spec_model(height=720, width=1280, fps=24)
    assert model.spec.tokens_per_frame == 45 * 80 and model.spec.frames_for(10) == 60
    report = account(model, Window(window_frames=20), model.spec.frames_for(10))
    assert report.blocks[-1].tokens == {"recent": 20 * 3600}
    assert main(["memory", "model=wan-t2v-1.3b", "model.height=720", "model.width=1280",
                 "model.fps=24", "strategy=sink", "video.seconds=10"]) == 0
    assert "3,600 tokens/frame" in capsys.readouterr().out


def test_bad_input_fails_clearly(capsys):
    assert main(["memory", "model=wan-t2v-1.3b", "strategy=packforcing",
                 "strategy.top_k=40"]) == 2
    assert "top_k=40" in capsys.readouterr().out
    assert main(["memory", "model=wan-t2v-1.3b", "model.height=470"]) == 2
    assert "multiples of 16" in capsys.readouterr().out


@pytest.mark.parametrize("make", [
    lambda: PackForcing(sink_frames=2, recent_frames=2, capacity=4, top_k=2),
    lambda: PackForcing(sink_frames=0, recent_frames=4, capacity=3, top_k=3,
                        compressor="pool_kv", positions="repack"),
    lambda: Sink(sink_frames=2, recent_frames=4),
    Full,
])
def test_meta_accounting_equals_a_real_rollout(tiny, make):
    frames = 30
    real = rollout(tiny, make(), ["a"], frames, decode=False).trace.blocks
    meta = account(SpecModel.of(tiny), make(), frames).blocks
    assert [b.tokens for b in meta] == [b.tokens for b in real]
    assert [b.bytes for b in meta] == [b.bytes for b in real]
    assert [b.context_tokens for b in meta] == [b.context_tokens for b in real]


def test_value_dependent_strategy_fails_clearly(wan):
    from dataclasses import dataclass

    from toolkit.core.cache import KeepBlocksStrategy
    from toolkit.errors import ConfigError

    @dataclass
    class KeepLoud(KeepBlocksStrategy):
        """Keeps blocks whose keys are loud: sizes depend on values."""

        def assign(self, index, upcoming):
            loud = any(b.keys.abs().mean().item() > 1 for b in self.blocks if b.index == index)
            return "cache" if loud else None

    with pytest.raises(ConfigError, match="KeepLoud reads tensor values"):
        account(wan, KeepLoud(), 16)


@pytest.mark.parametrize("make, block, frames", [
    (Full, 4, 120),
    (lambda: Window(window_frames=21, include_current=True), 3, 120),  # Self-Forcing's span
    (PackForcing, 4, 160),  # the archive fills at block 35, then evicts (the sink moves)
])
def test_working_memory_of_the_kv_path_stays_within_10_percent(make, block, frames):
    """At real scale, the rollout's own attention plan + strategy on meta tensors: the peak of
    what they hold alive per block over the KV the block works with (held + its own)."""
    model = wan_spec_model(block_frames=block)
    report = account(model, make(), frames, track=True)
    worst = report.worst_ratio
    print(f"{report.strategy}: worst block {worst.index} peak {worst.peak_bytes / 1e9:.2f} GB "
          f"= {worst.ratio:.3f}x of {worst.needed_bytes / 1e9:.2f} GB")
    assert 1.0 < worst.ratio <= 1.1
    assert all(b.peak_bytes >= b.needed_bytes for b in report.blocks)  # it holds them all


def test_live_bytes_counts_what_is_alive():
    import torch

    from toolkit.bench.allocations import LiveBytes

    outside = torch.zeros(1000)  # 4,000 bytes made before: never counted
    with LiveBytes() as live:
        a = outside + 1  # 4,000
        view = a[:10]  # no new storage
        b = torch.cat([a, a])  # 8,000
        assert (live.live, live.peak) == (12_000, 12_000)
        del b
        buf = torch.empty(2000)
        torch.cat([outside, a], out=buf)  # writes into a counted storage: nothing new
        assert live.live == 12_000
        live.reset_peak()
        del a, buf
        assert live.live == 4_000 and live.peak == 12_000  # `view` keeps a's storage
        del view
        assert live.live == 0
