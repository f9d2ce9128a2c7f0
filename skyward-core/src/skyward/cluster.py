"""Where a function is running: ``sky.instance_info()`` and ``sky.current_accelerator()``."""

from __future__ import annotations

import threading

from attrs import field, frozen

__all__ = ["RENDEZVOUS_PORTS", "InstanceInfo", "current_accelerator", "instance_info"]

RENDEZVOUS_PORTS = 8
"""Ports reserved on node 0 for distributed frameworks: ``head_port`` up to
``head_port + RENDEZVOUS_PORTS - 1``. Each framework takes its own (torch's store and JAX's
coordinator cannot share one), so several can run in one pool."""


@frozen
class InstanceInfo:
    """The node and worker a function runs on, and how to reach the head node."""

    node: int
    """This node's index, 0-based."""
    total_nodes: int
    """Nodes in the pool."""
    accelerators: list[str] = field(factory=list)
    """Accelerators on this node (``["A100", "A100"]``); empty on CPU machines."""
    head_addr: str = "127.0.0.1"
    """Address of node 0 as the other nodes see it."""
    head_port: int = 0
    """First of :data:`RENDEZVOUS_PORTS` consecutive ports on node 0 reserved for distributed
    frameworks' rendezvous (see :meth:`rendezvous_port`)."""
    job_id: str = "local"
    """Unique id of the pool."""
    worker: int = 0
    """Index of the worker (concurrent task slot) within the node."""
    workers_per_node: int = 1
    """Concurrent task slots per node (the pool's ``concurrency``)."""

    @property
    def is_head(self) -> bool:
        """True on node 0."""
        return self.node == 0

    def rendezvous_port(self, index: int) -> int:
        """The ``index``-th reserved port on node 0 (``0 <= index < RENDEZVOUS_PORTS``)."""
        if not 0 <= index < RENDEZVOUS_PORTS:
            raise ValueError(f"rendezvous port {index} is outside 0..{RENDEZVOUS_PORTS - 1}")
        return self.head_port + index


# Set once by the node agent; the worker index differs per worker thread.
_node_info: InstanceInfo | None = None
_worker = threading.local()


def set_node_info(info: InstanceInfo | None) -> None:
    """Called by the node agent at start-up."""
    global _node_info
    _node_info = info


def set_worker(index: int) -> None:
    """Called by each agent worker thread once."""
    _worker.index = index


def instance_info() -> InstanceInfo:
    """Information about the node running the current function.

    Outside a pool (a ``.local`` call, a test) this describes a single-node, single-worker
    cluster, so code that shards its data still runs unchanged on the laptop.
    """
    base = _node_info or InstanceInfo(node=0, total_nodes=1)
    index = getattr(_worker, "index", None)
    if index is None or index == base.worker:
        return base
    return InstanceInfo(
        node=base.node,
        total_nodes=base.total_nodes,
        accelerators=list(base.accelerators),
        head_addr=base.head_addr,
        head_port=base.head_port,
        job_id=base.job_id,
        worker=index,
        workers_per_node=base.workers_per_node,
    )


def current_accelerator() -> str | None:
    """The accelerator type of the node running the current function, ``None`` on CPU."""
    accelerators = instance_info().accelerators
    return accelerators[0] if accelerators else None
