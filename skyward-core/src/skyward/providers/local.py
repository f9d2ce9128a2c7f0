"""``sky.Local``: the embedded provider. Each node is a process tree on this machine.

Every node gets its own working directory and its own agent process (in its own session,
so stopping a node stops everything it started). Offers cost nothing. It registers through
``register_providers`` like any third-party provider.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import psutil
from attrs import define, evolve, field, frozen

from skyward.agent_process import (
    INSTANCE_ID_ENV,
    POOL_ID_ENV,
    AgentProcess,
    connect_endpoint,
    start_agent_process,
    stop_orphan_group,
    stop_process_group,
)
from skyward.cluster import RENDEZVOUS_PORTS
from skyward.errors import ConfigurationError, ProvisioningError
from skyward.exit_status import describe_exit, oom_kills
from skyward.hookspecs import hookimpl
from skyward.image import Image
from skyward.offers import Offer
from skyward.port_reservation import PortReservation, reserve_ports
from skyward.provider import (
    POOL_TAG,
    AgentConfig,
    AgentEndpoint,
    BootstrapReporter,
    Infrastructure,
    Instance,
    InstanceState,
    LaunchRequest,
    Leftover,
    Provider,
    ProviderConfig,
    Stream,
    running_unless,
)
from skyward.providers.local_env import default_cache_dir, ensure_environment
from skyward.providers.local_gpus import gpu_offer, node_device_shares
from skyward.providers.local_leftovers import TEMP_PREFIX, dead_pool_dirs, write_pool_marker
from skyward.spec import ComputeSpec

__all__ = ["Local"]

_UNIX_PATH_MAX = 100  # sun_path holds 108 bytes; a deeper root falls back to 127.0.0.1


def _path_or_none(name: str, value: object) -> str | None:
    """A directory given as ``str`` or ``os.PathLike`` (kept as ``str``), or ``None``."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ConfigurationError(
            name, f"{value!r} is not a directory path", f'Use e.g. {name}="/tmp/skyward"'
        )
    return value


def _root(value: object) -> str | None:
    return _path_or_none("root", value)


def _cache_dir(value: object) -> str | None:
    return _path_or_none("cache_dir", value)


@frozen
class Local:
    """Run a pool's nodes as processes on this machine: no account, no cost.

    :param root: where node working directories go; a fresh temporary directory per
        pool when ``None`` (removed at teardown).
    :param cache_dir: where image environments are cached
        (default ``~/.cache/skyward/local``).
    """

    root: str | None = field(default=None, converter=_root)
    cache_dir: str | None = field(default=None, converter=_cache_dir)
    provider_name: ClassVar[str] = "local"

    def validate(self, spec: ComputeSpec) -> None:
        if spec.volumes:
            raise ConfigurationError(
                "volumes",
                "the Local provider cannot mount volumes",
                "Read local paths directly, or use a cloud provider for volumes",
            )

    def create(self) -> Provider:
        cache = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        return LocalProvider(self, cache)


@frozen
class LocalInfrastructure(Infrastructure):
    root: Path = Path()
    owns_root: bool = False
    ports: PortReservation | None = field(default=None, eq=False, repr=False)
    """The rendezvous ports (``head_port`` onwards), held bound by this process until
    teardown, so nothing else on this machine gets them before a framework binds one."""


