"""Outputs of committed strategy configs stay bit-identical on CPU across refactors.

Each case runs a strategy (a committed preset scaled to a tiny seeded model, or a plain one)
through the rollout for a few blocks; the sha256 of its latents and of its blocks' ``info()``
must equal the digests in tests/golden/strategy_outputs.json, recorded at the revision before
PackForcing was built from parts (and RollingAnchor from Sink). Float results can differ in
the last bit under another torch build, so the digests are compared only under the torch
version they were recorded with (the test says so when it skips).

    python tests/test_outputs_unchanged.py  # re-record the digests (only for a real change)
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

GOLDEN = Path(__file__).resolve().parent / "golden" / "strategy_outputs.json"
ROOT = Path(__file__).resolve().parents[1]
SIMPLE = {"sink": {"sink_frames": 2, "recent_frames": 4},
          "rolling_anchor": {"sink_frames": 2, "recent_frames": 4},
          "window-inc": {"window_frames": 6, "include_current": True},
          "deepsink": {"sink_frames": 2, "recent_frames": 2, "mid_tokens": 20},
          "fade": {"budget_frames": 8, "sink_frames": 2, "recent_frames": 2}}
PRESETS = {"packforcing-world": [{"positions": "shift"}, {"positions": "repack"},
                                 {"positions": "absolute"}, {"queries": "both"},
                                 {"queries": "recent"}, {"scope": "shared"},
                                 {"score_positions": "stored"}, {"kv": "project"},
                                 {"spatial": "grid"}],
           "packforcing-memory-v2": [{"selection": "recency"}, {"selection": "all"}]}
TINY_PF = ["pool,repack", "pool_kv,shift", "identity,absolute", "hr,repack"]


@cache
def models() -> dict:
    from toolkit.models.zoo import tiny_random, tiny_wan

    return {"tiny": tiny_random(seed=0), "wan": tiny_wan(seed=0)}


def preset(name: str) -> dict:
    node = OmegaConf.load(ROOT / "ablations" / "strategy" / f"{name}.yaml")
    node = OmegaConf.to_container(node.strategy if "strategy" in node else node)
    node.pop("label", None)
    return node


def cases() -> dict[str, tuple[str, dict, int, int]]:
    """name -> (model, strategy node, latent frames, seed)."""
    out = {f"tiny/{n}": ("tiny", {"_target_": n.split("-")[0], **kw}, 24, 1)
           for n, kw in SIMPLE.items()}
    for name, options in PRESETS.items():
        base = preset(name)
        if base["compressor"] in ("hr", "dual"):
            base.update(compressor_weights=None, allow_random=True)
        bf = 3  # tiny_wan's blocks (lr / dual need its VAE)
        base.update(sink_frames=bf, recent_frames=bf, capacity=4, top_k=2, compress_space=None,
                    compress_time=bf if bf % base["compress_time"] else base["compress_time"])
        for o in options:
            key = ",".join(f"{k}={v}" for k, v in o.items())
            out[f"{name}/{key}"] = ("wan", {**base, **o}, 12 * bf, 2)
    for case in TINY_PF:
        comp, pos = case.split(",")
        out[f"tiny-pf/{case}"] = ("tiny", {"_target_": "packforcing", "sink_frames": 2,
                                            "recent_frames": 2, "capacity": 5, "top_k": 2,
                                            "compressor": comp, "positions": pos,
                                            "allow_random": True}, 30, 3)
    return out


def digests(model: str, node: dict, frames: int, seed: int) -> dict[str, str]:
    from toolkit.core.rollout import rollout
    from toolkit.runs.config import build_strategy

    out = rollout(models()[model], build_strategy(node), ["x"], frames, seed=seed, decode=False)
    info = json.dumps([r.info for r in out.trace.blocks], default=str, sort_keys=True)
    return {"latents": hashlib.sha256(out.latents.contiguous().numpy().tobytes()).hexdigest(),
            "info": hashlib.sha256(info.encode()).hexdigest()}


@pytest.mark.parametrize("name", list(cases()))
def test_outputs_are_bit_identical_to_the_recorded_revision(name):
    golden = json.loads(GOLDEN.read_text())
    if golden["torch"] != torch.__version__:
        pytest.skip(f"digests recorded under torch {golden['torch']}, this is "
                    f"{torch.__version__}")
    torch.set_num_threads(1)
    assert digests(*cases()[name]) == golden["digests"][name], name


if __name__ == "__main__":
    torch.set_num_threads(1)
    found = {name: digests(*case) for name, case in cases().items()}
    GOLDEN.write_text(json.dumps({"torch": torch.__version__, "digests": found}, indent=1,
                                 sort_keys=True) + "\n")
    print(f"{len(found)} digests -> {GOLDEN}")
