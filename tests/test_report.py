"""The compare-strategies report: golden Markdown, a real browser, partial data, sweeps, errors.

The fixture store is built at test time from committed JSON
(``tests/fixtures/report_store/runs.json``, made by ``tests/fixtures/make_report_store.py``).
The golden file ``tests/golden/report.md`` is the Markdown of the ``fixture`` experiment with
MLflow's random run ids replaced by ``<run-id>``; after an intended change, regenerate it with

    ROLLBENCH_UPDATE_GOLDEN=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_report.py

and review the diff. The browser test needs Debian's ``chromium`` (``.ci/run`` installs it) and
skips without it; it keeps a screenshot of the page in pytest's temporary folder.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from reports.compare import build_report, cmd_report, write_report
from reports.tables import marks_of
from toolkit.cli import main

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "report.md"
MACHINE = [("platform", "fixture-os"), ("python", "3.x"), ("CPUs", "2"), ("torch", "2.x")]
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def _fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_report_store", HERE / "fixtures" / "make_report_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FX = _fixture_module()


def _variant(spec: dict, experiment: str, keep) -> dict:
    """A copy of the fixture spec as another experiment, with runs filtered / edited."""
    spec = copy.deepcopy(spec)
    spec["experiment"] = experiment
    spec["runs"] = [r for r in (keep(r) for r in spec["runs"]) if r is not None]
    for r in spec["runs"]:
        r["name"] = f"{experiment}-{r['name']}"
    return spec


def _partial(run: dict) -> dict | None:
    """full and sink seeds 0-1; sink never has fidelity / dynamic_degree; sink s0 stops at 12x."""
    if run["strategy"] == "window" or run["config"]["seed"] > 1 or run["status"] != "FINISHED":
        return None
    if run["strategy"] == "sink":
        run["curves"].pop("fidelity", None)
        run["scalars"].pop("dynamic_degree", None)
        if run["config"]["seed"] == 0:
            run["config"]["video"]["latent_frames"] = 24
            for c in run["curves"].values():
                c["values"] = c["values"][: 24 // c["every"]]
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One run root holding: the fixture, its partial and single-strategy twins, two sweeps."""
    root = tmp_path_factory.mktemp("report-store")
    spec = FX.json.loads(FX.SPEC_PATH.read_text())
    uri = FX.build_store(root, spec)
    FX.build_store(root, _variant(spec, "partial", _partial))
    FX.build_store(root, _variant(spec, "single", lambda r: r if r["strategy"] == "window"
                                  and r["status"] == "FINISHED" and r["config"]["seed"] < 3
                                  else None))
    FX.build_sweep(root, "budget")
    FX.build_sweep(root, "one", FX.SWEEP_TRIALS[:1])
    return root, uri


def _render(store, experiment: str, **kw) -> tuple[Path, str, str]:
    root, uri = store
    out = root / "reports" / experiment
    report = build_report(uri, experiment, out, root, machine=MACHINE, **kw)
    html, md = write_report(report, out)
    return out, html.read_text(), md.read_text()


def _md_table(md: str, title: str) -> list[list[str]]:
    """Body rows (cells) of the first Markdown table after the heading ``title``."""
    rows = []
    for line in md.split(f"### {title}\n", 1)[1].splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {title!r}"
    return rows[2:]


