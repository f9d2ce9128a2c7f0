"""Write docs/reliability.md from a run of the fault matrix (tests/test_fault_matrix.py).

Run ``make reliability-doc``. It runs every cell, records each one's outcome (pass, known
bug, FAIL), writes the doc and prints each cell's wall time. The doc holds no timings, so
a run where every cell behaves as declared writes the same file, and
``tests/test_fault_matrix.py`` checks the committed one against the declarations.
Extra arguments go to pytest (e.g. ``-x``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fault_matrix import TARGETS, Fault, render  # noqa: E402


class Recorder:
    """A pytest plugin: each cell's outcome and duration, from its reports."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, Fault], str] = {}
        self.durations: dict[tuple[str, Fault], float] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if "test_cell[" not in report.nodeid:
            return
        name, fault = report.nodeid.rsplit("[", 1)[1].rstrip("]").rsplit("-", 1)
        cell = (name, Fault[fault])
        self.durations[cell] = self.durations.get(cell, 0.0) + report.duration
        if report.when == "call" and report.skipped and hasattr(report, "wasxfail"):
            self.outcomes[cell] = "known bug"
        elif report.failed:
            self.outcomes[cell] = "FAIL"
        elif report.when == "call" and report.passed:
            self.outcomes[cell] = "pass"


def main(args: list[str]) -> int:
    recorder = Recorder()
    started = time.monotonic()
    code = pytest.main(
        [str(ROOT / "tests" / "test_fault_matrix.py"), "-q", "-p", "no:cacheprovider", *args],
        plugins=[recorder],
    )
    wall = time.monotonic() - started
    outcomes = dict(recorder.outcomes)
    for target in TARGETS:
        for fault in target.not_applicable:
            outcomes[(target.name, fault)] = "n/a"
    (ROOT / "docs" / "reliability.md").write_text(render(outcomes))
    for (name, fault), seconds in sorted(recorder.durations.items(), key=lambda c: -c[1]):
        print(f"{seconds:7.1f} s  {name:8} {fault.value}  [{outcomes.get((name, fault))}]")
    print(f"wall time {wall:.0f} s; wrote docs/reliability.md")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
