"""Tracking: local-first results, one MLflow run per rollout, relog, run keys."""

import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from toolkit.cli import main
from toolkit.core.rollout import Rollout
from toolkit.core.spec import ModelSpec
from toolkit.core.trace import BlockRecord, Trace
from toolkit.runs.config import compose_config
from toolkit.runs.jobs import save_rollout
from toolkit.runs.tracking import (
    MARKER,
    TrackingWarning,
    find_finished,
    mark_frames,
    record_run,
    relog,
    resolve_uri,
    run_key,
)
from toolkit.worlds.sprites import prompt_for_seed, simulate, split_seed

SPEC = ModelSpec(num_layers=1, num_heads=1, head_dim=24, latent_channels=12, latent_height=8,
                 latent_width=8, block_frames=4, train_frames=20)


@pytest.fixture
def store(tmp_path):
    """The default store of a run rooted at tmp_path."""
    return f"sqlite:///{tmp_path}/mlflow.db"


def run_dir_of(root):
    (run_dir,) = (root / "rollouts").iterdir()
    return run_dir


def search(uri, experiment="default"):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


def test_run_key_ignores_bookkeeping_keys():
    a = compose_config(["seed=1", "run_root=/x", "progress=false", "tracking.uri=sqlite:///y"])
    b = compose_config(["seed=1", "run_root=/z"])
    assert run_key(a) == run_key(b) and len(run_key(a)) == 64
    assert run_key(compose_config(["seed=2"])) != run_key(a)
    assert run_key(compose_config(["seed=1", "strategy=sink"])) != run_key(a)


def test_cli_run_480_frames_is_an_mlflow_run(tmp_path, store):
    assert main(["run", "model=tiny-random", "strategy=sink", "video.latent_frames=480",
                 "seed=0", f"run_root={tmp_path}", "progress=false"]) == 0
    run_dir = run_dir_of(tmp_path)
    uri = resolve_uri(None, tmp_path)
    assert uri == store  # the default: sqlite under the run root
    df = search(uri)
    assert len(df) == 1 and df.status[0] == "FINISHED"
    row = df.iloc[0]
    assert row["tags.strategy"] == "sink" and row["params.video.latent_frames"] == "480"
    assert row["tags.run_key"] == run_key(compose_config(["model=tiny-random", "strategy=sink",
                                                          "video.latent_frames=480"]))
    for tag in ("git_revision", "git_dirty", "version.torch", "version.diffusers",
                "version.rollbench"):
        assert row[f"tags.{tag}"]
    client = MlflowClient(uri)
    hist = client.get_metric_history(row.run_id, "kv_bytes/recent")
    assert sorted(m.step for m in hist) == list(range(0, 480, 2))  # one per block of 2
    assert row["metrics.peak_kv_bytes"] > 0
    arts = {a.path for a in client.list_artifacts(row.run_id)}
    assert {"trace.json", "metrics.json", "config.yaml", "meta.json"} <= arts
    data = json.loads((run_dir / "metrics.json").read_text())
    assert "no VAE" in data["unavailable"]["drift"]  # tiny-random: latents only, stated
    assert find_finished(row["tags.run_key"], uri, "default") == row.run_id
    assert find_finished("0" * 64, uri, "default") is None
    assert row.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert not (Path.cwd() / "mlflow.db").exists() and not (Path.cwd() / "mlruns").exists()


