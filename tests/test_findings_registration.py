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

    from toolkit.findings.registration import registration

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
    line, check, *history = registration(spec, [runs] * 3)
    assert f"last changed in commit `{written[:12]}`" in line
    assert history[0] == "- Findings file history (newest first):"
    assert history[1].startswith(f"  - `{written[:7]}") and history[1].endswith(": file")
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


def _repo(tmp_path):
    """A git repository with a findings file (TINY) committed; returns (root, spec, git)."""
    import subprocess
    import textwrap

    from tests.test_findings import TINY

    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=repo, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    spec = repo / "findings.yaml"
    spec.write_text(textwrap.dedent(TINY))
    git("add", "findings.yaml")
    git("commit", "-qm", "pre-register")
    return repo, spec, git


def test_the_page_renders_the_committed_file_and_refuses_a_dirty_one(tmp_path):
    import pytest

    from toolkit.errors import ConfigError
    from toolkit.findings.registration import committed_spec

    _, spec, git = _repo(tmp_path)
    assert committed_spec(spec).title == "Toy findings"
    spec.write_text(spec.read_text().replace("title: Toy findings", "title: Edited"))
    with pytest.raises(ConfigError, match=r"findings\.yaml has uncommitted changes"):
        committed_spec(spec)
    assert committed_spec(spec, draft=True).title == "Edited"  # a draft: the working copy
    git("stash")
    assert committed_spec(spec).title == "Toy findings"
    loose = tmp_path / "loose.yaml"
    loose.write_text(spec.read_text())
    with pytest.raises(ConfigError, match="or is in no commit"):
        committed_spec(loose)


def test_the_check_catches_a_change_to_the_verdict_code_after_the_runs():
    from toolkit.findings import load_spec
    from toolkit.findings.registration import VERDICT_CODE, code_check, code_hashes, metric_modules

    spec = load_spec()
    now = code_hashes(spec)
    assert set(VERDICT_CODE) <= set(now)
    assert metric_modules(spec) and set(metric_modules(spec)) <= set(now)
    assert any(m.startswith("toolkit/metrics/") for m in metric_modules(spec))
    clean = code_check([now] * 3, now, now)
    assert "⚠" not in clean[0] and "are those the runs recorded" in clean[0]
    before = dict(now, **{"toolkit/findings/stats.py": "0" * 16})
    line = code_check([before] * 3, now, before)[0]
    assert "⚠ `toolkit/findings/stats.py` changed after the runs (runs: 0000000000000000" in line
    mixed = code_check([now, before], now)[0]
    assert "`toolkit/findings/stats.py` differs between runs" in mixed
    line = code_check([now] * 2, now, before)[0]
    assert "changed between the findings file's commit and the runs" in line
    assert "2 of 3 runs recorded no code hashes" in code_check([now, {}, {}], now)[0]


def test_runs_record_their_code_and_the_page_compares_it(tmp_path):
    """A stored run's code.* tags come back through collect into the page's code line."""
    from types import SimpleNamespace

    from reports.findings import code_tags, provenance
    from toolkit.findings import load_spec
    from toolkit.findings.registration import code_hashes

    spec = load_spec()
    now = code_hashes(spec)
    run = {"tags.code." + k: v for k, v in now.items()} | {"tags.run_key": "x"}
    assert code_tags(run) == now
    old = dict(now, **{"toolkit/findings/inference.py": "f" * 16})
    f = SimpleNamespace(spec=spec, runs=pd.DataFrame({"revision": ["abc"] * 2,
                                                      "code": [old, old]}))
    lines = provenance(f, "abc")
    assert len(lines) == 2 and "`toolkit/findings/inference.py` changed after the runs" in lines[1]


def test_quick_runs_use_their_own_prompts(tmp_path):
    import textwrap

    import pytest

    from tests.test_findings import TINY
    from toolkit.errors import ConfigError
    from toolkit.findings import load_spec, plan

    for spec in (load_spec(), load_spec(load_spec().path.with_name("findings-followup.yaml"))):
        quick = set(spec.prompts(spec.quick_seeds, quick=True))
        assert not quick & set(spec.prompts(spec.seeds))
    path = tmp_path / "f.yaml"
    path.write_text(textwrap.dedent(TINY).replace("first_seed: 5", "first_seed: 5\nquick: "
                                                  "{seeds: 2, first_seed: 40}"))
    spec = load_spec(path)
    assert {j.seed for j in plan(spec, 2, quick=True)} == {40, 41}
    assert {j.seed for j in plan(spec, 2)} == {5, 6}
    path.write_text(textwrap.dedent(TINY).replace("first_seed: 5", "first_seed: 5\nquick: "
                                                  "{seeds: 2, first_seed: 6}"))
    with pytest.raises(ConfigError, match=r"the confirmatory prompts 5\.\.6 and the quick "
                                          r"prompts 6\.\.7 overlap"):
        load_spec(path)
