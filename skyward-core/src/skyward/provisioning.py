"""From a spec to a running cluster of node agents, and back to nothing.

:func:`provision` tries providers (selector's choice first, then the rest in order) and
their offers (best first); a :class:`~skyward.errors.CapacityError` moves to the next
offer, any other failure to the next provider. Whatever a failed attempt created is torn
down before the next attempt starts. :class:`Cluster` owns what succeeded and tears it
down exactly once, on every exit path.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from attrs import define, field

from skyward import selection
from skyward.env_settings import env_seconds
from skyward.errors import (
    AllProvidersFailedError,
    CapacityError,
    NoAvailableProviderError,
    ProvisioningError,
)
from skyward.events import (
    BootstrapCompleted,
    BootstrapProgress,
    BootstrapStarting,
    Error,
    InfraCreated,
    InfraCreating,
    InstanceLaunching,
    InstanceProvisioned,
    InstanceStopping,
    LogLine,
    SkywardEvent,
)
from skyward.node import NodeClient, send_heartbeats
from skyward.offers import Offer
from skyward.provider import (
    MANAGED_TAG,
    POOL_TAG,
    AgentConfig,
    Infrastructure,
    Instance,
    InstanceState,
    LaunchRequest,
    NodeTransport,
    Provider,
    ProviderConfig,
)
from skyward.spec import ComputeSpec

__all__ = ["AgentSettings", "Cluster", "provision"]

_log = logging.getLogger("skyward.provisioning")

Emit = Callable[[SkywardEvent], None]
T = TypeVar("T")

HEARTBEAT_TIMEOUT_ENV = "SKYWARD_HEARTBEAT_TIMEOUT"
METRICS_INTERVAL_ENV = "SKYWARD_METRICS_INTERVAL"


@define(frozen=True)
class AgentSettings:
    """Knobs of the agents a pool starts (not part of the public pool parameters)."""

    heartbeat_timeout: float = 30.0
    """An agent that hears nothing for this long exits (and powers a cloud node off)."""
    metrics_interval: float | None = 5.0
    ready_timeout: float = 600.0
    """How long instances may take to reach the running state."""
    deadline: float | None = None
    """``time.monotonic()`` at which the pool's ``timeout`` runs out (counted from open)."""

    @property
    def heartbeat_interval(self) -> float:
        return max(0.05, min(5.0, self.heartbeat_timeout / 4))

    @classmethod
    def from_env(cls, *, collect_metrics: bool) -> AgentSettings:
        """From ``SKYWARD_HEARTBEAT_TIMEOUT`` and ``SKYWARD_METRICS_INTERVAL``; a value that
        is not a finite positive number of seconds is a ``ConfigurationError``."""
        timeout = env_seconds(HEARTBEAT_TIMEOUT_ENV, 30.0)
        interval = env_seconds(METRICS_INTERVAL_ENV, 5.0)
        return cls(
            heartbeat_timeout=timeout, metrics_interval=interval if collect_metrics else None
        )


@define
class Cluster:
    """A provisioned pool: its provider, infrastructure, instances and node connections."""

    provider: Provider
    infra: Infrastructure
    emit: Emit
    instances: list[Instance] = field(factory=list)
    transports: list[NodeTransport] = field(factory=list)
    clients: list[NodeClient] = field(factory=list)
    budget_deadline: float | None = None
    """``time.monotonic()`` at which the pool's ``max_cost`` is spent at its hourly price."""
    _stop: threading.Event = field(factory=threading.Event)
    _closed: bool = False

    def lifetime_end(self, settings: AgentSettings) -> float | None:
        """When the pool must be gone: its timeout or its budget, whichever comes first."""
        ends = [t for t in (settings.deadline, self.budget_deadline) if t is not None]
        return min(ends) if ends else None

    def start_heartbeats(self, interval: float) -> None:
        threading.Thread(
            target=send_heartbeats,
            args=(self.clients, interval, self._stop),
            daemon=True,
            name="skyward-heartbeat",
        ).start()

    def shutdown(self, *, ready_timeout: float = 120.0) -> None:
        """Stop agents, terminate instances, wait until gone, tear down infra. Once."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        # Every node at once: each may wait a few seconds for its agent to flush and go.
        _each(self.clients, lambda client: client.close(), "closing a node client")
        for instance in self.instances:
            self.emit(InstanceStopping(instance.id))
        _each(self.transports, lambda transport: transport.close(), "closing a node transport")
        if self.instances:
            _quietly(lambda: self.provider.terminate(self.instances), "terminating instances")
            _quietly(lambda: self._wait_terminated(ready_timeout), "waiting for termination")
        _quietly(lambda: self.provider.teardown(self.infra), "tearing down infrastructure")

    def _wait_terminated(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.instances)
        while pending:
            pending = [
                i for i in self.provider.describe(pending) if i.state != InstanceState.TERMINATED
            ]
            if not pending:
                return
            if time.monotonic() > deadline:
                ids = ", ".join(i.id for i in pending)
                self.emit(Error(f"instances not terminated after {timeout:g}s: {ids}"))
                return
            time.sleep(0.2)


def _each(items: Sequence[T], action: Callable[[T], object], what: str) -> None:
    """``action`` on every item in parallel; one failing does not stop the others."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(len(items), 32)) as executor:
        for item in items:
            executor.submit(_quietly, functools.partial(action, item), what)