def world_rollout(frames: int = 480) -> tuple[Rollout, object]:
    prompt = prompt_for_seed(0, "heldout")
    video = simulate([prompt], [split_seed(0, "heldout")], frames)  # (1, F, 3, 16, 16)
    trace = Trace("sink", SPEC.block_frames)
    for i in range(frames // SPEC.block_frames):
        trace.blocks.append(BlockRecord(i, float(i * 4), 64, {"sink": 64, "recent": 64},
                                        {"sink": 4096, "recent": 4096},
                                        {"denoise": 0.01, "cache_update": 0.001}))
    latents = torch.nn.functional.pixel_unshuffle(video[0], 2).transpose(0, 1)[None]
    return Rollout(latents=latents, frames=video, trace=trace), prompt


def test_world_video_logs_every_curve_over_480_frames(tmp_path, store):
    out, prompt = world_rollout()
    cfg = compose_config(["strategy=sink", "video.latent_frames=480", f"run_root={tmp_path}"])
    run_dir = tmp_path / "rollouts" / "world-run"
    save_rollout(out, cfg, run_dir)
    run_id = record_run(out, cfg, run_dir, model=SimpleNamespace(spec=SPEC), prompt=prompt)
    assert run_id is not None
    data = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert len(data["fidelity"]["steps"]) == 480 and len(data["drift"]["steps"]) == 120
    client = MlflowClient(resolve_uri(None, tmp_path))
    logged = client.get_run(run_id).data.metrics
    for key, entry in data.items():
        assert key in logged
        if "steps" in entry:
            hist = client.get_metric_history(run_id, key)
            want = [s for s, v in zip(entry["steps"], entry["values"], strict=True)
                    if v is not None]
            assert sorted(m.step for m in hist) == want, key
    assert logged["vde"] == 0 and logged["norepeat"] == 1
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"video.mp4", "filmstrip.png", "marks.png"} <= arts
    assert mark_frames(480, 480, 20) == [19, 119, 239, 479]
    assert mark_frames(9, 3, 2) == [4] and mark_frames(10, 10, 20) == [9]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri", [f"http://127.0.0.1:{closed_port()}",
                                 "sqlite:////proc/no-such-dir/mlflow.db"])
def test_unreachable_store_keeps_results_and_relog_logs_them(tmp_path, store, monkeypatch,
                                                             uri):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.warns(TrackingWarning, match="rollbench relog"):
        assert main(["run", "video.latent_frames=12", f"run_root={tmp_path}",
                     "progress=false", f"tracking.uri={uri}"]) == 0
    run_dir = run_dir_of(tmp_path)
    assert {"metrics.json", "trace.json", "config.yaml", "meta.json", MARKER} <= {
        p.name for p in run_dir.iterdir()}
    assert uri in (run_dir / MARKER).read_text()
    good = store  # the store is back
    assert main(["relog", str(tmp_path / "rollouts"), f"uri={good}"]) == 0
    assert not (run_dir / MARKER).exists()
    df = search(good)
    assert len(df) == 1 and df.status[0] == "FINISHED"
    assert relog(run_dir, good) == df.run_id[0]  # not logged twice


def test_same_seed_gives_identical_metrics(tmp_path, store):
    dirs = []
    for name in ("a", "b"):
        assert main(["run", "strategy=window", "video.latent_frames=16", "seed=3",
                     f"run_root={tmp_path / name}", "progress=false", f"tracking.uri={store}",
                     "tracking.metrics=[kv_bytes,kv_tokens,context_tokens,peak_kv_bytes]"]) == 0
        dirs.append(run_dir_of(tmp_path / name))
    a, b = (json.loads((d / "metrics.json").read_text())["metrics"] for d in dirs)
    assert a == b and len(a) >= 4
    la, lb = (torch.load(d / "latents.pt") for d in dirs)
    assert torch.equal(la, lb)
    ka, kb = (json.loads((d / "meta.json").read_text())["run_key"] for d in dirs)
    assert ka == kb
    assert len(search(store)) == 2 and find_finished(ka, store, "default") is not None
    assert np.isfinite(a["kv_bytes"]["values"]).all()


def _first_writer(uri: str) -> str:
    from toolkit.runs.tracking import experiment_id, open_client

    return experiment_id(open_client(uri), "race", uri)


