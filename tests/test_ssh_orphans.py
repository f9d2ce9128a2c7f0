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
from tests.conftest import wait_until
from tests.ssh_hosts import ClientKey, SSHTestHost

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
    config = sky.SSH(
        hosts=[
            sky.SSHHost(h.address, user=h.user, port=h.port, identity_file=str(key.private_path))
            for h in hosts
        ],
        known_hosts=str(known_hosts),
        connect_timeout=10,
    )
    provider = config.create()
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
