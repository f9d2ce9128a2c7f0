"""``@sky.integrations.jax``: ``jax.distributed`` set up on every worker before the function.

Each worker process is one JAX process (``process_id`` = its rank, ``num_processes`` = the
world size); node 0 hosts the coordinator on its JAX rendezvous port. JAX must be set up
before any JAX operation in the process, so a worker that already ran plain JAX is refused
with an error saying so. On CPU-only workers ``JAX_PLATFORMS`` defaults to ``cpu`` and the
cross-process CPU collectives to gloo.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from attrs import frozen

from skyward.cluster import InstanceInfo
from skyward.errors import ConfigurationError
from skyward_integrations._distributed import (
    DEFAULT_TIMEOUT,
    check_timeout,
    decorate,
    port_for,
    ranks,
)

__all__ = ["JaxSetup", "initialize_jax", "jax"]


def _backends_initialised() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this module: let initialize() complain itself
        return False
    return bool(xla_bridge.backends_are_initialized())


def initialize_jax(info: InstanceInfo, timeout: float, name: str = "jax") -> str:
    """Set up ``jax.distributed`` for this worker (once per process); the coordinator's
    address. Shared with :mod:`skyward_integrations.keras`."""
    me = ranks(info)
    address = f"{info.head_addr}:{port_for(info, 'jax')}"
    os.environ["JAX_COORDINATOR_ADDRESS"] = address
    os.environ["JAX_NUM_PROCESSES"] = str(me.world_size)
    os.environ["JAX_PROCESS_ID"] = str(me.rank)
    if not info.accelerators:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized():
        return address  # already (by @sky.integrations.keras on this worker, say)
    if _backends_initialised():
        raise ConfigurationError(
            name,
            f"JAX already ran an operation in this worker (node {info.node}, worker "
            f"{info.worker}), and jax.distributed must be set up before any",
            f"Do not use JAX in this pool before the first @sky.integrations.{name} call "
            "(or import jax only inside the decorated function)",
        )
    import jax as _jax

    if _jax.distributed.is_initialized():
        return address
    if os.environ.get("JAX_PLATFORMS") == "cpu":
        # CPU collectives across processes (gloo is the default only from jax 0.6).
        _jax.config.update("jax_cpu_collectives_implementation", "gloo")  # type: ignore[no-untyped-call]
    _jax.distributed.initialize(
        coordinator_address=address,
        num_processes=me.world_size,
        process_id=me.rank,
        initialization_timeout=int(timeout),
    )
    return address


@frozen
class JaxSetup:
    timeout: float = DEFAULT_TIMEOUT
    name: str = "jax"

    def __call__(self, info: InstanceInfo) -> None:
        initialize_jax(info, self.timeout)


def jax(fn: Any = None, /, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Initialise ``jax.distributed`` on every worker before the decorated function runs.

    :param timeout: seconds each process waits for the others to join.

    Stack it on ``@sky.compute`` and run the function with ``fn() @ pool``. Import JAX
    inside the function: JAX cannot switch to distributed mode after its first operation.
    """
    setup = JaxSetup(timeout=check_timeout(timeout))
    if fn is not None:
        return decorate(fn, setup)
    return lambda target: decorate(target, setup)
