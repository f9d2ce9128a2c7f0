"""Hosts whose sshd offers no SFTP subsystem: uploads go through ``cat`` on an exec
channel, a pool still starts, and a failure says what is missing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward.errors import ConnectError
from skyward.ssh.connection import SSHConnection
from skyward.ssh.hosts import SSHHost
from skyward.ssh.keys import KnownHosts
from tests.ssh_hosts import SFTP, ClientKey, SSHTestHost, ssh_command
from tests.test_ssh_pool import ssh_provider


@sky.compute
def square(x: int) -> int:
    return x * x


def _connection(host: SSHTestHost, key: ClientKey, known_hosts: Path) -> SSHConnection:
    return SSHConnection(
        SSHHost(host.address, user=host.user, port=host.port, identity_file=str(key.private_path)),
        KnownHosts((known_hosts,)),
        connect_timeout=10,
    )


def test_the_host_really_has_no_sftp(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    import subprocess

    host = ssh_hosts(1)[0]
    with host.without_sftp():
        command = ssh_command(host, ssh_client_key, ssh_known_hosts)
        # sftp takes the same options as ssh, minus the host (given last).
        sftp = [SFTP, *command[1:-1]]
        sftp = [a if a != "-p" else "-P" for a in sftp]
        result = subprocess.run(
            [*sftp, "-b", "-", f"{host.user}@{host.address}"],
            input="ls\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0


@pytest.mark.parametrize("broken", [False, True], ids=["no-subsystem", "missing-binary"])
def test_upload_falls_back_to_the_exec_channel(
    broken: bool, ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    host = ssh_hosts(1)[0]
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 2**20 + 17))
    odd = tmp_path / "it's odd.txt"
    odd.write_text("hello\n")
    with host.without_sftp(broken=broken):
        conn = _connection(host, ssh_client_key, ssh_known_hosts)
        try:
            conn.upload([big, odd], ".skyward/no-sftp/a b")
        finally:
            conn.close()
        listing = host.run("sha256sum '.skyward/no-sftp/a b/big.bin'; ls -A '.skyward/no-sftp/a b'")
    assert hashlib.sha256(big.read_bytes()).hexdigest() in listing.stdout
    assert sorted(listing.stdout.splitlines()[1:]) == ["big.bin", "it's odd.txt"]
    host.run("rm -rf .skyward/no-sftp")


def test_a_failed_fallback_says_what_is_missing(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    host = ssh_hosts(1)[0]
    file = tmp_path / "f.txt"
    file.write_text("x")
    with host.without_sftp():
        conn = _connection(host, ssh_client_key, ssh_known_hosts)
        try:
            with pytest.raises(ConnectError, match="no SFTP subsystem") as caught:
                conn.upload([file], "/proc/skyward-cannot-be-here")
        finally:
            conn.close()
    assert "Subsystem sftp" in str(caught.value)
    assert host.target in str(caught.value)


def test_a_pool_starts_on_a_host_without_sftp(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host = ssh_hosts(1)[0]
    host.run("rm -rf .skyward/wheels .skyward/bin")  # so the bootstrap must upload
    provider = ssh_provider([host], ssh_client_key, ssh_known_hosts)
    with host.without_sftp(), sky.ComputePool(provider=provider, display="quiet") as pool:
        assert square(7) >> pool == 49
    assert host.run("ls .skyward/wheels").stdout.strip()