def _quietly(action: Callable[[], object], what: str) -> None:
    """Teardown keeps going when one step fails: every other resource still goes."""
    try:
        action()
    except Exception:
        _log.exception("error while %s", what)


def _wait_running(
    provider: Provider, instances: Sequence[Instance], timeout: float
) -> list[Instance]:
    deadline = time.monotonic() + timeout
    current = list(instances)
    while True:
        if all(i.state == InstanceState.RUNNING for i in current):
            return current
        if any(i.state == InstanceState.TERMINATED for i in current):
            raise ProvisioningError(provider.name, "an instance terminated while starting")
        if time.monotonic() > deadline:
            raise ProvisioningError(provider.name, f"instances not running after {timeout:g}s")
        time.sleep(0.5)
        current = list(provider.describe(current))


class _Reporter:
    def __init__(self, emit: Emit, node: int, instance_id: str) -> None:
        self._emit = emit
        self._node = node
        self._instance_id = instance_id

    def step(self, name: str, *, cached: bool = False) -> None:
        self._emit(BootstrapProgress(self._instance_id, name, cached))

    def log(self, line: str) -> None:
        self._emit(LogLine(self._node, self._instance_id, line, time.time()))


def _bring_up_node(
    cluster: Cluster,
    spec: ComputeSpec,
    pool_id: str,
    settings: AgentSettings,
    node: int,
    transport: NodeTransport,
) -> NodeClient:
    instance = cluster.instances[node]
    head = cluster.instances[0]
    emit = cluster.emit
    emit(BootstrapStarting(instance.id))
    transport.bootstrap(spec.image, _Reporter(emit, node, instance.id))
    accelerators: tuple[str, ...] = ()
    if spec.accelerator is not None:
        accelerators = (spec.accelerator.name,) * max(1, int(spec.accelerator.count))
    config = AgentConfig(
        node=node,
        total_nodes=spec.nodes,
        concurrency=spec.concurrency,
        executor=spec.executor,
        mig_profile=spec.accelerator.mig if spec.accelerator is not None else None,
        job_id=pool_id,
        head_addr=head.private_ip or head.ip or "127.0.0.1",
        head_port=cluster.infra.head_port,
        accelerators=accelerators,
        heartbeat_timeout=settings.heartbeat_timeout,
        lifetime=_agent_lifetime(cluster.lifetime_end(settings), float(spec.timeout)),
        metrics_interval=settings.metrics_interval,
        env={**spec.image.env, **spec.env},
        on_expire=cluster.infra.on_expire,
    )
    emit(BootstrapProgress(instance.id, "server"))
    endpoint = transport.start_agent(config)
    client = NodeClient(node, instance, transport, endpoint, emit, config)
    client.connect()
    emit(BootstrapCompleted(instance.id))
    return client


LIFETIME_GRACE = 15.0
"""Agents outlive the pool's end by this much, so the client (which reports the reason)
closes the pool first; the node's own limit is only the backstop for a dead client."""


def _agent_lifetime(end: float | None, fallback: float) -> float:
    """Seconds an agent starting now may live: until the pool's end, plus the grace."""
    if end is None:
        return fallback + LIFETIME_GRACE
    return max(1.0, end - time.monotonic()) + LIFETIME_GRACE


def _budget_deadline(spec: ComputeSpec, instances: Sequence[Instance]) -> float | None:
    """When ``max_cost`` is spent, with every instance billed at its launch price."""
    hourly = sum(i.hourly_price for i in instances)
    if spec.max_cost is None or hourly <= 0:
        return None
    return time.monotonic() + spec.max_cost / hourly * 3600.0