def test_parallel_first_writers_share_one_new_store(tmp_path):
    """Two workers opening a store in a folder that does not exist yet both get it, at once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    uri = f"sqlite:///{tmp_path / 'new' / 'deeper' / 'mlflow.db'}"
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        ids = list(pool.map(_first_writer, [uri] * 4))
    assert len(set(ids)) == 1
    assert not list((tmp_path / "new" / "deeper").glob(".*.tmp"))


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a hung tracking server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_silent_server_is_given_up_within_the_timeout(silent_server):
    from toolkit.runs.stores import unreachable

    start = time.perf_counter()
    why = unreachable(silent_server)  # the default timeout (5 s)
    took = time.perf_counter() - start
    assert why and "timed out" in why.lower() and 4 < took < 10


def test_a_run_against_a_hung_server_goes_on_and_prints_the_relog_command(
        tmp_path, silent_server, monkeypatch):
    """Before: 268 s of MLflow retries. Now: the store is given up in seconds."""
    monkeypatch.setenv("ROLLBENCH_TRACKING_TIMEOUT", "2")
    uri = silent_server.replace("http://", "http://bench:s3cret@")
    start = time.perf_counter()
    with pytest.warns(TrackingWarning) as caught:
        assert main(["run", "model=tiny-random", "video.latent_frames=4", "progress=false",
                     f"run_root={tmp_path}", f"tracking.uri={uri}"]) == 0
    assert time.perf_counter() - start < 10
    text = " ".join(str(w.message) for w in caught)
    run_dir = run_dir_of(tmp_path)
    assert f"rollbench relog {run_dir}" in text and "waited at most 2 s" in text
    assert "s3cret" not in text and "bench:***@" in text
    assert "s3cret" not in (run_dir / MARKER).read_text()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "latents.pt").is_file()
    assert json.loads((run_dir / "meta.json").read_text())["tracking"]["uri"] == uri  # relog


def test_a_grid_job_runs_when_the_store_cannot_say_what_finished(tmp_path, monkeypatch):
    from toolkit.runs.jobs import run_job

    cfg = compose_config(["model=tiny-random", "video.latent_frames=4", "progress=false",
                          f"run_root={tmp_path}", f"tracking.uri=http://127.0.0.1:{closed_port()}"])
    with pytest.warns(UserWarning, match="without checking for a finished twin"):
        result = run_job(cfg, skip_finished=True)
    assert result.status == "finished" and result.run_id is None
    assert (result.run_dir / MARKER).is_file()


def test_runs_record_the_model_spec_and_card_for_the_report(tmp_path, store):
    out, prompt = world_rollout(40)
    cfg = compose_config(["strategy=sink", "video.latent_frames=40", f"run_root={tmp_path}"])
    run_dir = tmp_path / "rollouts" / "card-run"
    save_rollout(out, cfg, run_dir)
    card = {"config": {"train_frames": 20}, "sha256": "ab" * 32}
    run_id = record_run(out, cfg, run_dir, model=SimpleNamespace(spec=SPEC, card=card),
                        prompt=prompt)
    client = MlflowClient(resolve_uri(None, tmp_path))
    tags = client.get_run(run_id).data.tags
    assert tags["spec.train_frames"] == "20" and tags["spec.block_frames"] == "4"
    assert "model_card.json" in {a.path for a in client.list_artifacts(run_id)}
    assert json.loads((run_dir / "model_card.json").read_text()) == card


def test_learned_compressor_weights_are_recorded(tmp_path, store):
    """Which compressor weights a run used (sha256, or none: random on purpose) is a tag."""
    assert main(["run", "model=world-pf", "strategy=packforcing-world", "video.latent_frames=8",
                 f"run_root={tmp_path}", "progress=false", "tracking.metrics=fast"]) == 0
    row = search(store).iloc[0]
    card = json.loads((Path(__file__).parents[1] / "toolkit/worlds/sprites/weights/"
                       "compressor-hr.json").read_text())
    assert row["tags.provenance.compressor_sha256"] == card["sha256"]
    assert row["tags.provenance.compressor_trained_for"] == \
        row["tags.provenance.model_sha256"] == card["world"]["sha256"]
    trace = json.loads((run_dir_of(tmp_path) / "trace.json").read_text())
    assert trace["meta"]["provenance"]["compressor_sha256"] == card["sha256"]
    # the same trained compressor on the base world model: trained for other weights, refused
    assert main(["run", "model=world", "strategy=packforcing-world", "video.latent_frames=8",
                 f"run_root={tmp_path}", "progress=false", "tracking.metrics=fast"]) == 1
