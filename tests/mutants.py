"""A fixed list of small mutations of the core numeric code, each of which the tests must catch.

``make mutants`` (``python tests/mutants.py``) copies the tree (the files git tracks, and the
untracked ones it does not ignore) to a temporary folder, checks that the tests named below pass
there unmutated, then applies each mutation in turn to the copy (never to the working tree),
runs the tests named for it, and prints the test that failed (killed it) or ``SURVIVED``. It
exits 1 when a mutation survives, or when one no longer applies (its text is not found exactly
once: the code moved, update the list), 0 when every mutation is killed.

    python tests/mutants.py                 # all of them
    python tests/mutants.py holm-rank sign-flip-plus-one   # some, by name
    python tests/mutants.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STATS = "tests/test_findings_stats.py"
RECALL = "tests/test_recall_parts.py"
KAPPA = "tests/test_recall_kappa.py"
CONTRACT = "tests/test_contract_rules.py"
INVARIANTS = "tests/test_invariants.py"
CODECS = ("tests/test_codecs.py::test_stored_bytes_are_the_tensors_held",
          "tests/test_codecs.py::test_integer_codecs_are_within_half_a_step")


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (found exactly once in ``path``) by ``new``; ``tests`` must catch it."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]

    def apply(self, text: str) -> str:
        """``text`` mutated; ValueError when ``old`` is not found exactly once."""
        found = text.count(self.old)
        if found != 1:
            raise ValueError(f"mutation {self.name}: {self.old!r} found {found} times in "
                             f"{self.path} (needs exactly 1: update tests/mutants.py)")
        return text.replace(self.old, self.new)


INFERENCE = "toolkit/findings/inference.py"
MUTATIONS: tuple[Mutation, ...] = (
    Mutation("sign-flip-plus-one", INFERENCE, "extra = 0 if exact else 1", "extra = 0",
             (STATS,)),
    Mutation("sign-flip-exact-switch", INFERENCE, "exact = n <= EXACT_MAX",
             "exact = n < EXACT_MAX", (STATS,)),
    Mutation("sign-flip-two-sided", INFERENCE, '"two-sided": 2 * min(greater, less)',
             '"two-sided": min(greater, less)', (STATS,)),
    Mutation("holm-rank", INFERENCE, "min(1.0, (m - rank) * p[i])",
             "min(1.0, (m - rank - 1) * p[i])", (STATS,)),
    Mutation("holm-monotone", INFERENCE, "running = max(running, min(1.0, (m - rank) * p[i]))",
             "running = min(1.0, (m - rank) * p[i])", (STATS,)),
    Mutation("t-interval-quantile", INFERENCE,
             "half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)",
             "half = float(stats.t.ppf(confidence, len(x) - 1)", (STATS,)),
    Mutation("t-interval-ddof", INFERENCE, "x.std(ddof=1) / np.sqrt(len(x))",
             "x.std(ddof=0) / np.sqrt(len(x))", (STATS,)),
    Mutation("detectable-effect-one-sided", INFERENCE, "crit = stats.t.ppf(1 - alpha / 2, df)",
             "crit = stats.t.ppf(1 - alpha, df)", (STATS,)),
    Mutation("detectable-effect-sqrt-n", INFERENCE, "return float(nc * sd / np.sqrt(n))",
             "return float(nc * sd / np.sqrt(n - 1))", (STATS,)),
    Mutation("contract-storage-dedup", "toolkit/core/testing.py", "if key not in seen:",
             "if True:", (CONTRACT,)),
    Mutation("contract-counts-views", "toolkit/core/testing.py",
             "h.storage_bytes += t.untyped_storage().nbytes()", "h.storage_bytes += t.nbytes",
             (CONTRACT,)),
    Mutation("recall-gap-lower-edge", "toolkit/worlds/memory/metrics.py",
             "in_bin(gaps, a, b)", "in_bin(gaps, a + 1, b)", (RECALL,)),
    Mutation("recall-mid-over-all", "toolkit/worlds/memory/metrics.py",
             '"mid": _mean(mid, "identity")', '"mid": _mean(rows, "identity")', (RECALL,)),
    Mutation("recall-mid-colour-over-all", "toolkit/worlds/memory/metrics.py",
             '"mid_colour": _mean(mid, "colour")', '"mid_colour": _mean(rows, "colour")',
             (RECALL,)),
    Mutation("kappa-without-chance", "toolkit/worlds/memory/metrics.py",
             "return float((recall - chance_level) / (1 - chance_level))",
             "return float(recall)", (KAPPA,)),
    Mutation("recall-beyond-edge", "toolkit/worlds/memory/metrics.py",
             'return row["gap"] >= BEYOND_GAP and row["where"] == "mid"',
             'return row["gap"] > BEYOND_GAP and row["where"] == "mid"', (KAPPA,)),
    Mutation("recall-beyond-keeps-sink", "toolkit/worlds/memory/metrics.py",
             'return row["gap"] >= BEYOND_GAP and row["where"] == "mid"',
             'return row["gap"] >= BEYOND_GAP', (KAPPA,)),
    Mutation("footprint-keys-only", "toolkit/core/blocks.py", "u.bytes += b.nbytes",
             "u.bytes += b.keys.nbytes", (CONTRACT,)),
    Mutation("moved-block-read-sign", "toolkit/core/blocks.py",
             "return shift_time(k, rope, self.t0 - self.rotated_at), v",
             "return shift_time(k, rope, self.rotated_at - self.t0), v", (INVARIANTS,)),
    Mutation("codec-bytes-without-steps", "toolkit/core/codecs.py",
             "held = [*self.codes, *self.steps, *", "held = [*self.codes, *", CODECS),
    Mutation("codec-levels-off-centre", "toolkit/core/codecs.py",
             "return (2 ** bits - 1) / 2", "return 2 ** bits / 2", CODECS),
    Mutation("rope-shift-sign", "toolkit/core/rope.py",
             "rope.shift_table(float(delta))", "rope.shift_table(-float(delta))", (INVARIANTS,)),
    Mutation("rope-shift-all-dims", "toolkit/core/rope.py",
             "t = rope.split[0]\n    out = keys.clone()",
             "t = rope.split[0] + 2\n    out = keys.clone()", (INVARIANTS,)),
)


@dataclass
class Outcome:
    """What running a mutation's tests gave: ``killed_by`` (the first failing test, or the
    pytest exit status when none is named), or None when the tests passed (it survived)."""

    mutation: Mutation
    killed_by: str | None
    seconds: float


def copy_tree(src: Path, dst: Path) -> None:
    """Copy the files git tracks and the untracked ones it does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src,
                            check=True, capture_output=True, text=True).stdout
    for rel in filter(None, listed.split("\0")):
        source = src / rel
        if source.is_file():
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(tree: Path, tests: Sequence[str], python: str = sys.executable) -> tuple[int, str]:
    """pytest's exit status and output for ``tests`` in ``tree`` (first failure stops it)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([python, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider",
                           *tests], cwd=tree, env=env, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str | None:
    """The node id of the first ``FAILED``/``ERROR`` line of pytest's summary."""
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    return found.group(1) if found else None


