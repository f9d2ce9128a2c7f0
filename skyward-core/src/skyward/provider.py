"""The interface a provider plugin implements.

Two objects per provider:

- a **config** (``sky.Local(...)``, ``sky.AWS(...)``): what the user writes, frozen, validated
  at construction, and able to check a pool's spec without any network call;
- a **provider** (made by ``config.create()``): the live object that sells offers, launches,
  describes and terminates instances, and opens a :class:`NodeTransport` to each.

Core drives them in this order (see ``docs/architecture.md``): ``offers`` → ``prepare`` →
``launch`` → ``describe`` until running → ``connect`` → ``NodeTransport.bootstrap`` →
``NodeTransport.start_agent`` / ``open_stream``; and on every exit path ``terminate`` →
``describe`` until terminated → ``teardown``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from attrs import evolve, field, frozen

from skyward.handshake import new_key
from skyward.offers import Offer

if TYPE_CHECKING:
    from skyward.image import Image
    from skyward.spec import ComputeSpec

__all__ = [
    "AccessCheck",
    "AccessChecker",
    "AgentConfig",
    "AgentEndpoint",
    "BootstrapReporter",
    "Infrastructure",
    "Instance",
    "InstanceState",
    "LaunchRequest",
    "Leftover",
    "LeftoverSweeper",
    "NodeTransport",
    "Provider",
    "ProviderConfig",
    "SharedInfrastructure",
    "Stream",
    "running_unless",
]

MANAGED_TAG = "skyward:managed"
"""Tag key set on every resource Skyward creates, so ``skyward down`` can find it."""
POOL_TAG = "skyward:pool"
"""Tag key whose value is the id of the pool that created the resource."""


class InstanceState(enum.Enum):
    """Where an instance is in its life, as its provider reports it."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    TERMINATED = "terminated"


@frozen
class Instance:
    """One machine of a pool, as its provider last described it."""

    id: str
    """The provider's instance id."""
    provider: str
    """Name of the provider that owns it."""
    state: InstanceState
    """State at the last ``launch``/``describe``."""
    instance_type: str = ""
    """Machine type it was launched as."""
    ip: str | None = None
    """Address the client connects to (public address for cloud machines)."""
    private_ip: str | None = None
    """Address the other nodes of the pool see it at."""
    spot: bool = False
    """Whether it was bought on the spot market."""
    region: str = ""
    zone: str | None = None
    price_on_demand: float | None = None
    price_spot: float | None = None
    tags: Mapping[str, str] = field(factory=dict)
    """Tags as set on the provider; always includes the pool and managed tags."""
    launched_at: float | None = None
    """When the machine was launched (seconds since the epoch), when the provider says;
    ``skyward ls`` shows the age and cost so far from it."""

    @property
    def hourly_price(self) -> float:
        """What it costs per hour as launched (spot or on-demand), 0.0 when unknown."""
        price = self.price_spot if self.spot else self.price_on_demand
        return price or 0.0


def running_unless(instances: Sequence[Instance], terminated: Collection[str]) -> list[Instance]:
    """Describe machines that run until Skyward terminates them (local processes, the
    user's own hosts): RUNNING, or TERMINATED once their id is in ``terminated``."""
    return [
        evolve(i, state=InstanceState.TERMINATED if i.id in terminated else InstanceState.RUNNING)
        for i in instances
    ]


@frozen
class Infrastructure:
    """Shared infrastructure a provider prepared for a pool (network, security group, ...).

    Providers subclass it to carry their own handles; core only reads ``region``.
    """

    region: str
    """Where the pool's machines will live; shown in ``InfraCreated``."""
    head_port: int = 29500
    """First of the ports on node 0 reserved for distributed frameworks' rendezvous
    (``head_port`` .. ``head_port + RENDEZVOUS_PORTS - 1``, see :mod:`skyward.cluster`)."""
    on_expire: str = "exit"
    """What agents do when their watchdog or lifetime fires: ``"exit"``, or ``"poweroff"``
    for cloud machines (whose provider then terminates them)."""


@frozen
class LaunchRequest:
    """What core asks a provider to launch."""

    pool_id: str
    """Unique id of the pool; every resource is tagged with it."""
    offer: Offer
    """The offer selection chose."""
    count: int
    """How many machines."""
    spec: ComputeSpec
    """The pool's whole spec (image, allocation, volumes, timeout...)."""
    tags: Mapping[str, str]
    """Tags to set on every resource created for this launch."""


