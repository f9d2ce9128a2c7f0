"""Fixtures shared by every test module.

Helpers that find leftover node agents live here so every teardown test asks the same
question the same way: is any ``skyward.agent`` process of this pool still alive?
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import skyward as sky
from skyward import plugins


def agent_processes(pool_id: str | None = None) -> list[psutil.Process]:
    """Live agent processes (of one pool, or of any pool)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if "skyward.agent" not in (process.info["cmdline"] or []):
                continue
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            owner = process.environ().get("SKYWARD_POOL_ID")
        except psutil.Error:
            continue
        if pool_id is None or owner == pool_id:
            found.append(process)
    return found


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """(writer side, reader side) of a connected socket pair, with a timeout."""
    a, b = socket.socketpair()
    a.settimeout(20)
    b.settimeout(20)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def events() -> list[Any]:
    """A list that a pool's ``on_event`` can append to."""
    return []


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """A fresh plugin manager for the test, and again after it."""
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def local_pool_factory() -> Iterator[Callable[..., sky.ComputePool]]:
    """Make quiet Local pools; fails the test if any leaves an agent behind."""
    made: list[sky.ComputePool] = []

    def make(**options: Any) -> sky.ComputePool:
        options.setdefault("display", "quiet")
        pool = sky.ComputePool(provider=options.pop("provider", sky.Local()), **options)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()
        if pool.pool_id:
            assert wait_until(lambda p=pool: not agent_processes(p.pool_id), 10), (
                f"agents of {pool.pool_id} still alive"
            )


@pytest.fixture(autouse=True, scope="session")
def _quick_metrics() -> Iterator[None]:
    os.environ.setdefault("SKYWARD_METRICS_INTERVAL", "0.5")
    return


# -- real SSH test hosts (see tests/ssh_hosts.py) ------------------------------------------

from pathlib import Path  # noqa: E402

from tests.ssh_hosts import ClientKey, HostFarm, NamespaceHost, SSHTestHost  # noqa: E402


@pytest.fixture(scope="session")
def ssh_client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    """The client's ed25519 key pair, authorized on every test host."""
    return ClientKey.create(tmp_path_factory.mktemp("ssh-client-key"))


@pytest.fixture(scope="session")
def ssh_farm(ssh_client_key: ClientKey) -> Iterator[HostFarm]:
    """Loopback sshd hosts skyt<i>@127.0.0.<10+i>:2222, grown on demand; all stopped at the end."""
    farm = HostFarm(ssh_client_key)
    yield farm
    farm.stop()


@pytest.fixture
def ssh_hosts(ssh_farm: HostFarm) -> Iterator[Callable[[int], list[SSHTestHost]]]:
    """``ssh_hosts(n)``: n running hosts; afterwards their user processes are killed
    (``~/.skyward`` caches stay)."""
    used: list[SSHTestHost] = []

    def hosts(n: int) -> list[SSHTestHost]:
        found = ssh_farm.ensure(n)
        used.extend(host for host in found if host not in used)
        return found

    yield hosts
    for host in used:
        host.kill_processes()


@pytest.fixture(scope="session")
def ssh_known_hosts(ssh_farm: HostFarm) -> Path:
    """A known_hosts file naming every farm host (kept current as the farm grows)."""
    return ssh_farm.known_hosts_path


@pytest.fixture
def netns_host(ssh_client_key: ClientKey) -> Iterator[NamespaceHost]:
    """An sshd host in a fresh network namespace at 169.254.213.2:2222, closed afterwards."""
    host = NamespaceHost.open(ssh_client_key)
    yield host
    host.close()


# -- AWS fakes: moto's server and a Price List endpoint (see tests/aws_fakes.py) -----------

from tests.aws_fakes import AwsEnv, MotoServer, PricingServer  # noqa: E402


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's server on 127.0.0.1:<free port>, recording calls; stopped at the end."""
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pricing_server() -> Iterator[PricingServer]:
    """The fake AWS Price List API on 127.0.0.1:<free port>, default price table."""
    server = PricingServer().start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(
    moto_server: MotoServer,
    pricing_server: PricingServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[AwsEnv]:
    """Fresh moto state and pricing table, public AMI parameters in us-east-1 and us-west-2,
    and an environment in which boto3 reaches only the fakes."""
    moto_server.reset()
    pricing_server.reset()
    regions = ("us-east-1", "us-west-2")
    amis = {region: moto_server.seed_public_parameters(region) for region in regions}
    moto_server.seed_managed_policies("AmazonSSMManagedInstanceCore")
    moto_server.reset_calls()
    for name in list(os.environ):
        if name.startswith(("AWS_ENDPOINT_URL_", "AWS_PROFILE", "AWS_SESSION_TOKEN")):
            monkeypatch.delenv(name)
    for name in ("AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    cache_dir = tmp_path / "skyward-cache"
    cache_dir.mkdir()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", pricing_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials-absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SKYWARD_CACHE_DIR", str(cache_dir))
    yield AwsEnv(moto=moto_server, pricing=pricing_server, amis=amis, cache_dir=cache_dir)
    moto_server.reset_calls()
