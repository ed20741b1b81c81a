"""Pre-registration: what shows a findings page's rules were written before its runs.

- The findings file's last commit against the commits the runs were made at (``registration``,
  ``git merge-base --is-ancestor``), and its commit history (``history``);
- the code that decides the verdicts: ``code_hashes`` (the verdict code and the metric modules
  the file's measures read), recorded on every run as ``code.*`` tags and compared by the page
  (``code_check``) with the code now and as committed with the file;
- the page renders the committed file (``committed_spec``: ``git show``), refusing one with
  uncommitted changes unless ``draft=true``.
"""

from __future__ import annotations

import hashlib
import inspect
import subprocess
from collections.abc import Sequence
from pathlib import Path

from toolkit.errors import ConfigError
from toolkit.findings.spec import Spec, load_spec

ROOT = Path(__file__).resolve().parents[2]
#: The findings code that turns stored curves into verdicts (hashed on every run).
VERDICT_CODE = ("toolkit/findings/spec.py", "toolkit/findings/measures.py",
                "toolkit/findings/inference.py", "toolkit/findings/stats.py")
CODE_TAG = "code."


def metric_modules(spec: Spec) -> list[str]:
    """The source files (relative to the repository) of the metrics the file's measures read."""
    from toolkit.metrics import METRICS

    names = {c.split("/", 1)[0] for cl in spec.claims for t in cl.tests
             for c in t.parsed.curves}
    files = set()
    for name in names:
        source = inspect.getsourcefile(METRICS.get(name).fn)
        if source:
            path = Path(source).resolve()
            files.add(path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT)
                      else path.name)
    return sorted(files)


def digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()[:16]


def code_hashes(spec: Spec, root: Path = ROOT) -> dict[str, str]:
    """sha256 (16 hex digits) of the verdict code and of the metric modules the file's measures
    read, by path relative to the repository, as they are now on disk."""
    return {rel: digest((root / rel).read_bytes()) for rel in
            [*VERDICT_CODE, *metric_modules(spec)] if (root / rel).exists()}


def committed_hashes(commit: str, files: Sequence[str], root: Path = ROOT) -> dict[str, str]:
    """The same hashes of ``files`` as committed in ``commit`` (``git show``); a file the
    commit lacks is left out."""
    out = {}
    for rel in files:
        try:
            got = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=root,
                                 capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if got.returncode == 0:
            out[rel] = digest(got.stdout)
    return out


def code_check(recorded: Sequence[dict[str, str]], current: dict[str, str],
               at_spec: dict[str, str] | None = None) -> list[str]:
    """The page's line on the code: every run's recorded hashes against the code rendering the
    page (and against the code committed with the findings file, when given).

    Args:
        recorded: per run, its ``code.*`` tags (path -> hash); empty for runs that made none.
        current: ``code_hashes`` now.
        at_spec: the same files as committed with the findings file's last change.
    """
    warn = []
    missing = sum(not r for r in recorded)
    if missing:
        warn.append(f"{missing} of {len(recorded)} runs recorded no code hashes (made before "
                    "they were recorded): the code that made them cannot be checked")
    for rel, now in current.items():
        seen = sorted({r[rel] for r in recorded if r and rel in r})
        if len(seen) > 1:
            warn.append(f"`{rel}` differs between runs ({', '.join(seen)})")
        elif seen and seen[0] != now:
            warn.append(f"`{rel}` changed after the runs (runs: {seen[0]}, now: {now})")
        if at_spec is not None and rel in at_spec and seen and at_spec[rel] not in seen:
            warn.append(f"`{rel}` changed between the findings file's commit and the runs "
                        f"(committed with the file: {at_spec[rel]}, runs: {seen[0]})")
    files = ", ".join(f"`{Path(r).name}` {h}" for r, h in current.items())
    if warn:
        return ["- Code: ⚠ " + "; ⚠ ".join(warn) + f". Now: {files}."]
    return [f"- Code: the verdict code and the metric modules the measures read are those the "
            f"runs recorded ({files})."]