@frozen
class AgentConfig:
    """How to start the node agent on one machine.

    Secrets live only in ``env`` and ``key``: transports pass them to the agent on its
    standard input (:meth:`stdin_line`), never on a command line or in a file left behind.
    """

    node: int
    total_nodes: int
    concurrency: int | str
    """Workers on the node: a number, or ``"auto"`` (one per GPU or MIG instance, else 1)."""
    job_id: str
    head_addr: str
    head_port: int
    accelerators: tuple[str, ...] = ()
    heartbeat_timeout: float = 30.0
    """Seconds without a heartbeat after which the agent gives up and exits."""
    lifetime: float | None = None
    """Hard lifetime in seconds from agent start: what is left of the pool's ``timeout``
    when the agent starts (so a node started late, or restarted, expires with the pool)."""
    metrics_interval: float | None = 5.0
    """Seconds between resource samples; ``None`` turns metrics off."""
    env: Mapping[str, str] = field(factory=dict, repr=False)
    """Environment for the user's functions (image env, then pool env); may hold secrets,
    so it is never shown."""
    on_expire: str = "exit"
    """What the agent does when its watchdog or lifetime fires: ``"exit"`` or ``"poweroff"``."""
    mig_profile: str | None = None
    """The pool's MIG profile (``"3g.40gb"``): one worker per MIG instance of it."""
    unix_socket: str | None = None
    """Listen on this unix socket instead of 127.0.0.1 (machines that are the client's own)."""
    executor: str = "process"
    """``"process"``: each worker its own process; ``"thread"``: threads of the agent."""
    key: bytes = field(factory=new_key, repr=False)
    """The pool's key: every connection to the agent proves it holds it
    (:mod:`skyward.handshake`). Travels only on the agent's standard input."""

    def stdin_line(self) -> bytes:
        """What a transport writes to the agent's standard input: the key and ``env``, as
        one JSON line (secrets stay off the command line and out of files)."""
        return (json.dumps({"env": dict(self.env), "key": self.key.hex()}) + "\n").encode()

    def argv(self) -> list[str]:
        """Command-line arguments of ``python -m skyward.agent`` (never holds ``env``)."""
        args = [
            f"--node={self.node}",
            f"--total-nodes={self.total_nodes}",
            f"--concurrency={self.concurrency}",
            f"--executor={self.executor}",
            f"--job-id={self.job_id}",
            f"--head-addr={self.head_addr}",
            f"--head-port={self.head_port}",
            f"--heartbeat-timeout={self.heartbeat_timeout}",
            f"--on-expire={self.on_expire}",
        ]
        if self.accelerators:
            args.append(f"--accelerators={','.join(self.accelerators)}")
        if self.lifetime is not None:
            args.append(f"--lifetime={self.lifetime}")
        if self.unix_socket is not None:
            args.append(f"--unix-socket={self.unix_socket}")
        if self.mig_profile is not None:
            args.append(f"--mig-profile={self.mig_profile}")
        if self.metrics_interval is not None:
            args.append(f"--metrics-interval={self.metrics_interval}")
        return args


@frozen
class AgentEndpoint:
    """Where a started agent listens, on the node's own loopback interface."""

    port: int
    pid: int | None = None
    path: str | None = None
    """The agent's unix socket, when it listens on one instead of a port (``Local``)."""


@runtime_checkable
class Stream(Protocol):
    """A connected byte stream to an agent: a socket, or an SSH channel."""

    def sendall(self, data: bytes | memoryview, /) -> None: ...
    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int: ...
    def close(self) -> None: ...


class BootstrapReporter(Protocol):
    """Callbacks a transport reports bootstrap progress through."""

    def step(self, name: str, *, cached: bool = False) -> None:
        """A bootstrap step started (or was skipped because its work was already done)."""

    def log(self, line: str) -> None:
        """One line of bootstrap output."""


class NodeTransport(Protocol):
    """How core reaches one machine: bootstrap it, start the agent, connect to it."""

    def bootstrap(self, image: Image, reporter: BootstrapReporter) -> None:
        """Make the machine able to run the agent for ``image``; idempotent and cached."""

    def start_agent(self, config: AgentConfig) -> AgentEndpoint:
        """Start the node agent and return where it listens (on the node's loopback)."""

    def open_stream(self, endpoint: AgentEndpoint) -> Stream:
        """Open a new connection to the agent; called again to reconnect."""

    def close(self) -> None:
        """Stop the agent if still running and release connections. Idempotent."""


