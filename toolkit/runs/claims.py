"""One run per run key: a job claims its key in the run store before it computes anything.

A claim is an exclusive ``flock`` on ``<run_root>/claims/<key>.claim``, a file holding who
claimed it (pid, host, time) for messages. The kernel drops the lock when its process ends,
killed or not, so a claim never outlives its job: nothing is left stuck and nothing needs a
timeout. Two grids (or sweep workers) that reach the same key at once: one computes it, the
other is told who holds it (a grid skips the job, a sweep waits and reads the stored run).

    held = claim(run_root, key)       # None: another live process holds it (see holder())
    try:
        ...                           # compute and record the run
    finally:
        held.release()

Locks on a shared folder need a filesystem with working ``flock`` (local disks; NFS v4).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

FOLDER = "claims"


@dataclass
class Claim:
    """A held claim on one run key (release it, or let the process end)."""

    path: Path
    fd: int

    def release(self) -> None:
        """Remove the claim file and drop the lock (idempotent)."""
        if self.fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlinked while locked: no one holds a stale path
        finally:
            os.close(self.fd)  # closing drops the lock
            self.fd = -1


def claim_path(run_root: str | Path, key: str) -> Path:
    """Where the claim of ``key`` lives."""
    return Path(run_root) / FOLDER / f"{key}.claim"


def claim(run_root: str | Path, key: str) -> Claim | None:
    """Claim ``key``; None when another live process holds it."""
    path = claim_path(run_root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the file may have been released (unlinked) between open and lock: retry
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "time": time.time()}).encode())
        return Claim(path, fd)


def holder(run_root: str | Path, key: str) -> str:
    """Who holds the claim of ``key``, in words ("" when unknown)."""
    try:
        info = json.loads(claim_path(run_root, key).read_text() or "{}")
    except (OSError, ValueError):
        return ""
    if not info:
        return ""
    since = time.strftime("%H:%M:%S", time.localtime(info.get("time", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} since {since}"


def wait_free(run_root: str | Path, key: str, poll_s: float = 1.0,
              timeout_s: float | None = None) -> bool:
    """Wait until no process holds ``key``'s claim; False when ``timeout_s`` passed first."""
    start = time.monotonic()
    while True:
        held = claim(run_root, key)
        if held is not None:
            held.release()
            return True
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return False
        time.sleep(poll_s)
