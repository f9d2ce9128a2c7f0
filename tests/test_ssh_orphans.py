"""Agents and node directories a dead client left on SSH hosts, and how they are removed.

The hosts are real sshd test hosts whose users log in with ``/bin/sh`` (dash on Debian)
or bash. A "fake agent" here is a process group whose leader's command line carries
``skyward.agent --job-id=<pool>`` (what the sweep looks for) and whose child ignores
SIGTERM, as a function's stubborn subprocess would.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import skyward as sky
from skyward.provider import AgentEndpoint
from skyward.providers.ssh import SSHProvider
from skyward.ssh.transport import SSHTransport
from tests.cli_runs import skyward_cli
from tests.conftest import wait_until
from tests.ssh_hosts import ClientKey, SSHTestHost
from tests.test_ssh_pool import ssh_provider

SHELLS = ["/bin/sh", "/bin/bash"]


@contextlib.contextmanager
def login_shell(host: SSHTestHost, shell: str) -> Iterator[None]:
    subprocess.run(["usermod", "-s", shell, host.user], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["usermod", "-s", "/bin/sh", host.user], check=True, capture_output=True)


def start_fake_agent(host: SSHTestHost, pool_id: str) -> tuple[int, int]:
    """Start a fake agent group on ``host``; returns (leader pid, stubborn child pid)."""
    script = "(trap '' TERM; exec sleep 301) & wait"
    result = host.run(
        f'setsid sh -c "{script}" skyward.agent --job-id={pool_id} '
        "</dev/null >/dev/null 2>&1 & echo $!"
    )
    leader = int(result.stdout.strip())
    assert wait_until(lambda: len(psutil.Process(leader).children()) == 1, 5)
    child = psutil.Process(leader).children()[0].pid
    assert os.getpgid(child) == leader
    return leader, child


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def provider_for(hosts: list[SSHTestHost], key: ClientKey, known_hosts: Path) -> SSHProvider:
    provider = ssh_provider(hosts, key, known_hosts, connect_timeout=10).create()
    assert isinstance(provider, SSHProvider)
    return provider


def test_the_test_hosts_log_in_with_dash() -> None:
    # What makes the /bin/sh cases below meaningful.
    assert os.path.realpath("/bin/sh").endswith("dash")


@pytest.mark.parametrize("shell", SHELLS)
def test_orphan_sweep_kills_the_agents_whole_group(
    shell: str, ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host = ssh_hosts(1)[0]
    with login_shell(host, shell):
        leader, child = start_fake_agent(host, "orphanpool")
        provider = provider_for([host], ssh_client_key, ssh_known_hosts)
        found = provider.list_by_tag("orphanpool")
        assert [i.tags["pid"] for i in found] == [str(leader)]
        provider.terminate(found)
        assert wait_until(lambda: not alive(leader) and not alive(child), 10), (
            f"left running under {shell}: {[p for p in (leader, child) if alive(p)]}"
        )


@pytest.mark.parametrize("shell", SHELLS)
def test_transport_close_kills_the_agents_whole_group(
    shell: str, ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host = ssh_hosts(1)[0]
    with login_shell(host, shell):
        leader, child = start_fake_agent(host, "closepool")
        provider = provider_for([host], ssh_client_key, ssh_known_hosts)
        connection = provider._connection(provider.config.hosts[0])
        transport = SSHTransport(connection, pool_id="closepool", name="node0")
        transport.endpoint = AgentEndpoint(port=1, pid=leader)
        started = time.monotonic()
        transport.close()
        assert time.monotonic() - started < 15
        assert wait_until(lambda: not alive(leader) and not alive(child), 10), (
            f"left running under {shell}: {[p for p in (leader, child) if alive(p)]}"
        )


# -- skyward down --provider ssh --host ... ---------------------------------------------------


def down(*args: str) -> subprocess.CompletedProcess[str]:
    return skyward_cli("down", "--yes", *args)


def host_args(host: SSHTestHost, key: ClientKey, known_hosts: Path) -> list[str]:
    return [
        "--host",
        host.target,
        "--identity",
        str(key.private_path),
        "--known-hosts",
        str(known_hosts),
    ]


def pool_dirs(host: SSHTestHost) -> list[str]:
    return host.run("ls .skyward/pools 2>/dev/null").stdout.split()


def test_down_for_ssh_without_hosts_says_what_it_needs_and_fails() -> None:
    result = down("--provider", "ssh")
    assert result.returncode != 0
    assert "--host" in result.stderr
    assert "ssh" in result.stderr


def test_down_with_hosts_stops_agents_and_removes_dead_pools_directories(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host = ssh_hosts(1)[0]
    host.run("rm -rf .skyward/pools; mkdir -p .skyward/pools/deadpool/node0 .skyward/pools/ghost/n")
    leader, child = start_fake_agent(host, "deadpool")
    args = host_args(host, ssh_client_key, ssh_known_hosts)

    listed = down("--provider", "ssh", "--dry-run", *args)
    assert listed.returncode == 0, listed.stderr
    assert f"deadpool-{host.target}-{leader}" in listed.stdout
    assert "node-dir\t~/.skyward/pools/ghost" in listed.stdout
    assert "pools/deadpool" not in listed.stdout, "its agent is alive: not a leftover yet"
    assert alive(leader), "dry run only lists"
    assert sorted(pool_dirs(host)) == ["deadpool", "ghost"], "dry run only lists"

    swept = down(*args)  # --host alone means the ssh provider
    assert swept.returncode == 0, swept.stderr
    assert wait_until(lambda: not alive(leader) and not alive(child), 10)
    assert pool_dirs(host) == []


def test_down_for_an_unreachable_host_fails_and_names_it(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    started = time.monotonic()
    result = down(
        "--host", "nobody@127.0.0.99:2299", "--known-hosts", str(known), "--connect-timeout", "2"
    )
    assert result.returncode == 1
    assert "nobody@127.0.0.99:2299" in result.stderr
    assert "refused" in result.stderr
    assert time.monotonic() - started < 30


def test_opening_a_pool_removes_old_directories_of_dead_pools(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host = ssh_hosts(1)[0]
    host.run(
        "rm -rf .skyward/pools; mkdir -p .skyward/pools/oldpool/node0 .skyward/pools/newpool/n0"
        " && touch -d '1 hour ago' .skyward/pools/oldpool"
    )
    leader, _ = start_fake_agent(host, "busypool")  # alive: its directory stays
    host.run(
        "mkdir -p .skyward/pools/busypool/node0 && touch -d '1 hour ago' .skyward/pools/busypool"
    )
    config = ssh_provider([host], ssh_client_key, ssh_known_hosts)
    with sky.ComputePool(provider=config, display="quiet") as pool:
        assert square(4) >> pool == 16
        assert "oldpool" not in pool_dirs(host)
        assert {"newpool", "busypool"} <= set(pool_dirs(host)), "recent or live: kept"
    assert alive(leader)


@sky.compute
def square(x: int) -> int:
    return x * x
