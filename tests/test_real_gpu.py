"""The real-size Wan2.1-T2V-1.3B architecture on a GPU (random weights, bf16): runs, accounts
its KV bytes exactly, reports CUDA peak memory against ``rollbench memory``'s figures, and
survives an out-of-memory strategy.

Skipped without CUDA (tests/conftest.py). Run with ``pytest -m gpu tests/test_real_gpu.py -s``
(the check table: ``-k check``).
"""

import json

import pytest
import torch

from strategies import Full, Sink, Window
from strategies.packforcing import PackForcing
from toolkit.bench.realsize import check, check_table, run_strategy
from toolkit.core.rollout import rollout
from toolkit.models.real import wan_t2v

pytestmark = pytest.mark.gpu

FRAMES = 12  # 4 blocks of 3 latent frames (3 s of video)


@pytest.fixture(scope="module")
def big():
    torch.cuda.empty_cache()
    return wan_t2v(None, weights="random", device="cuda", dtype="bfloat16")


def test_real_size_strategies_run_with_exact_kv_bytes(big):
    spec = big.spec
    assert spec.tokens_per_frame == 1560 and big.transformer.dtype == torch.bfloat16
    weights = torch.cuda.memory_allocated()
    per_frame = spec.tokens_per_frame * spec.kv_bytes_per_token  # 287.5 MB in bf16
    expect = {"full": FRAMES, "window": 6, "sink": 6}
    for name, strategy in (("full", Full()), ("window", Window(window_frames=6)),
                           ("sink", Sink(sink_frames=3, recent_frames=3))):
        result = run_strategy(big, name, strategy, FRAMES, "a red fox in the snow")
        print(f"{name}: {result.ms(slice(None)):.0f} ms/block, KV {result.peak_kv / 2**30:.2f} "
              f"GiB, CUDA peak {result.cuda_peak / 2**30:.2f} GiB")
        assert result.status == "ok" and len(result.blocks) == FRAMES // 3
        assert result.blocks[-1]["kv_bytes"] == expect[name] * per_frame
        assert result.cuda_peak > weights + result.peak_kv


def test_out_of_memory_is_reported_and_the_next_strategy_runs(big):
    total = torch.cuda.mem_get_info()[1]
    budget = torch.cuda.memory_allocated() + 3 * 2**30  # weights + 3 GiB
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
    try:
        result = run_strategy(big, "full", Full(), 60, "x")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    print(f"full under a {budget / 2**30:.1f} GiB cap: {result.status}")
    assert result.status.startswith("OOM at block ")
    assert int(result.status.rsplit(" ", 1)[1]) == len(result.blocks) >= 1
    after = run_strategy(big, "window", Window(window_frames=3), 6, "x")
    assert after.status == "ok"


def test_bf16_cuda_rollout_matches_fp32_cpu():
    cpu = wan_t2v(None, weights="random", dtype="float32", height=32, width=32,
                  config={"num_layers": 2})
    gpu = wan_t2v(None, weights="random", device="cuda", dtype="bfloat16", height=32,
                  width=32, config={"num_layers": 2})
    gpu.transformer.load_state_dict(cpu.transformer.state_dict())  # same weights, own dtypes
    a = rollout(gpu, Full(), ["x"], 6, seed=0, decode=False).latents.cpu()
    b = rollout(cpu, Full(), ["x"], 6, seed=0, decode=False).latents
    rel = ((a - b).norm() / b.norm()).item()
    print(f"bf16 cuda vs fp32 cpu: relative error {rel:.2e}")
    assert rel < 0.05


def test_bench_command_prints_and_saves_cuda_accounting(tmp_path, capsys):
    from toolkit.cli import main

    assert main(["bench", "model=wan-t2v-1.3b", "weights=random", "device=cuda",
                 "video.seconds=3", "model.height=240", "model.width=416",
                 "strategies=[full,window]", f"run_root={tmp_path}"]) == 0
    assert "CUDA peak GiB" in capsys.readouterr().out
    (record,) = (tmp_path / "bench").glob("realbench-*.json")
    results = json.loads(record.read_text())["results"]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert all(r["cuda_peak"] > 0 and len(r["blocks"]) == 4 for r in results)


def test_check_full_window_packforcing_against_memory_accounting(big):
    """The GPU check: 832x480, bf16, blocks of 3 (Self-Forcing's geometry), 10 blocks. Each
    strategy's CUDA peak above what was allocated before holds the KV path that
    ``rollbench memory`` predicts (meta tensors) plus the transformer's activations, which a
    single cache-free block measures."""
    from rich.console import Console

    prompt = "a red fox in the snow"
    base = torch.cuda.memory_allocated()
    one = run_strategy(big, "one block", Full(), 3, prompt)
    activations = one.cuda_peak - base - one.peak_kv
    strategies = {"full": Full(), "window": Window(window_frames=12),
                  "packforcing": PackForcing(sink_frames=6, recent_frames=3, capacity=4, top_k=2,
                                             compress_time=3)}
    results, reports = check(big, strategies, 30, prompt)
    Console(width=160).print(check_table(results, reports, base))
    print(f"activations of one cache-free block: {activations / 2**30:.2f} GiB")
    for r in results:
        extra, predicted = r.cuda_peak - base, reports[r.strategy].peak_live
        assert r.status == "ok" and len(r.blocks) == 10
        assert r.peak_kv == reports[r.strategy].peak.total_bytes  # the same bookkeeping
        assert predicted <= extra <= predicted + 2 * activations + 2**29, r.strategy


def test_codecs_on_the_gpu_hold_what_the_accounting_says(big):
    """Every KV codec on the real-size model (bf16, CUDA): the stored bytes equal ``rollbench
    memory``'s (meta tensors), int2 with its steps is at most a seventh of none, a block
    decodes on the GPU as on the CPU, and ms per block against none (printed)."""
    import time

    from toolkit.bench.kv import account
    from toolkit.core.codecs import CODECS, KVCodec
    from toolkit.models.specmodel import SpecModel

    held, ms = {}, {}
    for name in CODECS:
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = rollout(big, Sink(sink_frames=3, recent_frames=3), ["a red fox in the snow"],
                      FRAMES, seed=0, decode=False, codec=name)
        torch.cuda.synchronize()
        ms[name] = 1e3 * (time.perf_counter() - start) / len(out.trace.blocks)
        held[name] = out.trace.blocks[-1].total_bytes
        meta = account(SpecModel.of(big), Sink(sink_frames=3, recent_frames=3), FRAMES,
                       codec=name)
        assert held[name] == meta.blocks[-1].total_bytes, name
        print(f"{name}: {ms[name]:.0f} ms/block ({ms[name] / ms['none']:.3f}x none), "
              f"KV {held[name] / 2**20:.1f} MiB ({held[name] / held['none']:.4f} of none)")
    assert held["int2"] <= held["none"] / 7
    x = torch.randn(2, 1, 12, 1560, 128, generator=torch.Generator().manual_seed(0))
    for name in CODECS[1:]:
        codec = KVCodec(name)
        on_gpu = codec.decode(codec.encode(x.to("cuda", torch.bfloat16))).float().cpu()
        on_cpu = codec.decode(codec.encode(x.to(torch.bfloat16))).float()
        assert ((on_gpu - on_cpu).norm() / on_cpu.norm()).item() < 1e-2, name