def committed_spec(path: str | Path, draft: bool = False) -> Spec:
    """The findings file as committed (``git show`` of its last commit), so the page renders
    the pre-registered rules; with uncommitted changes (or no commit) a ConfigError, unless
    ``draft`` (then the working copy)."""
    path = Path(path).resolve()
    if not path.exists():
        raise ConfigError(f"findings file {path} does not exist")
    got = file_commit(path)
    status = _git(path.parent, "status", "--porcelain", "--", path.name)
    edited = got is None or bool(status and status.returncode == 0 and status.stdout.strip())
    if edited and not draft:
        raise ConfigError(f"findings file {path.name} has uncommitted changes (or is in no "
                          "commit): a findings page renders the committed rules; commit it, "
                          "or pass draft=true for a page marked as a draft")
    if edited:
        return load_spec(path)
    top = _git(path.parent, "rev-parse", "--show-toplevel")
    rel = path.relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    text = _git(path.parent, "show", f"{got[0]}:{rel}")
    if text is None or text.returncode:
        raise ConfigError(f"cannot read {rel} as committed in {got[0][:12]} (git show failed)")
    return load_spec(path, text.stdout)


# --- pre-registration: the findings file's commit against the runs' ---------------------------
def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


def _ok(cwd: Path, *args: str) -> bool:
    out = _git(cwd, *args)
    return out is not None and out.returncode == 0


def file_commit(path: str | Path) -> tuple[str, str] | None:
    """(hash, date) of the last commit that changed ``path`` (``git log -1 -- path``); None when
    no commit holds it (not committed, or not in a git repository)."""
    path = Path(path).resolve()
    out = _git(path.parent, "log", "-1", "--format=%H %cs", "--", path.name)
    if out is None or out.returncode or not out.stdout.strip():
        return None
    commit, date = out.stdout.split()
    return commit, date


def registration(path: str | Path, commits: Sequence[str], dirty: bool = False) -> list[str]:
    """The page's lines on the findings file's commit and the pre-registration check.

    The file counts as written before the runs when its last change is in the history of every
    commit the runs were made at (``git merge-base --is-ancestor``) and it has no uncommitted
    changes; anything else is said plainly: the file changed after the runs, uncommitted file
    or runs, runs made at different commits, a run commit this repository lacks.

    Args:
        path: the findings file.
        commits: the commits (hash or prefix) the runs were made at, one per run.
        dirty: some runs were made with uncommitted changes.
    """
    path = Path(path).resolve()
    got = file_commit(path)
    status = _git(path.parent, "status", "--porcelain", "--", path.name)
    edited = bool(status and status.returncode == 0 and status.stdout.strip())
    runs = sorted(set(commits))
    warn = []
    if got is None:
        line = f"- Findings file: `{path.name}`, not in any commit"
        warn.append("the findings file is not committed, so nothing shows it was written "
                    "before the runs")
    else:
        line = f"- Findings file: `{path.name}`, last changed in commit `{got[0][:12]}` ({got[1]})"
        if edited:
            warn.append("the findings file has uncommitted changes: the rules on this page are "
                        "not the committed ones")
        for run in runs:
            if run == "unknown" or not _ok(path.parent, "cat-file", "-e", f"{run}^{{commit}}"):
                warn.append(f"the runs' commit `{run}` is not in this repository: cannot check")
                continue
            if not _ok(path.parent, "merge-base", "--is-ancestor", got[0], run):
                warn.append(f"the findings file changed after the runs were made: its last "
                            f"change `{got[0][:12]}` is not in the history of the runs' commit "
                            f"`{run}`")
    if not runs:
        warn.append("no runs to check against")
    if len(runs) > 1:
        warn.append(f"the runs were made at {len(runs)} different commits ("
                    + ", ".join(f"`{r}`" for r in runs) + ")")
    if dirty:
        warn.append("some runs were made with uncommitted changes, which no commit records")
    if warn:
        check = "- Pre-registration: ⚠ " + "; ⚠ ".join(warn) + "."
    else:
        check = (f"- Pre-registration: the file's last change `{got[0][:12]}` is in the history "
                 f"of the runs' commit `{runs[0]}`: it was committed before the runs and has "
                 "not changed since.")
    return [line, check, *history(path)]


def history(path: str | Path, most: int = 20) -> list[str]:
    """The findings file's commits, newest first (``git log --follow``), as page lines."""
    path = Path(path).resolve()
    out = _git(path.parent, "log", "--follow", f"-{most}", "--format=%h %cs %s", "--",
               path.name)
    if out is None or out.returncode or not out.stdout.strip():
        return []
    return ["- Findings file history (newest first):",
            *[f"  - `{ln.split(' ', 2)[0]}` {ln.split(' ', 2)[1]}: "
              f"{ln.split(' ', 2)[2] if ln.count(' ') > 1 else ''}"
              for ln in out.stdout.strip().splitlines()]]
