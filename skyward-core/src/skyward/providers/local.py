"""``sky.Local``: the embedded provider. Each node is a process tree on this machine.

Every node gets its own working directory and its own agent process (in its own session,
so stopping a node stops everything it started). Offers cost nothing. It registers through
``register_providers`` like any third-party provider.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import psutil
from attrs import define, field, frozen

from skyward.agent_process import (
    INSTANCE_ID_ENV,
    POOL_ID_ENV,
    AgentProcess,
    connect_loopback,
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
from skyward.provider import (
    AgentConfig,
    AgentEndpoint,
    BootstrapReporter,
    Infrastructure,
    Instance,
    InstanceState,
    LaunchRequest,
    Provider,
    ProviderConfig,
    Stream,
    running_unless,
)
from skyward.providers.local_env import default_cache_dir, ensure_environment
from skyward.spec import ComputeSpec

__all__ = ["Local"]


@frozen
class Local:
    """Run a pool's nodes as processes on this machine: no account, no cost.

    :param root: where node working directories go; a fresh temporary directory per
        pool when ``None`` (removed at teardown).
    :param cache_dir: where image environments are cached
        (default ``~/.cache/skyward/local``).
    """

    root: str | None = None
    cache_dir: str | None = None
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


def _free_port() -> int:
    """The first of ``RENDEZVOUS_PORTS`` consecutive ports that are all free right now."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base: int = sock.getsockname()[1]
        if base + RENDEZVOUS_PORTS <= 65536 and all(
            _bindable(port) for port in range(base, base + RENDEZVOUS_PORTS)
        ):
            return base
    raise ProvisioningError("local", f"found no {RENDEZVOUS_PORTS} consecutive free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@define
class LocalProvider:
    config: Local
    cache_dir: Path
    name: str = "local"
    _processes: dict[str, AgentProcess] = field(factory=dict)
    _terminated: set[str] = field(factory=set)
    _lock: threading.Lock = field(factory=threading.Lock)

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        if spec.accelerator is not None:
            return []  # this machine's accelerators are not managed by Skyward
        if spec.machine not in (None, "local"):
            return []
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
        if self.config.root is None:
            root, owns = Path(tempfile.mkdtemp(prefix=f"skyward-{pool_id}-")), True
        else:
            root, owns = Path(self.config.root) / pool_id, False
            root.mkdir(parents=True, exist_ok=True)
        return LocalInfrastructure(
            region="local", head_port=_free_port(), root=root, owns_root=owns
        )

    def launch(self, infra: Infrastructure, request: LaunchRequest) -> Sequence[Instance]:
        assert isinstance(infra, LocalInfrastructure)
        instances = []
        for node in range(request.count):
            instance_id = f"{request.pool_id}-node{node}"
            (infra.root / f"node{node}").mkdir(parents=True, exist_ok=True)
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
                )
            )
        return found

    def connect(self, infra: Infrastructure, instance: Instance) -> LocalTransport:
        assert isinstance(infra, LocalInfrastructure)
        node_dir = infra.root / instance.id.rsplit("-", 1)[-1]
        pool_id = instance.tags.get("skyward:pool", "")

        def register(agent: AgentProcess) -> None:
            with self._lock:
                self._processes[instance.id] = agent

        return LocalTransport(self.cache_dir, node_dir, pool_id, instance.id, register)

    def teardown(self, infra: Infrastructure) -> None:
        assert isinstance(infra, LocalInfrastructure)
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
    python: str = ""
    agent: AgentProcess | None = None
    oom_at_start: int | None = None

    def bootstrap(self, image: Image, reporter: BootstrapReporter) -> None:
        self.python = ensure_environment(image, self.cache_dir, reporter)

    def start_agent(self, config: AgentConfig) -> AgentEndpoint:
        self.oom_at_start = oom_kills()
        self.agent = start_agent_process(
            self.python,
            config,
            cwd=self.node_dir,
            pool_id=self.pool_id,
            instance_id=self.instance_id,
        )
        self.on_start(self.agent)
        return self.agent.endpoint

    def open_stream(self, endpoint: AgentEndpoint) -> Stream:
        return connect_loopback(endpoint.port)

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
