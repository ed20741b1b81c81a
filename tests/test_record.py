"""tests/record.py: the slow / gpu record keeps each test's last pass through later failures."""

import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("rollbench_record",
                                              Path(__file__).with_name("record.py"))
record = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = record
spec.loader.exec_module(record)

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_one[x]" time="12.4"/>
<testcase classname="tests.test_b.TestC" name="test_two" time="3.0"><failure message="no"/>
</testcase><testcase classname="tests.test_b" name="test_gpu" time="0"><skipped/></testcase>
</testsuite></testsuites>"""


def test_outcomes_pass_fail_skip_and_the_last_pass_survives(tmp_path):
    junit = tmp_path / "run.xml"
    junit.write_text(JUNIT)
    got = record.outcomes(junit)
    assert got == {"tests/test_a.py::test_one[x]": ("passed", 12.4),
                   "tests/test_b.py::TestC::test_two": ("failed", 3.0),
                   "tests/test_b.py::test_gpu": ("skipped", 0.0)}
    first = record.update({}, got, "slow", "2026-01-01 00:00 UTC", "aaa")
    path = tmp_path / "RECORD.md"
    path.write_text(record.render(first))
    again = record.read_record(path)
    assert again == first  # the file round-trips
    failed = {"tests/test_a.py::test_one[x]": ("failed", 11.0)}
    later = record.update(again, failed, "slow", "2026-02-01 00:00 UTC", "bbb")
    row = later["tests/test_a.py::test_one[x]"]
    assert (row.outcome, row.revision, row.last_pass, row.pass_revision) == (
        "failed", "bbb", "2026-01-01 00:00 UTC", "aaa")
    assert later["tests/test_b.py::TestC::test_two"] == first["tests/test_b.py::TestC::test_two"]