def run_mutation(tree: Path, m: Mutation, python: str = sys.executable) -> Outcome:
    """Apply ``m`` to the copy ``tree``, run its tests, restore the file."""
    path = tree / m.path
    original = path.read_text()
    path.write_text(m.apply(original))
    start = time.perf_counter()
    try:
        rc, out = run_tests(tree, m.tests, python)
    finally:
        path.write_text(original)
    killed = None if rc == 0 else (first_failure(out) or f"pytest exit status {rc}")
    return Outcome(m, killed, time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        print(f"unknown mutation(s) {sorted(unknown)}; allowed: {[m.name for m in MUTATIONS]}")
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name:30} {m.path}: {m.old!r} -> {m.new!r}  [{', '.join(m.tests)}]")
        return 0
    with tempfile.TemporaryDirectory(prefix="rollbench-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(ROOT, tree)
        for m in chosen:  # fail early on a stale list, before any test runs
            m.apply((tree / m.path).read_text())
        tests = sorted({t for m in chosen for t in m.tests})
        rc, out = run_tests(tree, tests)
        if rc != 0:
            print(f"the tests fail WITHOUT a mutation ({first_failure(out)}): fix them first")
            print(out[-3000:])
            return 1
        survivors = 0
        for m in chosen:
            o = run_mutation(tree, m)
            verdict = f"killed by {o.killed_by}" if o.killed_by else "SURVIVED"
            survivors += o.killed_by is None
            print(f"{m.name:30} {verdict}  ({o.seconds:.0f} s; {m.path}: {m.old!r} -> "
                  f"{m.new!r})", flush=True)
    print(f"{len(chosen) - survivors} of {len(chosen)} mutations killed, {survivors} survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
