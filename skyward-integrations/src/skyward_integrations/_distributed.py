"""What every distributed-training decorator shares: ranks, ports, once-per-process setup.

The model (one rank per worker): each worker of each node is its own process (the pool's
default ``executor="process"``), so each is one rank of the job. ``RANK = node *
workers_per_node + worker``, ``WORLD_SIZE = nodes * workers_per_node``, ``LOCAL_RANK =
worker``. ``fn(...) @ pool`` runs the function once on every worker, i.e. once per rank.

A framework's process group is a per-process singleton, so it is set up once per worker
process (under a lock, before the user's function) and kept for later calls. With the thread
executor all workers of a node share a process: a second worker asking for another rank in
the same process is refused with an error that says to use process workers.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from attrs import frozen

from skyward.cluster import InstanceInfo, instance_info
from skyward.compute import ComputeFunction
from skyward.errors import ConfigurationError
from skyward.port_reservation import PortReservation, reserve_ports

__all__ = [
    "PORTS",
    "Ranks",
    "Setup",
    "cuda_device",
    "decorate",
    "ensure",
    "free_port",
    "port_for",
    "ranks",
]

F = TypeVar("F")

PORTS = {"torch": 0, "jax": 1, "tensorflow": 2}
"""Which of node 0's reserved rendezvous ports each framework takes
(:meth:`~skyward.cluster.InstanceInfo.rendezvous_port`): two frameworks never share one."""

DEFAULT_TIMEOUT = 300.0
"""Seconds a rank waits for the others at set-up before failing (not torch's 30 minutes)."""


@frozen
class Ranks:
    """Where this worker stands in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    nodes: int
    master_addr: str

    def env(self, port: int) -> dict[str, str]:
        """The environment torchrun would give this rank (``env://`` reads it).

        ``LOCAL_RANK`` is the worker's index on its node, as torchrun sets it, whatever GPUs
        the worker sees: it tells the node's ranks apart ("local main process"). Which GPU
        a rank uses is :func:`cuda_device`'s answer, not ``LOCAL_RANK``.
        """
        return {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(self.world_size),
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "NODE_RANK": str(self.node_rank),
            "GROUP_RANK": str(self.node_rank),
            "GROUP_WORLD_SIZE": str(self.nodes),
        }


def cuda_device(local_rank: int, visible_devices: str | None, device_count: int) -> int:
    """The CUDA device index this rank uses, counted among the devices its process sees.

    A process worker on a GPU node is pinned to its own share of the GPUs
    (``CUDA_VISIBLE_DEVICES`` set per worker: :func:`skyward.gpus.plan_workers`), so its
    first visible device is its own: ``cuda:0``, whatever its ``LOCAL_RANK``. Only a process
    that sees every GPU of the node (nothing pinned it) picks by ``LOCAL_RANK``, as under
    torchrun.
    """
    if device_count < 1:
        raise ValueError("no CUDA device is visible")
    if visible_devices is not None and visible_devices.strip():
        return 0
    return local_rank % device_count


def ranks(info: InstanceInfo) -> Ranks:
    """This worker's rank: one per worker of every node, ordered by node, then worker."""
    return Ranks(
        rank=info.node * info.workers_per_node + info.worker,
        world_size=info.total_nodes * info.workers_per_node,
        local_rank=info.worker,
        local_world_size=info.workers_per_node,
        node_rank=info.node,
        nodes=info.total_nodes,
        master_addr=info.head_addr,
    )


_ephemeral_ports: dict[str, int] = {}
_held: list[PortReservation] = []


def free_port() -> int:
    """A free port of this machine for a server this process starts later (a framework's).

    It stays reserved (:mod:`skyward.port_reservation`) for the life of this process: a port
    only probed and closed could go to another process before the framework binds it.
    """
    reservation = reserve_ports(1)
    _held.append(reservation)
    return reservation.base


def port_for(info: InstanceInfo, framework: str) -> int:
    """The rendezvous port of ``framework``: one of node 0's reserved ports inside a pool;
    outside one (a ``.local`` call, a world of one) a free port of this machine."""
    if info.head_port:
        return info.rendezvous_port(PORTS[framework])
    if framework not in _ephemeral_ports:
        _ephemeral_ports[framework] = free_port()
    return _ephemeral_ports[framework]


class Setup(Protocol):
    """A framework's set-up for this process (hashable: each distinct one runs once)."""

    @property
    def name(self) -> str: ...

    def __hash__(self) -> int: ...

    def __call__(self, info: InstanceInfo) -> None: ...


_lock = threading.Lock()
_ranks: dict[str, tuple[int, int, str]] = {}
_done: set[Setup] = set()


def _refuse_shared_process(name: str, info: InstanceInfo) -> None:
    # Process workers run each task on their process's main thread; the thread executor
    # runs a node's workers as threads of one process, which can hold only one rank.
    if info.workers_per_node > 1 and threading.current_thread() is not threading.main_thread():
        raise ConfigurationError(
            "executor",
            f"{name} needs one process per rank, but the {info.workers_per_node} workers of "
            f'node {info.node} are threads of one process (executor="thread")',
            'Use ComputePool(executor="process") (the default), or concurrency=1',
        )


def ensure(setup: Setup, info: InstanceInfo) -> None:
    """Run ``setup`` once in this process; later calls (same rank) return at once."""
    _refuse_shared_process(setup.name, info)
    me = ranks(info)
    key = (me.rank, me.world_size, info.job_id)
    with _lock:
        if setup in _done:
            return
        known = _ranks.get(setup.name)
        if known is not None and known != key:
            raise ConfigurationError(
                setup.name,
                f"{setup.name} is already set up in this process as rank {known[0]} of "
                f"{known[1]} (pool {known[2]}), not rank {me.rank} of {me.world_size} "
                f"(pool {info.job_id})",
                "Run each pool's distributed functions in that pool's own workers",
            )
        setup(info)
        _ranks[setup.name] = key
        _done.add(setup)


class _Distributed:
    """The user's function, run after its framework is set up in this worker process.

    A class (not a closure) so it pickles by reference to this package, which the nodes
    have installed: the user's function inside it still travels by value when it must.
    """

    def __init__(self, fn: Callable[..., Any], setup: Setup) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.setup = setup

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ensure(self.setup, instance_info())
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.setup.name} function {getattr(self.fn, '__qualname__', self.fn)!r}>"


def decorate(target: Any, setup: Setup) -> Any:
    """Wrap a ``@sky.compute`` function (keeping its call options) or a plain function."""
    if isinstance(target, ComputeFunction):
        return ComputeFunction(_Distributed(target.local, setup), target.options)
    if isinstance(target, _Distributed):
        return _Distributed(target, setup)
    if callable(target):
        return _Distributed(target, setup)
    raise TypeError(f"sky.integrations.{setup.name} decorates a function, not {target!r}")


def check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigurationError(
            "timeout", f"{timeout!r} is not a positive number of seconds", "Use e.g. timeout=300"
        )
    return float(timeout)


def set_env(values: dict[str, str]) -> None:
    os.environ.update(values)