def test_golden_markdown(store):
    """The fixture's Markdown equals tests/golden/report.md (ROLLBENCH_UPDATE_GOLDEN=1 rewrites)."""
    root, _ = store
    out, _, md = _render(store, "fixture")
    text = RUN_ID.sub("<run-id>", md)
    assert str(root) not in text and "/tmp" not in text  # no absolute paths
    assert RUN_ID.sub("<run-id>", _render(store, "fixture")[2]) == text  # deterministic
    if os.environ.get("ROLLBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert GOLDEN.is_file(), "no golden file: run with ROLLBENCH_UPDATE_GOLDEN=1"
    assert text == GOLDEN.read_text(), "the report changed; see the test docstring"
    for name in re.findall(r"\]\(((?:figures|filmstrips)/[^)]+\.png)\)", md):
        assert (out / name).stat().st_size > 200, name  # every image the Markdown names
    for link in re.findall(r"\[video\.mp4\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link  # relative links reach the artifacts


def test_headline_values_come_from_the_curves(store):
    _, _, md = _render(store, "fixture")
    spec = FX.json.loads(FX.SPEC_PATH.read_text())
    full = [r for r in spec["runs"] if r["strategy"] == "full"]
    kv_24x = np.mean([max(r["curves"]["kv_bytes"]["values"]) for r in full]) / 2**20
    drift_6x = np.mean([r["curves"]["drift"]["values"][5] for r in full])  # frames 10-11
    rows = {r[0]: r for r in _md_table(md, "KV ↓ (MiB)")}
    assert rows["full"][4] == f"{kv_24x:.1f}"
    assert rows["window"][4].startswith("**") and rows["window"][4].endswith("▲**")
    drift = {r[0]: r for r in _md_table(md, "drift ↓ (feature distance)")}
    assert drift["full"][2].startswith(f"**{drift_6x:.3g} [")
    assert drift["window"][4].endswith("▼")  # drifts significantly more than full at 24x


def _chromium() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  const p = document.createElement("pre"); p.id = "probe";
  p.textContent = `images=${imgs.length} broken=${imgs.filter(i => !i.complete ||
    i.naturalWidth === 0).length} inline=${imgs.filter(i => i.src.startsWith("data:image/png;"))
    .length} tables=${document.querySelectorAll("table").length}`;
  document.body.appendChild(p);
});</script>"""


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (/usr/bin/chromium); "
                    ".ci/run installs it")
def test_html_opens_in_headless_chromium(store, tmp_path):
    out, page, _ = _render(store, "fixture")
    probe = out / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    found = re.search(r"images=(\d+) broken=(\d+) inline=(\d+) tables=(\d+)", dom)
    assert found, f"the probe did not run; DOM starts {dom[:300]!r}"
    images, broken, inline, tables = map(int, found.groups())
    assert images == 1 + 6 + 3 and broken == 0 and inline == images  # front, 6 curves, 3 strips
    # the front, runs, headline (7 measures), scalars (2), filmstrips, provenance (3)
    assert tables == 1 + 1 + 7 + 2 + 1 + 3
    for heading in ("Headline: the length marks", "Whole-run scalars", "Provenance"):
        assert heading in dom
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1280,2400", f"--screenshot={shot}",
                    (out / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"screenshot of the report: {shot}")


def test_partial_data_shows_missing_never_zero(store):
    _, html, md = _render(store, "partial")
    fidelity = {r[0]: r for r in _md_table(md, "prompt fidelity ↑ (fraction)")}
    assert fidelity["sink"][1:] == ["—"] * 4  # no sink run has the curve
    assert fidelity["full"][4] not in ("—", "0")
    kv = {r[0]: r for r in _md_table(md, "KV ↓ (MiB)")}
    assert kv["sink"][4].strip("*").endswith("(n=1)")  # the 24-frame sink run ends at 12x
    assert "(n=1)" not in kv["sink"][3]  # ...but reaches 12x
    scalars = md.split("## Whole-run scalars", 1)[1].split("##", 1)[0]
    sink_48 = next(ln for ln in scalars.splitlines() if ln.startswith("| sink | 48 |"))
    head = next(ln for ln in scalars.splitlines() if ln.startswith("| variant"))
    col = [c.strip() for c in head.split("|")].index("dynamic_degree ↑ (fraction of frames)")
    assert [c.strip() for c in sink_48.split("|")][col] == "—"
    assert "| sink | 24 |" in scalars  # each length its own row
    assert "<td>—</td>" in html


def test_single_strategy(store):
    _, html, md = _render(store, "single")
    assert "of 1 variant(s)" in md and "baseline none" in md
    assert "No variant is the baseline `full`" in md
    drift = _md_table(md, "drift ↓ (feature distance)")
    assert [r[0] for r in drift] == ["window"]
    assert "**" not in "".join(drift[0]) and "▲" not in md and "▼" not in md
    assert md.count("](figures/") == 7 and md.count("](filmstrips/") == 1
    assert "<table>" in html


def test_sweep_report_has_front_importances_and_best_trials(store):
    out, html, md = _render(store, "sweep-budget")
    assert "## Sweep: study `budget`" in md and "Trials: 4 complete, 1 pruned." in md
    assert (out / "figures" / "pareto.png").stat().st_size > 1000
    assert (out / "figures" / "importances.png").stat().st_size > 1000
    best = _md_table(md, "Best trials (the Pareto front)")
    assert [r[0] for r in best] == ["trial 0", "trial 1", "trial 2"]  # trial 3 is dominated
    assert best[1][1:3] == ["0.12", "4.00"]  # vde, peak KV in MiB
    assert "No variant is the baseline" in md and html.count("data:image/png") >= 8


def test_sweep_with_one_trial_says_why_there_are_no_importances(store):
    out, _, md = _render(store, "sweep-one")
    assert "parameter importances need at least 2 completed trials" in md
    assert not (out / "figures" / "importances.png").exists()
    assert (out / "figures" / "pareto.png").is_file()


def test_cli_report_and_its_errors(store, capsys, tmp_path):
    root, _ = store
    assert main(["report", "experiment=fixture", f"run_root={root}",
                 f"out={tmp_path / 'cli'}"]) == 0
    assert (tmp_path / "cli" / "report.html").is_file()
    assert str(tmp_path / "cli" / "report.md") in capsys.readouterr().out
    assert main(["report", "experiment=fixtur", f"run_root={root}"]) == 2
    err = " ".join(capsys.readouterr().out.split())
    assert "unknown experiment 'fixtur'" in err and "Did you mean fixture" in err
    assert "sweep-budget" in err and "partial" in err  # lists the store's experiments
    empty = tmp_path / "empty"
    assert main(["report", "experiment=fixture", f"run_root={empty}"]) == 2
    assert "no tracking store" in capsys.readouterr().out and not empty.exists()
    assert main(["report", "experiment=fixture", "colour=red"]) == 2
    assert "allowed: experiment=" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(ValueError, match="needs experiment"):
        cmd_report([f"run_root={root}"])


def test_the_report_reads_only_the_store():
    """No module of reports/ opens a model's files or composes a run config."""
    for path in (HERE.parent / "reports").glob("*.py"):
        text = path.read_text()
        for needle in ("toolkit.world", "weights", "compose_config", "find_spec",
                       "toolkit.runs.jobs", "toolkit.runs.config import build"):
            assert needle not in text, f"{path.name} uses {needle}"


