"""Selection at 24x on the memory world's model: does PackForcing's top-k hold the block a
return needs, and can the model read it? (``python -m toolkit.worlds.memory.hits``)

PackForcing zero-shot (``packforcing-memory-zeroshot``: lr compressor, sink 1 block, top-2 of 16
compressed mid blocks re-packed, recent 1 block) on ``model=world-memory``, 480 latent frames,
run seeds 0 and 1, four selections: built-in top-k scored at one common position (default) and
at the stored positions, recency, and the selection oracle (``selection=truth``). Writes
``docs/artifacts/memory-selection-24x.json`` (the README's table is generated from it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ARTIFACT = Path(__file__).resolve().parents[3] / "docs" / "artifacts" / "memory-selection-24x.json"
ARMS = {"topk (common)": {}, "topk (stored)": {"score_positions": "stored"},
        "recency": {"selection": "recency"}, "truth": {"selection": "truth"}}


def measure(seeds: tuple[int, ...] = (0, 1), frames: int = 480) -> dict[str, dict[str, float]]:
    from omegaconf import OmegaConf

    from toolkit.core.rollout import rollout
    from toolkit.metrics import MetricInput
    from toolkit.registry import STRATEGIES
    from toolkit.runs.config import ABLATIONS
    from toolkit.worlds.memory.metrics import recall_beyond, recall_kappa, selection
    from toolkit.worlds.sprites.model import load_world

    torch.set_num_threads(1)
    model = load_world("world-memory-v2.safetensors")
    preset = OmegaConf.to_container(OmegaConf.load(
        ABLATIONS / "strategy" / "packforcing-memory-zeroshot.yaml"))
    base = {k: v for k, v in preset.items() if k not in ("label", "_target_")}
    out = {}
    for name, extra in ARMS.items():
        rows = []
        for seed in seeds:
            prompt = model.default_prompt(seed)
            run = rollout(model, STRATEGIES.get("packforcing")(**{**base, **extra}), [prompt],
                          frames, seed=seed)
            inp = MetricInput(frames=run.frames[0], trace=run.trace, prompt=prompt,
                              spec=model.spec)
            rows.append({**selection.fn(inp),
                         **{f"kappa_{k}": v for k, v in recall_kappa.fn(inp).items()},
                         **{f"beyond_{k}": v for k, v in recall_beyond.fn(inp).items()}})
        out[name] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    return out


if __name__ == "__main__":
    result = measure()
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
