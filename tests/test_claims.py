"""One run per run key: claims are exclusive, survive nothing, and concurrent grids share keys."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from toolkit.runs.claims import claim, claim_path, holder


def test_a_claim_is_exclusive_until_released(tmp_path):
    first = claim(tmp_path, "k" * 64)
    assert first is not None
    assert claim(tmp_path, "k" * 64) is None  # a second open file: refused
    assert f"pid {os.getpid()}" in holder(tmp_path, "k" * 64)
    assert claim(tmp_path, "other") is not None
    first.release()
    assert not claim_path(tmp_path, "k" * 64).exists()
    again = claim(tmp_path, "k" * 64)
    assert again is not None
    again.release()


def test_a_killed_holder_leaves_no_stuck_claim(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from toolkit.runs.claims import claim
        held = claim({str(tmp_path)!r}, "key")
        print("held" if held else "busy", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == "held"
        assert claim(tmp_path, "key") is None
        assert claim_path(tmp_path, "key").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.1)
    held = claim(tmp_path, "key")  # the file is still there, the lock died with its process
    assert held is not None
    held.release()


def test_two_concurrent_grids_compute_each_key_once(tmp_path):
    from toolkit.runs.aggregate import load_runs
    from toolkit.runs.tracking import resolve_uri

    cmd = [sys.executable, "-m", "toolkit.cli", "grid", "experiment=sink_size",
           "model=tiny-random", "video.latent_frames=8", "strategy.sink_frames=0,4,8",
           "seed=0", f"run_root={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    df = load_runs(resolve_uri(None, tmp_path), "sink_size", dedupe=False)
    finished = df[df["status"] == "FINISHED"]
    assert len(finished) == 3 and finished["run_key"].nunique() == 3
    text = "".join(outs)
    assert text.count("'status': 'finished'") == 3
    assert text.count("'status': 'skipped'") + text.count("'status': 'busy'") == 3
