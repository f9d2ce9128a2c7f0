"""Leaving a pool by any path leaves no process behind.

Each test runs a real client program in a subprocess, lets it open a Local pool, ends it
one way (return, exception, Ctrl-C, SIGTERM, SIGKILL), and then looks for its agents.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.cli_runs import skyward_cli
from tests.conftest import agent_processes, wait_until

ROOT = Path(__file__).resolve().parent.parent

CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import skyward as sky

    @sky.compute
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    mode = sys.argv[1]
    with sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet") as pool:
        print(json.dumps({"pool": pool.pool_id}), flush=True)
        nap(0.01) @ pool
        print("ready", flush=True)
        sys.stdin.readline()  # the test checks the agents, then says go (or signals)
        if mode == "raise":
            raise RuntimeError("user code failed")
        if mode == "wait":
            nap(600) >> pool
    print("left the pool", flush=True)
    """
)


def _start(tmp_path: Path, mode: str, heartbeat: str = "30") -> tuple[subprocess.Popen[str], str]:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "SKYWARD_HEARTBEAT_TIMEOUT": heartbeat, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(script), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    pool_id = json.loads(process.stdout.readline())["pool"]
    assert process.stdout.readline().strip() == "ready"
    assert len(agent_processes(pool_id)) == 2
    return process, pool_id


def _go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_return_leaves_nothing(tmp_path: Path) -> None:
    process, pool_id = _start(tmp_path, "return")
    _go(process)
    code, out, _ = _finish(process)
    assert code == 0
    assert "left the pool" in out
    assert agent_processes(pool_id) == []


def test_exception_leaves_nothing(tmp_path: Path) -> None:
    process, pool_id = _start(tmp_path, "raise")
    _go(process)
    code, _, err = _finish(process)
    assert code == 1
    assert "RuntimeError: user code failed" in err
    assert agent_processes(pool_id) == []


def test_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    process, pool_id = _start(tmp_path, "wait")
    _go(process)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    code, _, err = _finish(process)
    assert code != 0
    assert "KeyboardInterrupt" in err
    assert agent_processes(pool_id) == []


def test_sigterm_leaves_nothing(tmp_path: Path) -> None:
    process, pool_id = _start(tmp_path, "wait")
    _go(process)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    code, _, _ = _finish(process)
    assert code == 128 + signal.SIGTERM
    assert agent_processes(pool_id) == []


@pytest.mark.slow
def test_sigkill_agents_exit_after_watchdog_interval(tmp_path: Path) -> None:
    process, pool_id = _start(tmp_path, "wait", heartbeat="2")
    _go(process)
    killed_at = time.monotonic()
    process.kill()
    process.wait(timeout=10)
    assert len(agent_processes(pool_id)) == 2, "agents outlive a SIGKILLed client at first"
    assert wait_until(lambda: not agent_processes(pool_id), timeout=10)
    elapsed = time.monotonic() - killed_at
    assert elapsed < 2 + 3, f"agents took {elapsed:.1f}s to notice the client was gone"


def test_skyward_down_sweeps_orphans_of_a_killed_client(tmp_path: Path) -> None:
    process, pool_id = _start(tmp_path, "wait", heartbeat="300")
    _go(process)
    process.kill()
    process.wait(timeout=10)
    try:
        _sweep_and_check(pool_id)
    finally:  # a failed assertion must not leave agents for 300 s
        skyward_cli("down", "--pool", pool_id, "--yes")


def _sweep_and_check(pool_id: str) -> None:
    assert len(agent_processes(pool_id)) == 2
    listed = skyward_cli("down", "--pool", pool_id, "--dry-run")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 2
    assert f"{pool_id}-node0" in listed.stdout
    assert len(agent_processes(pool_id)) == 2, "--dry-run only lists"
    swept = skyward_cli("down", "--provider", "local", "--pool", pool_id, "--yes")
    assert swept.returncode == 0, swept.stderr
    assert wait_until(lambda: not agent_processes(pool_id), 5)


def test_skyward_providers_lists_registered_providers() -> None:
    listed = skyward_cli("providers")
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    assert "local\tsky.Local" in out
    assert "example\tsky.Example\t(from example)" in out
