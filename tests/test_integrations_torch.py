"""@sky.integrations.torch on real Local pools: gloo DDP, one rank per worker process.

2 nodes x 1 worker and 2 nodes x 2 workers: every rank sees the environment torchrun would
give it, the process group is set up once per worker and reused, DDP leaves identical weights
on every rank, and torch then JAX in one pool use separate rendezvous ports.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

import skyward as sky
from tests.gpu_fakes import smi_env


@sky.integrations.torch(backend="gloo", timeout=60)
@sky.compute
def train(steps: int = 3) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    started = time.monotonic()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial weights everywhere (DDP broadcasts them anyway)
    model = DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(100 + rank)  # a different shard on every rank
    for _ in range(steps):
        x = torch.randn(8, 4, generator=data)
        loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {
        "rank": rank,
        "world": world,
        "allreduce": total.item(),
        "weights": weights.tolist(),
        "pid": os.getpid(),
        "env": {
            k: os.environ[k]
            for k in (
                "RANK",
                "WORLD_SIZE",
                "LOCAL_RANK",
                "LOCAL_WORLD_SIZE",
                "NODE_RANK",
                "MASTER_ADDR",
                "MASTER_PORT",
            )
        },
        "info": (sky.instance_info().node, sky.instance_info().worker),
        "seconds": time.monotonic() - started,
    }


def _check_world(results: tuple[dict[str, Any], ...], nodes: int, workers: int) -> None:
    world = nodes * workers
    assert [r["rank"] for r in results] == list(range(world))
    assert {r["world"] for r in results} == {world}
    assert {r["allreduce"] for r in results} == {world * (world + 1) / 2}
    assert len({r["pid"] for r in results}) == world  # one process per rank
    first = results[0]["weights"]
    assert all(r["weights"] == first for r in results)  # DDP kept every rank identical
    for r in results:
        node, worker = r["info"]
        assert r["env"]["RANK"] == str(node * workers + worker)
        assert r["env"]["LOCAL_RANK"] == str(worker)
        assert r["env"]["LOCAL_WORLD_SIZE"] == str(workers)
        assert r["env"]["NODE_RANK"] == str(node)
        assert r["env"]["WORLD_SIZE"] == str(world)
    assert len({r["env"]["MASTER_PORT"] for r in results}) == 1


@pytest.mark.parametrize(("nodes", "workers"), [(2, 1), (2, 2)])
def test_ddp_weights_identical_on_every_rank(
    local_pool_factory: Callable[..., sky.ComputePool], nodes: int, workers: int
) -> None:
    with local_pool_factory(nodes=nodes, concurrency=workers, timeout=600) as pool:
        first = train() @ pool
        _check_world(first, nodes, workers)
        # The group stays up: the second call does not set it up again.
        second = train(steps=1) @ pool
        _check_world(second, nodes, workers)
        assert [r["pid"] for r in second] == [r["pid"] for r in first]


@sky.integrations.torch(backend="gloo", timeout=60)
@sky.compute
def torch_rank() -> tuple[int, str]:
    import torch.distributed as dist

    return dist.get_rank(), os.environ["MASTER_PORT"]


@sky.integrations.jax(timeout=60)
@sky.compute
def jax_sum() -> tuple[int, float, str]:
    import jax
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(jax.numpy.array([jax.process_index() + 1.0]))
    return jax.process_index(), float(gathered.sum()), os.environ["JAX_COORDINATOR_ADDRESS"]


def test_torch_then_jax_in_one_pool_use_their_own_ports(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    with local_pool_factory(nodes=2, timeout=600, env={"JAX_PLATFORMS": "cpu"}) as pool:
        torch_results = torch_rank() @ pool
        jax_results = jax_sum() @ pool
    assert [r[0] for r in torch_results] == [0, 1]
    assert [r[:2] for r in jax_results] == [(0, 3.0), (1, 3.0)]
    torch_port = int(torch_results[0][1])
    jax_port = int(jax_results[0][2].rsplit(":", 1)[1])
    assert jax_port == torch_port + 1


def test_thread_workers_cannot_be_two_ranks_of_one_process(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    with (
        local_pool_factory(nodes=1, concurrency=2, executor="thread", timeout=120) as pool,
        pytest.raises(sky.ConfigurationError, match='executor="process"'),
    ):
        torch_rank() @ pool


def test_single_process_world_and_bad_backends() -> None:
    # Outside a pool the function is a world of one, so the same code runs on a laptop.
    rank, _ = torch_rank.local()
    assert rank == 0
    with pytest.raises(sky.ConfigurationError, match="backend"):
        sky.integrations.torch(backend="tcp")
    needs_gpu = sky.integrations.torch(backend="nccl")(lambda: None)
    with pytest.raises(sky.ConfigurationError, match='backend="gloo"'):
        needs_gpu()


@sky.integrations.torch(backend="gloo", timeout=60)
@sky.compute
def gpu_choice() -> tuple[str, str | None, int]:
    from skyward_integrations._distributed import cuda_device

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    # torch sees no GPU here: count what the worker would see on the real machine.
    count = len(visible.split(",")) if visible else 8
    return (
        os.environ["LOCAL_RANK"],
        visible,
        cuda_device(int(os.environ["LOCAL_RANK"]), visible, count),
    )


def test_workers_pinned_to_a_gpu_each_use_cuda_0(
    monkeypatch: pytest.MonkeyPatch, local_pool_factory: Callable[..., sky.ComputePool]
) -> None:
    # A fake 8 x H200 machine (tests/gpu_fakes.py): the node gets 2 GPUs, one process
    # worker per GPU, each pinned to its own with CUDA_VISIBLE_DEVICES.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for key, value in smi_env("h200-x8").items():
        if key != "PATH":
            monkeypatch.setenv(key, value)
    with local_pool_factory(accelerator="2xH200", nodes=1, timeout=600) as pool:
        choices = gpu_choice() @ pool
    # LOCAL_RANK stays torchrun's worker index; the device is the one the worker sees.
    assert choices == (("0", "0", 0), ("1", "1", 0))