def band_extents(fig) -> list[tuple[float, float]]:
    """(lowest, highest) y of every CI band (fill_between polygon) of a figure, in data units."""
    out = []
    for ax in fig.axes:
        for coll in ax.collections:
            if "Poly" not in type(coll).__name__:
                continue
            ys = np.concatenate([p.vertices[:, 1] for p in coll.get_paths()] or [np.array([])])
            ys = ys[np.isfinite(ys)]
            if len(ys):
                out.append((float(ys.min()), float(ys.max())))
    return out


def test_the_fixture_reports_fraction_figures_keep_their_bands_in_range(store):
    """Every figure of a fraction in the fixture's report (and its partial twin): no band
    outside [0, 1]."""
    from reports.compare import curve_figures
    from reports.data import load_experiment
    from reports.tables import CURVES, resolve_baseline
    from reports.tables import order as variant_order
    from toolkit.runs.aggregate import value_range

    _, uri = store
    checked = 0
    for name in ("fixture", "partial"):
        exp = load_experiment(uri, name, list(CURVES))
        variants = variant_order(list(exp.runs["variant"]), resolve_baseline(exp.runs, "full"))
        for metric, _, fig in curve_figures(exp, variants, marks_of(exp.runs), 2):
            low, high = value_range(metric)
            for lo, hi in band_extents(fig):
                assert low - 1e-9 <= lo and hi <= high + 1e-9, (name, metric, lo, hi)
                checked += value_range(metric) == (0.0, 1.0)
    assert checked  # some fraction's band was looked at


def test_a_duplicate_run_key_counts_once_and_the_report_says_so(store):
    root, _ = store
    spec = FX.json.loads(FX.SPEC_PATH.read_text())
    twice = _variant(spec, "twice", lambda r: r if r["strategy"] == "window"
                     and r["status"] == "FINISHED" and r["config"]["seed"] < 3 else None)
    twin = copy.deepcopy(twice["runs"][0])
    twin["name"] += "-twin"  # the same config (run key) run a second time
    twice["runs"].append(twin)
    FX.build_store(root, twice)
    _, _, md = _render(store, "twice")
    assert "3 finished runs (0 not finished, 1 duplicates dropped)" in md
    assert "1 duplicate run(s) of an already finished run key" in md


def test_the_first_table_answers_quality_at_the_marks_against_kv(store):
    from reports.answer import pareto_front, window_mean

    out, _, md = _render(store, "fixture")
    first = md.split("\n## ", 2)[1]
    assert first.startswith("Quality against memory: prompt fidelity")
    rows = {r[0]: r for r in _md_table(md.replace("\n## Quality", "\n### Quality"),
                                       "Quality against memory: prompt fidelity at each "
                                       "length mark, peak KV")}
    assert set(rows) == {"full", "sink", "window"}
    at, upto = (float(x.strip("* ")) for x in rows["window"][4].split("/"))
    assert at < upto  # window's fidelity falls: the value at 24x is below the mean up to it
    assert rows["full"][5] == "12.0" and rows["window"][5] == "2.00"  # peak KV, MiB
    assert (out / "figures" / "quality-vs-kv.png").stat().st_size > 1000
    steps = np.arange(10)
    assert window_mean((steps, steps.astype(float)), 10, 2) == 8.5
    assert window_mean((steps, steps.astype(float)), 10, 10) == 4.5
    kv, quality = np.array([1.0, 2.0, 3.0, 2.5]), np.array([0.5, 0.7, 0.9, 0.6])
    assert sorted(pareto_front(kv, quality)) == [0, 1, 2]  # 2.5 MiB at 0.6 is dominated

