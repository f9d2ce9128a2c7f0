"""The benchmark harness (bench/) runs end to end in quick mode, so it never rots.

Its figures are not asserted: only that every benchmark ran with every tool and that the
report has a section for each. The benchmark environment (``bench/.venv``: Ray, Dask,
joblib, moto, py-spy) is installed by ``make bench-env`` when missing; nothing is skipped
because a tool is absent. The harness gets this session's SSH test hosts (the farm's lock
is held by this session, so it could not start its own).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ssh_hosts import ClientKey, SSHTestHost

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = (
    "## Targets",
    "## 1. Warm round trip",
    "## 2. Throughput",
    "## 3. Bulk transfer",
    "## 4. Cold start",
    "## 5. Scale of provisioning",
    "## 6. Tensor transfer",
    "## 7. Streams",
)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_benchmarks_write_every_section(
    ssh_hosts: Callable[[int], list[SSHTestHost]],
    ssh_client_key: ClientKey,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    subprocess.run(["make", "--no-print-directory", "bench-env"], cwd=ROOT, check=True, timeout=600)
    hosts = ssh_hosts(4)
    given = tmp_path / "hosts.json"
    given.write_text(
        json.dumps(
            {
                "key": str(ssh_client_key.private_path),
                "known_hosts": str(ssh_known_hosts),
                "hosts": [
                    {"user": h.user, "address": h.address, "port": h.port, "home": str(h.home)}
                    for h in hosts
                ],
            }
        )
    )
    report = tmp_path / "performance.md"
    result = subprocess.run(
        [
            str(ROOT / "bench" / ".venv" / "bin" / "python"),
            "bench/run.py",
            "--quick",
            "--strict",
            "--out",
            str(report),
        ],
        cwd=ROOT,
        env={**os.environ, "SKYWARD_BENCH_SSH_HOSTS": str(given)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    text = report.read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    assert "The benchmark failed" not in text
    assert "did not run" not in text
