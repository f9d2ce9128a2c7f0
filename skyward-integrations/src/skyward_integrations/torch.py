"""``@sky.integrations.torch``: torch.distributed set up on every worker before the function.

Each worker process becomes one rank (see :mod:`skyward_integrations._distributed`):
``MASTER_ADDR``/``MASTER_PORT`` (node 0's torch rendezvous port), ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``NODE_RANK``/``GROUP_RANK`` are set as torchrun sets
them, then ``init_process_group(init_method="env://")`` runs once per process with a timeout.
The group stays up for later calls on the same pool.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from attrs import frozen

from skyward.cluster import InstanceInfo
from skyward.errors import ConfigurationError
from skyward_integrations._distributed import (
    DEFAULT_TIMEOUT,
    check_timeout,
    cuda_device,
    decorate,
    port_for,
    ranks,
)

__all__ = ["TorchSetup", "torch"]

BACKENDS = ("nccl", "gloo", "mpi", "xccl")


@frozen
class TorchSetup:
    """Environment and process group of one worker process."""

    backend: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    name: str = "torch"

    def __call__(self, info: InstanceInfo) -> None:
        me = ranks(info)
        os.environ.update(me.env(port_for(info, "torch")))
        import torch as _torch
        import torch.distributed as dist

        cuda = _torch.cuda.is_available()
        backend = self.backend or ("nccl" if cuda else "gloo")
        if backend == "nccl" and not cuda:
            raise ConfigurationError(
                "backend",
                f'"nccl" needs a CUDA GPU, and node {info.node} worker {info.worker} sees none',
                'Use backend="gloo" on CPU machines (or leave backend unset to choose)',
            )
        if dist.is_initialized():
            # Set up by the user's own code (or an earlier framework): it must agree.
            if dist.get_rank() != me.rank or dist.get_world_size() != me.world_size:
                raise ConfigurationError(
                    "torch",
                    f"torch.distributed is already initialised as rank {dist.get_rank()} of "
                    f"{dist.get_world_size()}, not rank {me.rank} of {me.world_size}",
                    "Let sky.integrations.torch initialise the process group",
                )
            return
        if cuda:
            # The worker's own GPU: cuda:0 when it is pinned to its share (not LOCAL_RANK,
            # which would name a device the worker cannot see).
            _torch.cuda.set_device(
                cuda_device(
                    me.local_rank,
                    os.environ.get("CUDA_VISIBLE_DEVICES"),
                    _torch.cuda.device_count(),
                )
            )
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=me.rank,
            world_size=me.world_size,
            timeout=timedelta(seconds=self.timeout),
        )


def torch(
    fn: Any = None, /, *, backend: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Any:
    """Initialise ``torch.distributed`` on every worker before the decorated function runs.

    :param backend: ``"nccl"`` (GPUs) or ``"gloo"`` (CPUs); default: nccl when the worker
        sees a GPU, else gloo.
    :param timeout: seconds every rank waits for the others (at set-up and in collectives).

    Stack it on ``@sky.compute`` and run the function with ``fn() @ pool`` (once per
    worker, so every rank joins). Used bare (``@sky.integrations.torch``) or called.
    """
    if backend is not None and backend not in BACKENDS:
        raise ConfigurationError(
            "backend",
            f"{backend!r} is not a torch.distributed backend",
            'Use "nccl" on GPUs or "gloo" on CPUs',
        )
    setup = TorchSetup(backend=backend, timeout=check_timeout(timeout))
    if fn is not None:
        return decorate(fn, setup)
    return lambda target: decorate(target, setup)
