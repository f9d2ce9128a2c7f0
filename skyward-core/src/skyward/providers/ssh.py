"""``sky.SSH``: machines you already have, reached over SSH.

Node *i* of a pool is the *i*-th host. Host keys are checked against your known_hosts.
Teardown stops the agent and removes only the pool's own directory under
``~/.skyward``; the machine is never powered off, and the image caches stay so the next
pool starts fast.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from attrs import define, field, frozen

from skyward.errors import ConfigurationError
from skyward.hookspecs import hookimpl
from skyward.offers import Offer
from skyward.provider import (
    POOL_TAG,
    Infrastructure,
    Instance,
    InstanceState,
    LaunchRequest,
    Leftover,
    Provider,
    ProviderConfig,
    running_unless,
)
from skyward.spec import ComputeSpec
from skyward.ssh.hosts import SSHHost, parse_host

if TYPE_CHECKING:
    from skyward.ssh.connection import SSHConnection
    from skyward.ssh.leftovers import HostScan
    from skyward.ssh.transport import SSHTransport

__all__ = ["SSH"]


def _hosts(value: object) -> tuple[SSHHost, ...]:
    if isinstance(value, str | SSHHost):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise ConfigurationError(
            "hosts", "no hosts given", 'Use e.g. SSH(hosts=["ubuntu@10.0.0.5"])'
        )
    return tuple(parse_host(v) for v in value)


def _path(name: str, value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ConfigurationError(
            name, f"{value!r} is not a file path", f'Use e.g. {name}="~/.ssh/{name}"'
        )
    return value


def _paths(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        return (_path("known_hosts", value),)
    if not isinstance(value, Sequence) or isinstance(value, bytes):
        raise ConfigurationError(
            "known_hosts",
            f"{value!r} is not a path or a list of paths",
            'Use e.g. known_hosts="~/.ssh/known_hosts"',
        )
    return tuple(_path("known_hosts", item) for item in value) or None


def _optional_path(value: object) -> str | None:
    return None if value is None else _path("ssh_config", value)


# A day: longer than any boot, short enough that a typo (ms for s) is caught.
MAX_CONNECT_TIMEOUT = 86_400.0


def _seconds(field_name: str, most: float) -> Callable[[object, object, float], None]:
    def check(_: object, __: object, value: float) -> None:
        # NaN passes every comparison: "not 0 < nan <= most" is what catches it.
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= most:
            raise ConfigurationError(
                field_name,
                f"{value!r} is not a number of seconds in (0, {most:g}]",
                "Use seconds, e.g. 60",
            )

    return check


@frozen
class SSH:
    """Run a pool on machines you already own.

    :param hosts: ``"user@host:port"`` strings or :class:`SSHHost` objects (identity file,
        user, port, jump host); ``~/.ssh/config`` aliases work where paramiko reads them.
    :param known_hosts: files trusted host keys are read from (default: your
        ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``).
    :param connect_timeout: how long to keep retrying a host before giving up, seconds.
    :param ssh_config: an ssh_config file to resolve aliases with (default ``~/.ssh/config``).
    """

    hosts: tuple[SSHHost, ...] = field(converter=_hosts)
    known_hosts: tuple[str, ...] | None = field(default=None, converter=_paths)
    connect_timeout: float = field(
        default=60.0, validator=_seconds("connect_timeout", MAX_CONNECT_TIMEOUT)
    )
    ssh_config: str | None = field(default=None, converter=_optional_path)
    provider_name: ClassVar[str] = "ssh"

    def validate(self, spec: ComputeSpec) -> None:
        if spec.nodes > len(self.hosts):
            raise ConfigurationError(
                "nodes",
                f"the pool asks for {spec.nodes} nodes but SSH has {len(self.hosts)} host(s)",
                "Add hosts to SSH(hosts=[...]) or lower nodes",
            )
        if spec.volumes:
            raise ConfigurationError(
                "volumes",
                "the SSH provider does not create volumes on your machines",
                "Mount what you need on the hosts yourself",
            )

    def create(self) -> Provider:
        return SSHProvider(self)


@define
class SSHProvider:
    config: SSH
    name: str = "ssh"
    _hosts: dict[str, SSHHost] = field(factory=dict)
    _spec: ComputeSpec | None = None
    _terminated: set[str] = field(factory=set)
    _lock: threading.Lock = field(factory=threading.Lock)
    _unreachable: dict[str, str] = field(factory=dict)

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        accelerator = spec.accelerator
        return [
            Offer(
                provider=self.name,
                instance_type="ssh",
                vcpus=0,
                memory_gb=0,
                # The hosts are the user's: trust what the pool says they have.
                accelerator=accelerator.name if accelerator else None,
                accelerator_count=accelerator.count if accelerator else 0,
                region="ssh",
                price_on_demand=0.0,
            )
        ]

    def prepare(self, spec: ComputeSpec, pool_id: str) -> Infrastructure:
        self._spec = spec
        return Infrastructure(region="ssh")

    def launch(self, infra: Infrastructure, request: LaunchRequest) -> Sequence[Instance]:
        instances = []
        ssh_config = Path(self.config.ssh_config) if self.config.ssh_config else None
        for node, host in enumerate(self.config.hosts[: request.count]):
            resolved = host.resolved(ssh_config)
            instance_id = f"{request.pool_id}-node{node}"
            self._hosts[instance_id] = resolved
            instances.append(
                Instance(
                    id=instance_id,
                    provider=self.name,
                    state=InstanceState.RUNNING,
                    instance_type="ssh",
                    ip=resolved.host,
                    private_ip=resolved.host,
                    region="ssh",
                    price_on_demand=0.0,
                    tags=dict(request.tags),
                )
            )
        return instances

    def describe(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        with self._lock:
            gone = set(self._terminated)
        return running_unless(instances, gone)

    def terminate(self, instances: Sequence[Instance]) -> None:
        # Never power off a user's machine: the transports already stopped the agents.
        for instance in instances:
            if "pid" in instance.tags and instance.id in self._hosts:
                from skyward.ssh.transport import stop_group_command

                connection = self._connection(self._hosts[instance.id])
                try:
                    connection.run(stop_group_command(int(instance.tags["pid"])), timeout=30)
                finally:
                    connection.close()
            with self._lock:
                self._terminated.add(instance.id)

    def list_by_tag(self, pool_id: str | None = None) -> Sequence[Instance]:
        """Agents left on the hosts (of one pool, or any), found by their ``--job-id``.

        A host that cannot be reached is remembered and reported by
        :meth:`list_leftovers` (as a leftover that cannot be removed)."""
        found = []
        for host, scan in self._scan_hosts(self._sweep_hosts()):
            if scan is None:
                continue
            for pid, job in sorted(scan.agents.items()):
                if pool_id is not None and job != pool_id:
                    continue
                instance_id = f"{job}-{host.target}-{pid}"
                self._hosts[instance_id] = host
                found.append(
                    Instance(
                        id=instance_id,
                        provider=self.name,
                        state=InstanceState.RUNNING,
                        ip=host.host,
                        tags={POOL_TAG: job, "pid": str(pid)},
                    )
                )
        return found

    def list_leftovers(self, pool_id: str | None = None) -> list[Leftover]:
        """Node directories (``~/.skyward/pools/<pool>``) of pools with no live agent on
        their host, and the hosts that could not be looked at."""
        from skyward.ssh.leftovers import POOLS_DIR

        found = [
            Leftover(kind="unreachable-host", id=target, where=target)
            for target in sorted(self._unreachable)
        ]
        reachable = [h for h in self._sweep_hosts() if h.target not in self._unreachable]
        for host, scan in self._scan_hosts(reachable):
            if scan is None:
                found.append(Leftover(kind="unreachable-host", id=host.target, where=host.target))
                continue
            for name in scan.dead_pool_dirs(pool_id=pool_id):
                found.append(
                    Leftover(
                        kind="node-dir", id=f"~/{POOLS_DIR}/{name}", where=host.target, pool=name
                    )
                )
        return found

    def remove_leftovers(self, leftovers: Sequence[Leftover]) -> list[tuple[Leftover, str]]:
        from skyward.ssh.leftovers import remove_pool_dirs

        failed: list[tuple[Leftover, str]] = []
        hosts = {host.target: host for host in self._sweep_hosts()}
        by_host: dict[str, list[Leftover]] = {}
        for leftover in leftovers:
            if leftover.kind == "unreachable-host":
                reason = self._unreachable.get(leftover.id, "unreachable")
                failed.append((leftover, f"could not look at the host: {reason}"))
            elif leftover.kind == "node-dir" and leftover.where in hosts:
                by_host.setdefault(leftover.where, []).append(leftover)
            else:
                failed.append((leftover, "not something the SSH provider made"))
        for target, items in by_host.items():
            connection = self._connection(hosts[target])
            try:
                problem = remove_pool_dirs(connection, [item.pool for item in items])
            except Exception as error:
                problem = str(error)
            finally:
                connection.close()
            if problem:
                failed.extend((item, problem) for item in items)
        return failed

    def _scan_hosts(self, hosts: list[SSHHost]) -> list[tuple[SSHHost, HostScan | None]]:
        """Scan every host at once (a sweep of many machines waits for the slowest, not
        the sum); an unreachable host scans as ``None`` and is remembered with why."""
        from concurrent.futures import ThreadPoolExecutor

        from skyward.ssh.leftovers import scan_host

        def scan(host: SSHHost) -> HostScan | None:
            connection = self._connection(host)
            try:
                return scan_host(connection)
            except Exception as error:
                with self._lock:
                    self._unreachable[host.target] = str(error)
                return None
            finally:
                connection.close()

        if not hosts:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as executor:
            return list(zip(hosts, executor.map(scan, hosts), strict=True))

    def _sweep_hosts(self) -> list[SSHHost]:
        ssh_config = Path(self.config.ssh_config) if self.config.ssh_config else None
        return [host.resolved(ssh_config) for host in self.config.hosts]

    def _connection(self, host: SSHHost) -> SSHConnection:
        from skyward.ssh.connection import SSHConnection
        from skyward.ssh.keys import KnownHosts

        verifier = (
            KnownHosts(tuple(Path(p) for p in self.config.known_hosts))
            if self.config.known_hosts
            else KnownHosts()
        )
        return SSHConnection(
            host, verifier, connect_timeout=self.config.connect_timeout, provider=self.name
        )

    def connect(self, infra: Infrastructure, instance: Instance) -> SSHTransport:
        from skyward.ssh.transport import SSHTransport

        return SSHTransport(
            self._connection(self._hosts[instance.id]),
            pool_id=instance.tags.get(POOL_TAG, ""),
            name=instance.id.rsplit("-", 1)[1],
            spec=self._spec,
        )

    def teardown(self, infra: Infrastructure) -> None:
        return None


@hookimpl
def register_providers(register: Callable[[type[ProviderConfig]], None]) -> None:
    register(SSH)
