"""The horizon ladder (``toolkit.worlds.memory.ladder``): read from a tracking store, tabled with
the bracket first and 1x left out, drawn; an empty store names the grid to run."""

import mlflow
import pytest

from toolkit.worlds.memory.ladder import collect, draw, table


def _store(tmp_path, rows):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("memory_ladder", artifact_location=str(tmp_path / "art"))
    for strategy, frames, seed, kappa, count in rows:
        run = client.create_run(exp, tags={"strategy": strategy, "run_key": f"{strategy}{frames}"
                                           f"-{seed}"})  # as the harness tags and logs them
        client.log_param(run.info.run_id, "video.latent_frames", frames)
        client.log_param(run.info.run_id, "seed", seed)
        if kappa is not None:
            client.log_metric(run.info.run_id, "recall_kappa/beyond_colour", kappa)
        client.log_metric(run.info.run_id, "recall_beyond/count", count)
        client.set_terminated(run.info.run_id, "FINISHED")
    return uri


def test_ladder_reads_means_per_strategy_and_length(tmp_path):
    uri = _store(tmp_path, [("oracle", 80, 0, 0.8, 10), ("oracle", 80, 1, 0.6, 12),
                            ("oracle-wrong", 80, 0, 0.0, 9), ("window", 80, 0, 0.2, 9),
                            ("window", 20, 0, None, 0)])
    data = collect(uri)
    assert data["strategies"]["oracle"]["80"]["kappa"] == pytest.approx(0.7)
    assert data["strategies"]["oracle"]["80"]["returns"] == 22
    assert data["strategies"]["window"]["20"]["kappa"] is None  # 1x: unavailable, not zero
    text = table(data)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| strategy | 4x |" and rows[1].startswith("| oracle | 0.70 (22)")
    assert rows[3] == "| window | (9) |"  # too few returns to show a value
    assert rows[2].startswith("| oracle-wrong |")
    assert draw(data, tmp_path / "ladder.png").stat().st_size > 5000


def test_an_empty_store_names_the_grid(tmp_path):
    uri = _store(tmp_path, [])
    with pytest.raises(ValueError, match="rollbench grid experiment=memory_ladder"):
        collect(uri)
