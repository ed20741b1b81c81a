"""The command line: runs, listings, and clear errors for bad input."""

import sys
import textwrap

import pytest

from toolkit.cli import main
from toolkit.config import ConfigError, build, build_strategy, compose_config
from toolkit.registry import STRATEGIES, UnknownName


def test_run_writes_outputs(tmp_path, capsys):
    code = main(["run", "strategy=sink", "strategy.sink_frames=4", "video.latent_frames=12",
                 f"run_root={tmp_path}", "progress=false"])
    assert code == 0
    (run_dir,) = (tmp_path / "rollouts").iterdir()
    assert {"config.yaml", "trace.json", "latents.pt"} <= {p.name for p in run_dir.iterdir()}
    assert "rollout: Sink" in capsys.readouterr().out


def test_ls_lists_strategies(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("full", "window", "sink", "strategies.sink.Sink"):
        assert name in out


@pytest.mark.parametrize("overrides, needle", [
    (["strategy=snk"], "strategy/snk"),
    (["strategy=sink", "strategy.sink_frame=4"], "sink_frame"),
    (["vidoe.latent_frames=8"], "vidoe"),
    (["strategy=sink", "strategy.sink_frames=3"], "sink_frames=3"),
    (["strategy=window", "strategy.window_frames=1"], "window_frames=1"),
    (["video.latent_frames=7"], "video.latent_frames=7"),
    (["strategy=window", "strategy.positions=rope"], "positions='rope'"),
    (["strategy=sink", "strategy.sink_frames=four"], "four"),
])
def test_bad_input_fails_clearly(overrides, needle, capsys, tmp_path):
    assert main(["run", *overrides, f"run_root={tmp_path}"]) == 2
    assert needle in capsys.readouterr().out
    assert not (tmp_path / "rollouts").exists()


def test_unknown_name_suggests():
    with pytest.raises(UnknownName, match="Did you mean 'sink'"):
        STRATEGIES.get("sinc")


def test_unknown_field_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: \\['positions', 'sink_frames'"):
        build_strategy({"_target_": "sink", "sinks": 4})


def test_user_strategy_by_target(tmp_path, monkeypatch):
    (tmp_path / "my_cache.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from toolkit.cache import KeepBlocksStrategy

        @dataclass
        class EveryOther(KeepBlocksStrategy):
            """Keeps every other finished block."""
            stride: int = 2

            def assign(self, index, upcoming):
                return "cache" if index % self.stride == 0 else None
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_config(["strategy._target_=my_cache.EveryOther", "strategy.stride=3",
                          "video.latent_frames=12"])
    _, strategy = build(cfg)
    assert type(strategy).__name__ == "EveryOther" and strategy.stride == 3
    assert main(["run", "strategy._target_=my_cache.EveryOther", "video.latent_frames=12",
                 f"run_root={tmp_path}", "progress=false"]) == 0
    sys.modules.pop("my_cache", None)