def _launch(
    provider: Provider,
    offer: Offer,
    spec: ComputeSpec,
    pool_id: str,
    settings: AgentSettings,
    emit: Emit,
) -> Cluster:
    emit(InfraCreating())
    infra = provider.prepare(spec, pool_id)
    cluster = Cluster(provider=provider, infra=infra, emit=emit)
    try:
        emit(InfraCreated(infra.region))
        emit(InstanceLaunching(spec.nodes, offer.instance_type, provider.name))
        tags = {MANAGED_TAG: "true", POOL_TAG: pool_id}
        request = LaunchRequest(
            pool_id=pool_id, offer=offer, count=spec.nodes, spec=spec, tags=tags
        )
        cluster.instances = list(provider.launch(infra, request))
        cluster.instances = _wait_running(provider, cluster.instances, settings.ready_timeout)
        # Metering starts with InstanceProvisioned (the cost tracker's clock), so does the budget.
        cluster.budget_deadline = _budget_deadline(spec, cluster.instances)
        for node, instance in enumerate(cluster.instances):
            emit(
                InstanceProvisioned(
                    instance_id=instance.id,
                    node=node,
                    spot=instance.spot,
                    provider=provider.name,
                    ip=instance.ip,
                    instance_type=instance.instance_type or offer.instance_type,
                    price_on_demand=instance.price_on_demand,
                    price_spot=instance.price_spot,
                )
            )
        cluster.transports = [provider.connect(infra, i) for i in cluster.instances]
        with ThreadPoolExecutor(max_workers=len(cluster.instances)) as executor:
            futures = [
                executor.submit(_bring_up_node, cluster, spec, pool_id, settings, node, transport)
                for node, transport in enumerate(cluster.transports)
            ]
            errors: list[BaseException] = []
            for future in futures:
                try:
                    cluster.clients.append(future.result())
                except BaseException as error:
                    if not errors:
                        # Abort the other nodes' connects now (a Ctrl-C, a dead host)
                        # instead of waiting for each to time out.
                        for transport in cluster.transports:
                            _quietly(transport.close, "aborting a node's bring-up")
                    errors.append(error)
            if errors:
                raise errors[0]
    except BaseException:
        cluster.shutdown()
        raise
    cluster.start_heartbeats(settings.heartbeat_interval)
    return cluster


def provision(
    configs: Sequence[ProviderConfig],
    selector: selection.ProviderSelector,
    spec: ComputeSpec,
    pool_id: str,
    settings: AgentSettings,
    emit: Emit,
) -> Cluster:
    """Bring up a cluster on the first provider and offer that works.

    A provider that cannot even be created (missing credentials) is a failure of that
    provider only: the others are still tried.
    """
    failures: list[tuple[str, BaseException]] = []
    created: list[Provider] = []
    for config in configs:
        try:
            created.append(config.create())
        except Exception as error:
            if len(configs) == 1:
                raise
            emit(Error(f"{config.provider_name}: {error}"))
            failures.append((config.provider_name, error))
    if not created:
        raise AllProvidersFailedError(failures)
    providers = tuple(created)
    first = selector(providers, spec)
    order = [first, *(p for p in providers if p is not first)]
    tried_any = False
    for provider in order:
        try:
            offers = selection.rank_offers(selection.offers_for(provider, spec), spec)
        except Exception as error:
            failures.append((provider.name, error))
            continue
        for offer in offers:
            tried_any = True
            try:
                return _launch(provider, offer, spec, pool_id, settings, emit)
            except CapacityError as error:
                emit(Error(f"{provider.name}: no capacity for {offer.instance_type}: {error}"))
                failures.append((provider.name, error))
                continue
            except ProvisioningError as error:
                emit(Error(str(error)))
                failures.append((provider.name, error))
                break
    if not tried_any and not failures:
        names = ", ".join(p.name for p in providers)
        raise NoAvailableProviderError(
            f"no provider ({names}) has a machine for {_describe(spec)}; "
            "relax the accelerator/machine/cpu/memory requirements or add a provider"
        )
    if len(failures) == 1:
        raise failures[0][1]
    raise AllProvidersFailedError(failures)


def _describe(spec: ComputeSpec) -> str:
    parts = [f"{spec.nodes} node(s)"]
    if spec.accelerator is not None:
        parts.append(f"accelerator {spec.accelerator}")
    if spec.machine:
        parts.append(f"machine {spec.machine}")
    if spec.cpu:
        parts.append(f"{spec.cpu} CPUs")
    if spec.memory_gb:
        parts.append(f"{spec.memory_gb:g} GB memory")
    if spec.max_hourly_cost is not None:
        parts.append(f"at most ${spec.max_hourly_cost:g}/hour in all (max_hourly_cost)")
    return ", ".join(parts)
