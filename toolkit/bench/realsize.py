"""Real-size accounting on a GPU: per-block latency, KV bytes and CUDA peak memory per strategy.

    rollbench bench model=wan-t2v-1.3b-weights weights=random device=cuda video.seconds=60
    rollbench bench model=wan-t2v-1.3b weights=random device=cuda strategies=[full,window]

(``model=X weights=...`` selects ``X-weights`` when ``X`` is a spec-only config with such a
weights-backed twin: ``wan-t2v-1.3b`` is the spec-only model of ``rollbench memory``.)

Every strategy is also accounted as ``rollbench memory`` does (meta tensors, the KV path's
working memory tracked: ``toolkit.bench.kv.account``), and a last table sets each one's CUDA
peak above the weights against that figure: the GPU check of the memory accounting
(``check_table``; ``pytest -m gpu tests/test_real_gpu.py`` runs it at 832x480 in bf16).

The model is built once and every strategy runs on it in turn; a strategy that runs out of
memory is reported as "OOM at block k" (k = the block that did not fit) and the next one runs.
The full per-block record lands in ``<run_root>/bench/realbench-<time>.json``.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from toolkit.bench.kv import MemoryReport, account, transient_table
from toolkit.core.cache import CacheStrategy
from toolkit.core.model import VideoModel
from toolkit.core.rollout import RolloutError, rollout
from toolkit.core.trace import BlockRecord
from toolkit.models.specmodel import SpecModel
from toolkit.registry import STRATEGIES
from toolkit.runs.config import (
    ConfigError,
    build_strategy,
    check_device,
    compose_config,
    video_frames,
)

console = Console()
FIRST = ("full", "window", "sink")  # listed first; then every other registered strategy
REAL_TARGETS = ("toolkit.models.real.wan_t2v",)  # models `bench` always measures with this module
GIB, MIB = 2**30, 2**20
MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "ablations" / "model"


@dataclass
class BenchResult:
    """One strategy's run: status ("ok", "OOM at block k", "not finite at block k", "skipped:
    reason"), per-block rows, CUDA peak bytes (None off CUDA) and wall seconds."""

    strategy: str
    status: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    cuda_peak: int | None = None
    wall: float = 0.0

    def ms(self, part: slice) -> float:
        """Mean milliseconds per block over a slice of the blocks (nan when empty)."""
        rows = self.blocks[part]
        return sum(r["ms"] for r in rows) / len(rows) if rows else float("nan")

    @property
    def peak_kv(self) -> int:
        return max((r["kv_bytes"] for r in self.blocks), default=0)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_strategy(model: Any, name: str, strategy: CacheStrategy, latent_frames: int,
                 prompt: Any, seed: int = 0) -> BenchResult:
    """Roll out one strategy without decoding, recording every block; OOM is caught."""
    device = model.device
    cuda = device.type == "cuda"
    result = BenchResult(name, "ok")

    def keep(record: BlockRecord) -> None:
        row = {"index": record.index, "ms": 1e3 * sum(record.seconds.values()),
               "denoise_ms": 1e3 * record.seconds.get("denoise", 0.0),
               "cache_ms": 1e3 * record.seconds.get("cache_update", 0.0),
               "kv_bytes": record.total_bytes, "context_tokens": record.context_tokens}
        if cuda:
            row["cuda_allocated"] = torch.cuda.memory_allocated(device)
            row["cuda_peak"] = torch.cuda.max_memory_allocated(device)
        result.blocks.append(row)

    _release(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        strategy.check(model.spec)
        rollout(model, strategy, [prompt], latent_frames, seed=seed, decode=False,
                callbacks=[keep])
    except torch.OutOfMemoryError:
        result.status = f"OOM at block {len(result.blocks)}"
    except RolloutError:
        result.status = f"not finite at block {len(result.blocks)}"
    except ValueError as err:
        result.status = f"skipped: {err}"
    finally:
        result.wall = time.perf_counter() - start
        strategy.reset()  # drop the cache before the next strategy
        _release(device)
    if cuda:
        result.cuda_peak = torch.cuda.max_memory_allocated(device)
    return result


def warm_up(model: Any, prompt: Any) -> None:
    """Encode the prompt (a caching encoder then skips its encoder, e.g. UMT5's 11 GB visit to
    the GPU, in every measured run) and run one block, so that the first strategy's numbers
    carry no kernel / allocator warm-up."""
    with torch.no_grad():
        model.encode_prompt([prompt])
    run_strategy(model, "warm-up", build_strategy({"_target_": "full"}),
                 model.spec.block_frames, prompt)


def strategy_names(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``strategies=[a,b]`` out of the overrides (default: full, window, sink, then the rest)."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("strategies=")]
    rest = [o for o in overrides if not o.startswith("strategies=")]
    if given:
        return [n.strip() for n in given[0].strip("[]").split(",") if n.strip()], rest
    names = STRATEGIES.names()
    return [n for n in FIRST if n in names] + [n for n in names if n not in FIRST], rest


def _summary(results: list[BenchResult], weights_bytes: int | None) -> Table:
    title = "rollbench bench (real size)" + (
        f": model {weights_bytes / GIB:.2f} GiB on the GPU" if weights_bytes else "")
    table = Table(title=title)
    for col in ("strategy", "status", "blocks", "ms/block first 10%", "ms/block last 10%",
                "peak KV GiB", "CUDA peak GiB", "wall s"):
        table.add_column(col)
    for r in results:
        tenth = max(1, len(r.blocks) // 10)
        peak = "n/a" if r.cuda_peak is None else f"{r.cuda_peak / GIB:.2f}"
        table.add_row(r.strategy, r.status, str(len(r.blocks)), f"{r.ms(slice(0, tenth)):.1f}",
                      f"{r.ms(slice(-tenth, None)):.1f}", f"{r.peak_kv / GIB:.3f}", peak,
                      f"{r.wall:.1f}")
    return table


def _per_block(results: list[BenchResult], rows: int = 8) -> Table:
    table = Table(title=f"per block (up to {rows} evenly spaced per strategy; all in the JSON)")
    for col in ("strategy", "block", "ms", "denoise ms", "cache ms", "KV MiB", "context tok",
                "CUDA alloc GiB", "CUDA peak GiB"):
        table.add_column(col)
    for r in results:
        n = len(r.blocks)
        picks = sorted({round(i * (n - 1) / max(1, rows - 1)) for i in range(rows)}) if n else []
        for i in picks:
            b = r.blocks[i]
            alloc = f"{b['cuda_allocated'] / GIB:.2f}" if "cuda_allocated" in b else "n/a"
            peak = f"{b['cuda_peak'] / GIB:.2f}" if "cuda_peak" in b else "n/a"
            table.add_row(r.strategy, str(b["index"]), f"{b['ms']:.1f}",
                          f"{b['denoise_ms']:.1f}", f"{b['cache_ms']:.1f}",
                          f"{b['kv_bytes'] / MIB:.1f}", str(b["context_tokens"]), alloc, peak)
    return table


def check(model: Any, strategies: dict[str, CacheStrategy], latent_frames: int, prompt: Any,
          seed: int = 0) -> tuple[list[BenchResult], dict[str, MemoryReport]]:
    """Run each strategy on ``model`` and account a fresh twin of it on meta tensors.

    Args:
        strategies: name -> strategy; each is deep-copied for the accounting (run unbound).
    """
    import copy

    reports = {name: account(SpecModel.of(model), copy.deepcopy(s), latent_frames, track=True)
               for name, s in strategies.items()}
    results = [run_strategy(model, name, s, latent_frames, prompt, seed)
               for name, s in strategies.items()]
    return results, reports


def check_table(results: list[BenchResult], reports: dict[str, MemoryReport],
                weights_bytes: int | None) -> Table:
    """Per strategy: ms per block, KV held, the KV path's predicted peak (``rollbench
    memory``) and the CUDA peak above the weights (what the rest adds: activations)."""
    table = Table(title="CUDA peak against rollbench memory (KV path on meta tensors)")
    for col in ("strategy", "status", "ms/block", "KV held GiB (Trace)",
                "KV path peak GiB (memory)", "CUDA peak - weights GiB", "CUDA - KV path GiB"):
        table.add_column(col)
    for r in results:
        report = reports.get(r.strategy)
        predicted = report.peak_live if report is not None and report.tracked else None
        extra = None if r.cuda_peak is None or weights_bytes is None else \
            r.cuda_peak - weights_bytes
        table.add_row(r.strategy, r.status, f"{r.ms(slice(None)):.1f}", f"{r.peak_kv / GIB:.3f}",
                      "n/a" if predicted is None else f"{predicted / GIB:.3f}",
                      "n/a" if extra is None else f"{extra / GIB:.3f}",
                      "n/a" if extra is None or predicted is None else
                      f"{(extra - predicted) / GIB:.3f}")
    return table


def cmd_realbench(overrides: list[str]) -> int:
    """Build the model once, run each strategy, print and save the accounting.

    A real model (``REAL_TARGETS``) is refused off CUDA; other models also run on the CPU.
    """
    names, overrides = strategy_names(with_weights_twin(overrides))
    cfg = compose_config([*overrides, "progress=false"])
    if cfg.model.get("_target_") in REAL_TARGETS and not str(cfg.device).startswith("cuda"):
        raise ConfigError(f"the real-size bench needs device=cuda (got device={cfg.device}): "
                          "1.4e9 parameters and a 480x832 KV cache do not fit a CPU budget; "
                          "for a CPU run use `rollbench bench model=tiny-random`")
    check_device(cfg.device)  # device=cuda without a GPU: one line, before any work
    torch.set_num_threads(int(cfg.threads))
    model = instantiate(cfg.model)
    if not isinstance(model, VideoModel):
        raise ConfigError(f"model {cfg.model.get('_target_')} cannot run a rollout (no forward: "
                          "a spec-only model?); use `rollbench memory` for it, or a model with "
                          "weights (weights=random for sizes without a download)")
    model = model.to(cfg.device)
    frames = video_frames(cfg, model.spec)
    cuda = model.device.type == "cuda"
    weights_bytes = torch.cuda.memory_allocated(model.device) if cuda else None
    prompt = cfg.prompt if cfg.prompt is not None else getattr(
        model, "default_prompt", lambda s: f"seed {s}")(cfg.seed)
    console.print(f"model {cfg.model._target_}: {model.spec}; {frames} latent frames "
                  f"({frames // model.spec.block_frames} blocks); strategies {names}")
    warm_up(model, prompt)
    results, reports = [], {}
    for name in names:
        node = compose_config([*overrides, f"strategy={name}"]).strategy
        try:
            strategy = build_strategy(node)
            done, memory = check(model, {name: strategy}, frames, prompt, cfg.seed)
        except ValueError as err:  # bad for this model: reported, the next one runs
            results.append(BenchResult(name, f"skipped: {err}"))
            continue
        results += done
        reports.update(memory)
        console.print(f"{name}: {results[-1].status}")
    console.print(_summary(results, weights_bytes))
    console.print(_per_block(results))
    if reports:
        console.print(transient_table(reports))
    console.print(check_table(results, reports, weights_bytes))
    out = Path(cfg.run_root) / "bench" / f"realbench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    predicted = {n: {"kv_path_peak": r.peak_live, "held_peak": r.peak.total_bytes}
                 for n, r in reports.items()}
    out.write_text(json.dumps({"spec": asdict(model.spec), "latent_frames": frames,
                               "weights_bytes": weights_bytes, "device": str(model.device),
                               "results": [asdict(r) for r in results],
                               "memory": predicted}, indent=1))
    console.print(f"per-block record: {out}")
    return 0


def with_weights_twin(overrides: Sequence[str]) -> list[str]:
    """``model=X`` becomes ``model=X-weights`` when ``weights=`` is given and that config exists."""
    if not any(o.startswith("weights=") for o in overrides):
        return list(overrides)
    out = []
    for o in overrides:
        name = o.split("=", 1)[1] if o.startswith("model=") else None
        twin = f"{name}-weights"
        out.append(f"model={twin}" if name and (MODEL_CONFIGS / f"{twin}.yaml").exists() else o)
    return out


def wants_realbench(overrides: Sequence[str]) -> bool:
    """True when ``bench`` should measure with this module: a CUDA run or a real model."""
    overrides = with_weights_twin(overrides)
    bench_only = ("strategies=", "codecs=", "blocks=")  # the CPU bench's own options
    cfg = compose_config([o for o in overrides if not o.startswith(bench_only)])
    return str(cfg.device).startswith("cuda") or cfg.model.get("_target_") in REAL_TARGETS


def route_bench(fallback: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
    """``bench`` that uses ``cmd_realbench`` for CUDA runs and real models, else ``fallback``."""

    def bench(overrides: list[str]) -> int:
        if wants_realbench(overrides):
            return cmd_realbench(overrides)
        return fallback(overrides)

    bench.__doc__ = fallback.__doc__
    return bench
