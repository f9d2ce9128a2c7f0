"""Temporary node directories of Local pools whose client was SIGKILLed: ``skyward down``
removes them, and so does the next pool's open; a live pool's directory is never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import skyward as sky
from skyward.providers.local import LocalProvider
from skyward.providers.local_leftovers import MARKER
from tests.cli_runs import skyward_cli
from tests.conftest import agent_processes, wait_until

ROOT = Path(__file__).resolve().parent.parent

CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import skyward as sky

    @sky.compute
    def where():
        import os
        return os.getcwd()

    with sky.ComputePool(provider=sky.Local(), display="quiet") as pool:
        print(json.dumps({"pool": pool.pool_id, "cwd": where() >> pool}), flush=True)
        time.sleep(600)
    """
)


def killed_client(tmp_path: Path) -> tuple[str, Path]:
    """Run a client that opens a Local pool, SIGKILL it, wait for its agent's watchdog;
    returns (pool id, the pool's temporary directory), which is still there."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "SKYWARD_HEARTBEAT_TIMEOUT": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
    finally:
        process.kill()
        process.wait(10)
    pool_id, node_dir = info["pool"], Path(info["cwd"])
    root = node_dir.parent
    assert root.parent == Path(tempfile.gettempdir())
    assert wait_until(lambda: not agent_processes(pool_id), 15)
    assert root.exists(), "a killed client leaves its directory"
    assert (root / MARKER).exists()
    return pool_id, root


def test_skyward_down_removes_a_killed_clients_directory(tmp_path: Path) -> None:
    pool_id, root = killed_client(tmp_path)
    listed = skyward_cli("down", "--provider", "local", "--dry-run")
    assert listed.returncode == 0, listed.stderr
    assert f"local\tnode-dir\t{root}" in listed.stdout
    assert root.exists()
    swept = skyward_cli("down", "--provider", "local", "--pool", pool_id, "--yes")
    assert swept.returncode == 0, swept.stderr
    assert not root.exists()


def test_the_next_pool_open_removes_it(tmp_path: Path) -> None:
    _, root = killed_client(tmp_path)
    with sky.ComputePool(provider=sky.Local(), display="quiet"):
        assert not root.exists()


def test_a_live_pools_directory_is_not_a_leftover() -> None:
    with sky.ComputePool(provider=sky.Local(), display="quiet") as pool:
        provider = sky.Local().create()
        assert isinstance(provider, LocalProvider)
        assert all(leftover.pool != pool.pool_id for leftover in provider.list_leftovers())


def test_a_users_root_is_never_swept(tmp_path: Path) -> None:
    (tmp_path / "sky-old").mkdir()
    (tmp_path / "sky-old" / MARKER).write_text(
        json.dumps({"pool": "sky-old", "client_pid": 1, "client_started": 0})
    )
    provider = sky.Local(root=str(tmp_path)).create()
    assert isinstance(provider, LocalProvider)
    assert provider.list_leftovers() == []