@define
class LocalProvider:
    config: Local
    cache_dir: Path
    name: str = "local"
    _processes: dict[str, AgentProcess] = field(factory=dict)
    _terminated: set[str] = field(factory=set)
    _devices: dict[str, str | None] = field(factory=dict)
    """Each node's CUDA_VISIBLE_DEVICES (its share of this machine's GPUs), by instance id."""
    _lock: threading.Lock = field(factory=threading.Lock)

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        if spec.machine not in (None, "local"):
            return []
        if spec.accelerator is not None:
            # This machine's NVIDIA GPUs (local_gpus); any other accelerator: no offer.
            return gpu_offer(spec, self.name)
        return [
            Offer(
                provider=self.name,
                instance_type="local",
                vcpus=os.cpu_count() or 1,
                memory_gb=psutil.virtual_memory().total / 2**30,
                region="local",
                price_on_demand=0.0,
                price_spot=None,
            )
        ]

    def prepare(self, spec: ComputeSpec, pool_id: str) -> Infrastructure:
        # Housekeeping first (cheap: one directory listing): what SIGKILLed clients left.
        self.remove_leftovers(self.list_leftovers())
        if self.config.root is None:
            root, owns = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{pool_id}-")), True
            write_pool_marker(root, pool_id)
        else:  # the user's directory: kept after the pool, never swept
            root, owns = Path(self.config.root) / pool_id, False
            root.mkdir(parents=True, exist_ok=True)
        try:
            ports = reserve_ports(RENDEZVOUS_PORTS)
        except OSError as error:
            if owns:
                shutil.rmtree(root, ignore_errors=True)
            raise ProvisioningError("local", f"no rendezvous ports: {error}") from error
        return LocalInfrastructure(
            region="local", head_port=ports.base, root=root, owns_root=owns, ports=ports
        )

    def launch(self, infra: Infrastructure, request: LaunchRequest) -> Sequence[Instance]:
        assert isinstance(infra, LocalInfrastructure)
        shares = node_device_shares(request.spec, request.count)
        instances = []
        for node in range(request.count):
            instance_id = f"{request.pool_id}-node{node}"
            (infra.root / f"node{node}").mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._devices[instance_id] = shares[node]
            instances.append(
                Instance(
                    id=instance_id,
                    provider=self.name,
                    state=InstanceState.RUNNING,
                    instance_type="local",
                    ip="127.0.0.1",
                    private_ip="127.0.0.1",
                    region="local",
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
        for instance in instances:
            with self._lock:
                agent = self._processes.pop(instance.id, None)
                self._terminated.add(instance.id)
            if agent is not None:
                stop_process_group(agent.process)
            elif "pid" in instance.tags:  # an orphan found by list_by_tag
                stop_orphan_group(int(instance.tags["pid"]))

    def list_by_tag(self, pool_id: str | None = None) -> Sequence[Instance]:
        """Agent processes of this user that belong to a pool (any pool when ``None``)."""
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = process.info["cmdline"] or []
                if "skyward.agent" not in cmdline:
                    continue
                environ = process.environ()
            except psutil.Error:
                continue
            owner = environ.get(POOL_ID_ENV)
            if owner is None or (pool_id is not None and owner != pool_id):
                continue
            found.append(
                Instance(
                    id=environ.get(INSTANCE_ID_ENV, str(process.pid)),
                    provider=self.name,
                    state=InstanceState.RUNNING,
                    instance_type="local",
                    ip="127.0.0.1",
                    tags={"skyward:pool": owner, "pid": str(process.pid)},
                    launched_at=process.create_time(),
                    price_on_demand=0.0,
                )
            )
        return found

    def list_leftovers(self, pool_id: str | None = None) -> list[Leftover]:
        """Temporary pool directories whose client is dead and whose agents are gone
        (directories under a ``root`` the user chose are theirs to keep)."""
        dead = [
            (path, pool)
            for path, pool in dead_pool_dirs([Path(tempfile.gettempdir())])
            if pool_id is None or pool == pool_id
        ]
        if not dead:
            return []  # the common case, and all a pool's open pays for
        live_pools = {i.tags.get(POOL_TAG, "") for i in self.list_by_tag()}
        return [
            Leftover(kind="node-dir", id=str(path), where="local", pool=pool)
            for path, pool in dead
            if pool not in live_pools
        ]

    def remove_leftovers(self, leftovers: Sequence[Leftover]) -> list[tuple[Leftover, str]]:
        failed: list[tuple[Leftover, str]] = []
        for leftover in leftovers:
            if leftover.kind != "node-dir":
                failed.append((leftover, "not something the Local provider made"))
                continue
            try:
                shutil.rmtree(leftover.id)
            except FileNotFoundError:
                continue
            except OSError as error:
                failed.append((leftover, str(error)))
        return failed

    def connect(self, infra: Infrastructure, instance: Instance) -> LocalTransport:
        assert isinstance(infra, LocalInfrastructure)
        node_dir = infra.root / instance.id.rsplit("-", 1)[-1]
        pool_id = instance.tags.get("skyward:pool", "")

        def register(agent: AgentProcess) -> None:
            with self._lock:
                self._processes[instance.id] = agent

        with self._lock:
            devices = self._devices.get(instance.id)
        return LocalTransport(
            self.cache_dir, node_dir, pool_id, instance.id, register, visible_devices=devices
        )

    def teardown(self, infra: Infrastructure) -> None:
        assert isinstance(infra, LocalInfrastructure)
        if infra.ports is not None:
            infra.ports.release()
        if infra.owns_root:
            shutil.rmtree(infra.root, ignore_errors=True)


@define
class LocalTransport:
    """Bootstrap = build (or reuse) the image's venv; agent = a local process."""

    cache_dir: Path
    node_dir: Path
    pool_id: str
    instance_id: str
    on_start: Callable[[AgentProcess], None]
    visible_devices: str | None = None
    """CUDA_VISIBLE_DEVICES of the agent (and so of its workers): this node's GPUs;
    ``None`` leaves the client's environment as it is."""
    python: str = ""
    agent: AgentProcess | None = None
    oom_at_start: int | None = None

    def bootstrap(self, image: Image, reporter: BootstrapReporter) -> None:
        self.python = ensure_environment(image, self.cache_dir, reporter)

    def start_agent(self, config: AgentConfig) -> AgentEndpoint:
        self.oom_at_start = oom_kills()
        # This machine is the client's own: a socket only this user can open, and the
        # key on top (another session of the same user still has to prove it).
        socket_path = self.node_dir / "agent" / "sock"
        if len(str(socket_path)) < _UNIX_PATH_MAX:
            config = evolve(config, unix_socket=str(socket_path))
        base_env = None
        if self.visible_devices is not None:
            # In the agent's own environment, not config.env (the functions' variables):
            # the pool's env may still override it, as a user's choice.
            base_env = {
                **os.environ,
                "CUDA_VISIBLE_DEVICES": self.visible_devices,
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            }
        self.agent = start_agent_process(
            self.python,
            config,
            cwd=self.node_dir,
            pool_id=self.pool_id,
            instance_id=self.instance_id,
            base_env=base_env,
        )
        self.on_start(self.agent)
        return self.agent.endpoint

    def open_stream(self, endpoint: AgentEndpoint) -> Stream:
        return connect_endpoint(endpoint)

    def agent_exit_cause(self) -> str | None:
        """Why the agent process ended (``None`` while it runs)."""
        if self.agent is None:
            return None
        return describe_exit(self.agent.process.poll(), self.node_dir, self.oom_at_start)

    def close(self) -> None:
        if self.agent is not None:
            stop_process_group(self.agent.process)


@hookimpl
def register_providers(register: Callable[[type[ProviderConfig]], None]) -> None:
    register(Local)
