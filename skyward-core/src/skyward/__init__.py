"""Skyward: ephemeral compute for Python.

Decorate a function with ``@sky.compute``, open a pool, and send calls to it with
``>>`` (one worker), ``@`` (every node), ``&`` / ``gather`` (in parallel)::

    import skyward as sky

    @sky.compute
    def square(x: int) -> int:
        return x * x

    with sky.ComputePool(provider=sky.Local(), nodes=2) as pool:
        print(square(7) >> pool)

Provider classes from plugins (``sky.AWS``, ``sky.DigitalOcean``, ``sky.Verda``) and
``sky.integrations.*`` resolve lazily through the plugin registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from skyward import integrations
from skyward.accelerators import (
    NVIDIA,
    Accelerator,
    AcceleratorSpec,
    is_amd,
    is_inferentia,
    is_nvidia,
    is_tpu,
    is_trainium,
    select_instance,
)
from skyward.allocation import Allocation, AllocationLike
from skyward.callbacks import Callback, compose, emit, use_callback
from skyward.cluster import InstanceInfo, current_accelerator, instance_info
from skyward.compute import ComputeFunction, PendingBatch, PendingCompute, compute, gather
from skyward.errors import (
    AgentAuthenticationError,
    AllProvidersFailedError,
    BudgetExceededError,
    CapacityError,
    ConfigurationError,
    NoAvailableProviderError,
    PluginNotInstalledError,
    PoolClosedError,
    PoolTimeoutError,
    RemoteError,
    SerializationError,
    SkywardError,
    TaskTimeoutError,
    WorkerLostError,
)
from skyward.events import (
    BatchSubmitted,
    BootstrapCompleted,
    BootstrapProgress,
    BootstrapStarting,
    CostFinal,
    CostUpdate,
    Error,
    InfraCreated,
    InfraCreating,
    InstanceLaunching,
    InstanceProvisioned,
    InstanceStopping,
    LogLine,
    Metrics,
    PoolStopping,
    ProviderName,
    SkywardEvent,
    TaskFinished,
    TaskSubmitted,
)
from skyward.hookspecs import hookimpl
from skyward.image import BootstrapStep, Image
from skyward.offers import Offer
from skyward.pool import ComputePool, MultiPool, pool
from skyward.provider import Provider, ProviderConfig
from skyward.providers.local import Local
from skyward.providers.ssh import SSH
from skyward.refs import Ref, put
from skyward.selection import (
    ProviderSelector,
    SelectionLike,
    select_available,
    select_cheapest,
    select_first,
)
from skyward.sharding import DistributedSampler, shard
from skyward.spec import ComputeSpec
from skyward.ssh.hosts import SSHHost
from skyward.volumes import S3Volume, Volume

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import TypeAlias

    ProviderLike: TypeAlias = ProviderConfig | Sequence[ProviderConfig]

__version__ = "0.1.0"

__all__ = [
    "NVIDIA",
    "Accelerator",
    "AcceleratorSpec",
    "AgentAuthenticationError",
    "AllProvidersFailedError",
    "BudgetExceededError",
    "Allocation",
    "BatchSubmitted",
    "AllocationLike",
    "BootstrapCompleted",
    "BootstrapProgress",
    "BootstrapStarting",
    "BootstrapStep",
    "Callback",
    "CapacityError",
    "ComputeFunction",
    "ComputePool",
    "ComputeSpec",
    "ConfigurationError",
    "CostFinal",
    "CostUpdate",
    "DistributedSampler",
    "Error",
    "Image",
    "InfraCreated",
    "InfraCreating",
    "InstanceInfo",
    "InstanceLaunching",
    "InstanceProvisioned",
    "InstanceStopping",
    "Local",
    "LogLine",
    "Metrics",
    "MultiPool",
    "NoAvailableProviderError",
    "Offer",
    "PendingBatch",
    "PendingCompute",
    "PluginNotInstalledError",
    "PoolClosedError",
    "PoolStopping",
    "PoolTimeoutError",
    "Provider",
    "ProviderConfig",
    "ProviderName",
    "ProviderSelector",
    "RemoteError",
    "SSH",
    "SSHHost",
    "S3Volume",
    "SelectionLike",
    "SerializationError",
    "SkywardError",
    "TaskTimeoutError",
    "SkywardEvent",
    "TaskFinished",
    "TaskSubmitted",
    "Volume",
    "WorkerLostError",
    "compose",
    "compute",
    "current_accelerator",
    "emit",
    "gather",
    "put",
    "Ref",
    "hookimpl",
    "instance_info",
    "integrations",
    "is_amd",
    "is_inferentia",
    "is_nvidia",
    "is_tpu",
    "is_trainium",
    "pool",
    "select_available",
    "select_cheapest",
    "select_first",
    "select_instance",
    "shard",
    "use_callback",
]


def __getattr__(name: str) -> Any:
    """``sky.AWS``, ``sky.Verda``, ... : provider classes registered by plugins."""
    if name.startswith("__"):
        raise AttributeError(name)
    from skyward.plugins import provider_attribute

    return provider_attribute(name)
