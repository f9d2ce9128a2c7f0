"""Host parsing, ssh_config aliases, keys, pinned host keys, and cloud user-data."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import paramiko
import pytest

import skyward as sky
from skyward.errors import ConfigurationError, HostKeyError
from skyward.ssh.connection import SSHConnection
from skyward.ssh.hosts import SSHHost, parse_host
from skyward.ssh.keys import KnownHosts, PinnedHostKey, fingerprint, generate_keypair
from skyward.ssh.user_data import NodeIdentity, user_data_script
from tests.ssh_hosts import ClientKey


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", SSHHost("host")),
        ("ubuntu@10.0.0.5", SSHHost("10.0.0.5", user="ubuntu")),
        ("ubuntu@10.0.0.5:2222", SSHHost("10.0.0.5", user="ubuntu", port=2222)),
        ("box:22", SSHHost("box", port=22)),
        ("me@[::1]:2200", SSHHost("::1", user="me", port=2200)),
    ],
)
def test_parse_host(text: str, expected: SSHHost) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize("bad", ["", "a@b@c", "host:port", "host:99999", "user@"])
def test_bad_host_strings_name_the_field(bad: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_host(bad)
    assert caught.value.field == "hosts"


def test_ssh_config_alias_is_resolved(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host gpu-box\n  HostName 127.0.0.42\n  User alice\n  Port 2200\n"
        "  IdentityFile ~/.ssh/id_gpu\n  ProxyJump bastion@127.0.0.43:2201\n"
    )
    resolved = SSHHost("gpu-box").resolved(config)
    assert resolved.host == "127.0.0.42"
    assert resolved.user == "alice"
    assert resolved.port == 2200
    assert resolved.identity_file is not None
    assert resolved.identity_file.endswith(".ssh/id_gpu")
    assert resolved.jump is not None
    assert (resolved.jump.host, resolved.jump.user, resolved.jump.port) == (
        "127.0.0.43",
        "bastion",
        2201,
    )
    explicit = SSHHost("gpu-box", user="bob", port=22).resolved(config)
    assert (explicit.user, explicit.port) == ("bob", 22), "given values win over the config"


def test_ssh_provider_validation() -> None:
    with pytest.raises(ConfigurationError, match="hosts"):
        sky.SSH(hosts=[])
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        sky.SSH(hosts=["a@b"], connect_timeout=0)
    with pytest.raises(ConfigurationError, match="volumes"):
        sky.ComputePool(
            provider=sky.SSH(hosts=["a@b"]), volumes=[sky.Volume(size_gb=1, mount_path="/d")]
        )


def test_generated_keys_and_fingerprints() -> None:
    pair = generate_keypair("test")
    assert pair.public_line.startswith("ssh-ed25519 ")
    assert pair.public_line.endswith(" test")
    key = pair.pkey()
    assert isinstance(key, paramiko.Ed25519Key)
    assert fingerprint(key).startswith("SHA256:")
    assert "PRIVATE" not in repr(pair)
    assert generate_keypair().public_line != generate_keypair().public_line


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    pair = generate_keypair()
    path = tmp_path / "key.pub"
    path.write_text(pair.public_line + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True
    )
    assert fingerprint(pair.pkey()) in out.stdout


def _connect(host: Any, key: ClientKey, verifier: Any) -> SSHConnection:
    conn = SSHConnection(
        SSHHost(host.address, user=host.user, port=host.port, identity_file=str(key.private_path)),
        verifier,
        connect_timeout=5,
    )
    conn.ensure()
    return conn


def test_pinned_host_key_connects_and_a_wrong_pin_is_refused(
    ssh_hosts: Any, ssh_client_key: ClientKey
) -> None:
    host = ssh_hosts(1)[0]
    conn = _connect(host, ssh_client_key, PinnedHostKey(host.host_key_public))
    try:
        assert conn.run("echo pinned-ok").output.strip() == "pinned-ok"
    finally:
        conn.close()
    with pytest.raises(HostKeyError, match="pinned"):
        _connect(host, ssh_client_key, PinnedHostKey(generate_keypair().public_line))


def test_known_hosts_verifier_accepts_the_right_key(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host = ssh_hosts(1)[0]
    conn = _connect(host, ssh_client_key, KnownHosts((ssh_known_hosts,)))
    try:
        assert conn.run("id -un").output.strip() == host.user
    finally:
        conn.close()


def test_jump_host(ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path) -> None:
    bastion, target = ssh_hosts(2)
    key = str(ssh_client_key.private_path)
    host = SSHHost(
        target.address,
        user=target.user,
        port=target.port,
        identity_file=key,
        jump=SSHHost(bastion.address, user=bastion.user, port=bastion.port, identity_file=key),
    )
    conn = SSHConnection(host, KnownHosts((ssh_known_hosts,)), connect_timeout=5)
    try:
        assert conn.run("id -un").output.strip() == target.user
    finally:
        conn.close()


def test_user_data_installs_keys_and_arms_the_timer(tmp_path: Path) -> None:
    identity = NodeIdentity.for_pool(2, "sky-test")[0]
    script = user_data_script(identity, username="ubuntu", ttl_seconds=1)
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    marker = tmp_path / "powered-off"
    env = {"SKYWARD_ROOT": str(tmp_path / "root"), "SKYWARD_POWEROFF_CMD": f"touch {marker}",
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    subprocess.run(["sh"], input=script, text=True, check=True, env=env)
    root = tmp_path / "root"
    host_key = root / "etc/ssh/ssh_host_ed25519_key"
    assert host_key.read_text() == identity.host.private_openssh
    assert stat.S_IMODE(host_key.stat().st_mode) == 0o600
    authorized = root / "home/ubuntu/.ssh/authorized_keys"
    assert identity.client.public_line in authorized.read_text()
    from tests.conftest import wait_until

    assert wait_until(marker.exists, 5), "the self-destruct timer fired"
    assert identity.verifier().public_line == identity.host.public_line
