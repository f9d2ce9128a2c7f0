"""SSH provider end to end, against real sshd test hosts (nothing mocked)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from tests.ssh_hosts import ClientKey, SSHTestHost


@sky.compute
def whoami() -> dict[str, Any]:
    import getpass

    info = sky.instance_info()
    return {
        "user": getpass.getuser(),
        "node": info.node,
        "total": info.total_nodes,
        "head_addr": info.head_addr,
        "head_port": info.head_port,
        "cwd": os.getcwd(),
    }


@sky.compute
def can_reach(address: str, port: int) -> bool:
    with socket.create_connection((address, port), timeout=5):
        return True


@sky.compute
def square(x: int) -> int:
    return x * x


def ssh_provider(
    hosts: list[SSHTestHost], key: ClientKey, known_hosts: Path, **options: Any
) -> sky.SSH:
    return sky.SSH(
        hosts=[
            sky.SSHHost(h.address, user=h.user, port=h.port, identity_file=str(key.private_path))
            for h in hosts
        ],
        known_hosts=str(known_hosts),
        **options,
    )


def test_three_host_pool(ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path) -> None:
    hosts = ssh_hosts(3)
    provider = ssh_provider(hosts, ssh_client_key, ssh_known_hosts)
    events: list[Any] = []
    with sky.ComputePool(provider=provider, nodes=3, display="quiet", on_event=events.append) as pool:
        assert square(7) >> pool == 49
        infos = whoami() @ pool
        assert [i["node"] for i in infos] == [0, 1, 2]
        assert [i["user"] for i in infos] == [h.user for h in hosts]
        assert {i["head_addr"] for i in infos} == {hosts[0].address}
        assert all(i["total"] == 3 for i in infos)
        reach = can_reach(hosts[0].address, hosts[0].port) @ pool
        assert reach == (True, True, True), "head_addr is reachable from every node"
        results = sky.gather(*(square(i) for i in range(1000))) >> pool
        assert list(results) == [i * i for i in range(1000)]
    for host in hosts:
        assert not [p for p in host.processes() if "skyward.agent" in " ".join(p.cmdline())]
        assert host.run("ls .skyward/pools 2>/dev/null | wc -l").stdout.strip() == "0"
