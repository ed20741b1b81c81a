"""Where a findings page's numbers come from: the code that made the runs, and whether the
findings file was committed before them (pre-registration)."""

import pandas as pd


def test_runs_made_by_other_code_are_flagged():
    """Run keys hash the config, not the code: reused runs of older code must show."""
    from types import SimpleNamespace

    from reports.findings import provenance

    same = SimpleNamespace(runs=pd.DataFrame({"revision": ["abc"] * 3}))
    assert "⚠" not in provenance(same, "abc")[0] and "`abc` (3 runs)" in provenance(same, "abc")[0]
    mixed = SimpleNamespace(runs=pd.DataFrame({"revision": ["abc", "old", "old"]}))
    line = provenance(mixed, "abc")[0]
    assert "⚠" in line and "`old` (2 runs)" in line and "fresh `run_root`" in line


def test_the_page_checks_the_file_was_committed_before_its_runs(tmp_path):
    import subprocess

    from toolkit.findings.run import registration

    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=repo, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    spec = repo / "spec.yaml"
    spec.write_text("a: 1\n")
    git("add", "spec.yaml")
    git("commit", "-qm", "file")
    written = git("rev-parse", "HEAD")
    (repo / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "code")
    runs = git("rev-parse", "HEAD")[:12]
    line, check = registration(spec, [runs] * 3)
    assert f"last changed in commit `{written[:12]}`" in line
    assert "committed before the runs and has not changed since" in check and "⚠" not in check
    assert "some runs were made with uncommitted changes" in registration(spec, [runs], True)[1]
    spec.write_text("a: 2\n")
    assert "the findings file has uncommitted changes" in registration(spec, [runs])[1]
    git("commit", "-qam", "edit the rules")
    later = git("rev-parse", "HEAD")[:12]
    check = registration(spec, [runs])[1]
    assert "⚠ the findings file changed after the runs were made" in check
    assert f"is not in the history of the runs' commit `{runs}`" in check
    assert f"2 different commits (`{runs}`, `{later}`)" in registration(spec, [runs, later])[1] \
        or f"2 different commits (`{later}`, `{runs}`)" in registration(spec, [runs, later])[1]
    assert "`0123456789ab` is not in this repository" in registration(spec, ["0123456789ab"])[1]
    loose = tmp_path / "loose.yaml"
    loose.write_text("a: 1\n")
    assert registration(loose, [runs])[0].endswith("not in any commit")
