"""The events a pool emits over its life, in the order a user sees them.

Every event is a frozen attrs class. Listeners (the display, the cost tracker, a user's
``on_event``) are plain callbacks; see :mod:`skyward.callbacks`.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from attrs import frozen

__all__ = [
    "BootstrapCompleted",
    "BootstrapProgress",
    "BootstrapStarting",
    "CostFinal",
    "CostUpdate",
    "Error",
    "InfraCreated",
    "InfraCreating",
    "InstanceLaunching",
    "InstanceProvisioned",
    "InstanceStopping",
    "LogLine",
    "GpuMetrics",
    "Metrics",
    "PoolStopping",
    "ProviderName",
    "SkywardEvent",
    "BatchSubmitted",
    "TaskFinished",
    "TaskSubmitted",
]

ProviderName: TypeAlias = str
"""A provider's registered name: ``"local"``, ``"aws"``, ``"digitalocean"``, ``"verda"``, ..."""


# -- provision phase ----------------------------------------------------------------------


@frozen
class InfraCreating:
    """The pool starts preparing shared infrastructure (network, security group, ...)."""


@frozen
class InfraCreated:
    """Shared infrastructure is ready in ``region``."""

    region: str


@frozen
class InstanceLaunching:
    """``count`` machines of ``instance_type`` are being requested from ``provider``."""

    count: int
    instance_type: str
    provider: ProviderName


@frozen
class InstanceProvisioned:
    """A machine is running and has an address; prices are per machine-hour in USD."""

    instance_id: str
    node: int
    spot: bool
    provider: ProviderName
    ip: str | None = None
    instance_type: str | None = None
    price_on_demand: float | None = None
    price_spot: float | None = None


# -- setup phase --------------------------------------------------------------------------


@frozen
class BootstrapStarting:
    """Bootstrap of one machine begins."""

    instance_id: str


@frozen
class BootstrapProgress:
    """Bootstrap of one machine entered ``step`` (``"uv"``, ``"apt"``, ``"deps"``, ...).

    ``cached`` is true when the step found its work already done and skipped it.
    """

    instance_id: str
    step: str
    cached: bool = False


@frozen
class BootstrapCompleted:
    """The node agent on one machine is up and reachable."""

    instance_id: str


# -- execute phase ------------------------------------------------------------------------


@frozen
class Metrics:
    """A resource sample from one node. GPU fields are ``None`` where there is no GPU."""

    instance_id: str
    node: int
    cpu_percent: float
    memory_percent: float
    memory_used_mb: float
    memory_total_mb: float
    gpu_utilization: float | None = None
    gpu_memory_used_mb: float | None = None
    gpu_memory_total_mb: float | None = None
    gpu_temperature: float | None = None
    gpus: tuple[GpuMetrics, ...] = ()
    """Per-GPU figures of every GPU the node sees (the flat ``gpu_*`` fields: the first)."""


@frozen
class GpuMetrics:
    """One GPU's figures in a :class:`Metrics` event."""

    index: int
    """``nvidia-smi``'s index of the GPU on its node."""
    utilization: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    temperature: float | None = None


@frozen
class BatchSubmitted:
    """``calls`` calls are about to be sent together (``&``, ``gather``, ``@ pool``, or
    ``pool.map`` over sized iterables); their ``TaskSubmitted`` events follow as the
    nodes take them, so a progress bar knows its total from the start."""

    calls: int


@frozen
class TaskSubmitted:
    """One attempt of a call was sent to ``node``; ``task`` numbers the pool's calls from 1.

    A call retried after a failure is submitted again with the same ``task`` and the next
    ``attempt``. ``worker`` is set when the call is pinned to one (``@ pool``).

    Calls sent together in one chunk (many small calls of a ``gather`` or ``map``, see
    "Many small calls" in the concepts) are reported by one event: ``calls`` consecutive
    calls, numbered ``task`` to ``task + calls - 1``. Count ``calls``, not events.
    """

    task: int
    node: int
    attempt: int = 1
    worker: int | None = None
    calls: int = 1


@frozen
class TaskFinished:
    """The outcome of one attempt arrived; ``ok`` is false when it raised (or was lost).

    ``seconds`` is the wall time from submission to outcome, as the client saw it. Of a
    chunk, one event reports each run of consecutive calls with the same ``ok``: ``calls``
    calls numbered from ``task`` (see :class:`TaskSubmitted`).
    """

    task: int
    node: int
    ok: bool
    seconds: float
    attempt: int = 1
    calls: int = 1


@frozen
class LogLine:
    """One line a node wrote to stdout or stderr (bootstrap output or a function's prints)."""

    node: int
    instance_id: str
    line: str
    timestamp: float
    stream: Literal["stdout", "stderr"] = "stdout"


# -- shutdown phase -----------------------------------------------------------------------


@frozen
class PoolStopping:
    """The pool is shutting down; instances are stopped next."""


@frozen
class InstanceStopping:
    """One machine is being terminated."""

    instance_id: str


# -- cost ---------------------------------------------------------------------------------


@frozen
class CostUpdate:
    """Running cost of the pool so far, in USD."""

    elapsed_seconds: float
    accumulated_cost: float
    hourly_rate: float
    spot_count: int
    ondemand_count: int


@frozen
class CostFinal:
    """What the pool cost in all, in USD; always the last event of a pool."""

    total_cost: float
    total_seconds: float
    hourly_rate: float
    spot_count: int
    ondemand_count: int
    savings_vs_ondemand: float
    budget: float | None = None
    """The pool's ``max_cost``, when it had one; ``total_cost`` is what was spent."""


# -- errors -------------------------------------------------------------------------------


@frozen
class Error:
    """Something went wrong; ``instance_id`` says where when it is one machine's fault."""

    message: str
    instance_id: str | None = None


SkywardEvent: TypeAlias = (
    InfraCreating
    | InfraCreated
    | InstanceLaunching
    | InstanceProvisioned
    | BootstrapStarting
    | BootstrapProgress
    | BootstrapCompleted
    | Metrics
    | BatchSubmitted
    | TaskSubmitted
    | TaskFinished
    | LogLine
    | PoolStopping
    | InstanceStopping
    | CostUpdate
    | CostFinal
    | Error
)
"""Any event a pool emits."""
