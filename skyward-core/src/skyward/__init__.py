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

import importlib
import importlib.machinery
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # What editors and type checkers see; at run time each name is imported on first use
    # (``__getattr__`` below), so ``import skyward.agent`` on a node costs only what the
    # agent needs, not the client's pool, providers and display.
    from collections.abc import Sequence
    from typing import TypeAlias

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

_EXPORTS: dict[str, tuple[str, ...]] = {
    "skyward.accelerators": (
        "NVIDIA",
        "Accelerator",
        "AcceleratorSpec",
        "is_amd",
        "is_inferentia",
        "is_nvidia",
        "is_tpu",
        "is_trainium",
        "select_instance",
    ),
    "skyward.allocation": ("Allocation", "AllocationLike"),
    "skyward.callbacks": ("Callback", "compose", "emit", "use_callback"),
    "skyward.cluster": ("InstanceInfo", "current_accelerator", "instance_info"),
    "skyward.compute": ("ComputeFunction", "PendingBatch", "PendingCompute", "compute", "gather"),
    "skyward.errors": (
        "AgentAuthenticationError",
        "AllProvidersFailedError",
        "BudgetExceededError",
        "CapacityError",
        "ConfigurationError",
        "NoAvailableProviderError",
        "PluginNotInstalledError",
        "PoolClosedError",
        "PoolTimeoutError",
        "RemoteError",
        "SerializationError",
        "SkywardError",
        "TaskTimeoutError",
        "WorkerLostError",
    ),
    "skyward.events": (
        "BatchSubmitted",
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
        "Metrics",
        "PoolStopping",
        "ProviderName",
        "SkywardEvent",
        "TaskFinished",
        "TaskSubmitted",
    ),
    "skyward.hookspecs": ("hookimpl",),
    "skyward.image": ("BootstrapStep", "Image"),
    "skyward.offers": ("Offer",),
    "skyward.pool": ("ComputePool", "MultiPool", "pool"),
    "skyward.provider": ("Provider", "ProviderConfig"),
    "skyward.providers.local": ("Local",),
    "skyward.providers.ssh": ("SSH",),
    "skyward.refs": ("Ref", "put"),
    "skyward.selection": (
        "ProviderSelector",
        "SelectionLike",
        "select_available",
        "select_cheapest",
        "select_first",
    ),
    "skyward.sharding": ("DistributedSampler", "shard"),
    "skyward.spec": ("ComputeSpec",),
    "skyward.ssh.hosts": ("SSHHost",),
    "skyward.volumes": ("S3Volume", "Volume"),
}
"""Where each public name lives: the module is imported when the name is first used."""

_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
_SUBMODULES = ("integrations",)


def __getattr__(name: str) -> Any:
    """A public name on first use; else ``sky.AWS``, ``sky.Verda``, ... : provider
    classes registered by plugins."""
    if name.startswith("__"):
        raise AttributeError(name)
    module = _HOME.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if importlib.machinery.PathFinder.find_spec(f"{__name__}.{name}", __path__) is not None:
        # ``from skyward import wire``: the import system asks here first, and imports
        # the submodule itself once told there is no such attribute.
        raise AttributeError(name)
    from skyward.plugins import provider_attribute

    return provider_attribute(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``sky.compute`` and ``sky.pool`` are functions, named like the modules that define
    them. Importing a submodule sets it as an attribute of its package; for these two the
    function is kept instead (what the eager imports used to leave there)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in _SHADOWED
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # By reference, as (cloud)pickle treats a plain module: a function that uses
        # ``sky`` travels with ``import skyward``, not a copy of the package.
        return importlib.import_module, (self.__name__,)


_SHADOWED = frozenset({"compute", "pool"})
sys.modules[__name__].__class__ = _Package