class Provider(Protocol):
    """A live provider: made by :meth:`ProviderConfig.create` for one pool."""

    name: str
    """The registered provider name, used in events and errors."""

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        """Machine types that can satisfy ``spec``, with prices. May call the cloud."""

    def prepare(self, spec: ComputeSpec, pool_id: str) -> Infrastructure:
        """Create or find shared infrastructure for a pool; reuse what exists."""

    def launch(self, infra: Infrastructure, request: LaunchRequest) -> Sequence[Instance]:
        """Request ``request.count`` machines. All or nothing: on a partial launch the
        provider tops up or terminates what it got, then raises."""

    def describe(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        """Current state of the given instances (same order)."""

    def terminate(self, instances: Sequence[Instance]) -> None:
        """Ask for the given instances to be terminated; must not raise for ones already gone."""

    def list_by_tag(self, pool_id: str | None = None) -> Sequence[Instance]:
        """Live instances Skyward manages (of one pool, or all): the orphan sweep."""

    def connect(self, infra: Infrastructure, instance: Instance) -> NodeTransport:
        """A transport to a running instance."""

    def teardown(self, infra: Infrastructure) -> None:
        """Delete the per-pool resources ``prepare`` created; shared ones stay for reuse."""


@runtime_checkable
class SharedInfrastructure(Protocol):
    """Optional: providers whose shared resources (``skyward-sg``, IAM roles, buckets)
    outlive pools implement this, so ``skyward down --shared`` can list and remove them."""

    def list_shared(self) -> list[tuple[str, str]]:
        """(kind, id) of each shared resource Skyward made."""

    def teardown_shared(self) -> list[tuple[str, str]]:
        """Remove them; return those kept (in use, or holding the user's data)."""


@frozen
class Leftover:
    """Something a dead client left behind that is not an instance: a key pair, a launch
    template, a volume, a firewall, a node directory on a host, ..."""

    kind: str
    """What it is, e.g. ``"key-pair"`` or ``"node-dir"``."""
    id: str
    """The provider's id or name for it (a path for a directory)."""
    where: str = ""
    """Region, zone or host it is in (for messages and for removal)."""
    pool: str = ""
    """The pool that made it, when known."""


@runtime_checkable
class LeftoverSweeper(Protocol):
    """Optional: providers that make more than instances implement this, so that
    ``skyward down`` removes everything a dead client left, not just its machines."""

    def list_leftovers(self, pool_id: str | None = None) -> list[Leftover]:
        """What pools (one, or any) left behind whose owner is gone. Makes no change."""

    def remove_leftovers(self, leftovers: Sequence[Leftover]) -> list[tuple[Leftover, str]]:
        """Remove them (after :meth:`Provider.terminate` of the instances); return each
        one that could not be removed with the reason."""


@frozen
class AccessCheck:
    """One thing ``skyward doctor`` checked about a provider: whether the credentials
    found are valid and allowed to do one thing a pool does."""

    name: str
    """What was checked, e.g. ``"ec2:RunInstances"`` or ``"identity"``."""
    ok: bool
    detail: str = ""
    """What was found (the identity, the error)."""
    fix: str = ""
    """How to fix it, when it failed."""
    required: bool = True
    """Whether every pool needs it (else only some features do: volumes, SSM)."""


@runtime_checkable
class AccessChecker(Protocol):
    """Optional: providers that can say precisely whether their credentials are allowed
    to do what a pool needs (an identity call and dry runs, changing nothing). Providers
    without it are checked by one read call (:meth:`Provider.list_by_tag`)."""

    def check_access(self) -> list[AccessCheck]:
        """Every check, passed or not. Creates and changes nothing."""


class ProviderConfig(Protocol):
    """What the user passes as ``provider=``: frozen configuration, no live state."""

    provider_name: ClassVar[str]
    """Registered name, e.g. ``"aws"``."""

    def validate(self, spec: ComputeSpec) -> None:
        """Raise :class:`~skyward.errors.ConfigurationError` for a spec this provider
        cannot serve. Makes no network call."""

    def create(self) -> Provider:
        """The live provider for one pool."""
