"""sky.DistributedSampler matches torch's DistributedSampler: equal shares, drop_last, ranks
per worker (a rank with an extra batch would hang DDP's all-reduce)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch.utils.data

import skyward as sky
from skyward.cluster import InstanceInfo, set_node_info


@pytest.fixture
def on_worker() -> Iterator[object]:
    def place(node: int, nodes: int, worker: int = 0, workers: int = 1) -> None:
        set_node_info(
            InstanceInfo(
                node=node, total_nodes=nodes, worker=worker, workers_per_node=workers, job_id="j"
            )
        )

    yield place
    set_node_info(None)


def _shares(dataset: list[int], replicas: int, **options: object) -> list[list[int]]:
    return [
        list(sky.DistributedSampler(dataset, num_replicas=replicas, rank=r, **options))  # type: ignore[arg-type]
        for r in range(replicas)
    ]


@pytest.mark.parametrize("length", [0, 1, 4, 5, 7, 37])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_same_shares_as_torch_without_shuffle(length: int, replicas: int, drop_last: bool) -> None:
    dataset = list(range(length))
    ours = _shares(dataset, replicas, shuffle=False, drop_last=drop_last)
    theirs = [
        list(
            torch.utils.data.DistributedSampler(
                dataset, num_replicas=replicas, rank=r, shuffle=False, drop_last=drop_last
            )
        )
        for r in range(replicas)
    ]
    assert ours == theirs
    lengths = {
        len(sky.DistributedSampler(dataset, num_replicas=replicas, rank=r, drop_last=drop_last))
        for r in range(replicas)
    }
    assert lengths == {len(theirs[0])}


def test_five_samples_on_two_ranks_are_three_and_three() -> None:
    shares = _shares(list(range(5)), 2, shuffle=True, seed=3)
    assert [len(s) for s in shares] == [3, 3]
    assert set(shares[0] + shares[1]) == set(range(5))
    dropped = _shares(list(range(5)), 2, shuffle=True, seed=3, drop_last=True)
    assert [len(s) for s in dropped] == [2, 2]
    assert len(set(dropped[0] + dropped[1])) == 4


def test_rank_is_the_worker_rank(on_worker: object) -> None:
    place = on_worker
    dataset = list(range(10))
    seen = []
    for node in range(2):
        for worker in range(2):
            place(node, 2, worker, 2)  # type: ignore[operator]
            sampler = sky.DistributedSampler(dataset, shuffle=True)
            assert (sampler.rank, sampler.num_replicas) == (node * 2 + worker, 4)
            sampler.set_epoch(1)
            seen.append(list(sampler))
    assert {len(s) for s in seen} == {3}
    assert set().union(*seen) == set(dataset)
    place(0, 2, 0, 2)  # type: ignore[operator]
    epoch0 = list(sky.DistributedSampler(dataset, shuffle=True))
    assert epoch0 != seen[0]  # set_epoch changes the shuffle


def test_bad_rank_is_a_configuration_error() -> None:
    with pytest.raises(sky.ConfigurationError, match="rank"):
        sky.DistributedSampler([1, 2], num_replicas=2, rank=2)
    with pytest.raises(sky.ConfigurationError, match="num_replicas"):
        sky.DistributedSampler([1, 2], num_replicas=0)


def test_rendezvous_ports_are_reserved_on_node_zero() -> None:
    from skyward.cluster import RENDEZVOUS_PORTS

    info = InstanceInfo(node=1, total_nodes=2, head_port=40000)
    assert [info.rendezvous_port(i) for i in (0, 1, 2)] == [40000, 40001, 40002]
    with pytest.raises(ValueError, match="outside"):
        info.rendezvous_port(RENDEZVOUS_PORTS)
    # That Local holds them free for the frameworks: tests/test_port_reservation.py.


def test_configuration_errors_survive_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(sky.ConfigurationError("backend", "bad", "fix it")))
    assert isinstance(error, sky.ConfigurationError)
    assert (error.field, error.problem, error.fix) == ("backend", "bad", "fix it")


def test_shard_follows_the_worker_rank(on_worker: object) -> None:
    place = on_worker
    data = list(range(10))
    parts = []
    for node in range(2):
        for worker in range(2):
            place(node, 2, worker, 2)  # type: ignore[operator]
            parts.append(sky.shard(data))
    # `@ pool` runs once on every worker: the four parts cover the data exactly once.
    assert sorted(i for part in parts for i in part) == data
    assert [len(p) for p in parts] == [3, 3, 2, 2]


def test_local_rank_is_the_worker_and_the_gpu_is_the_first_visible() -> None:
    from skyward_integrations._distributed import cuda_device, ranks

    me = ranks(InstanceInfo(node=1, total_nodes=2, worker=1, workers_per_node=2))
    assert me.env(29500)["LOCAL_RANK"] == "1"  # torchrun's: the worker on its node
    assert me.env(29500)["RANK"] == "3"
    # A worker pinned to its own GPU(s) uses the first it sees, whatever its LOCAL_RANK.
    assert cuda_device(1, "3", 1) == 0
    assert cuda_device(1, "2,3", 2) == 0
    assert cuda_device(1, "MIG-5f0c", 1) == 0
    # Nothing pinned it (it sees every GPU of the node): LOCAL_RANK picks, as under torchrun.
    assert cuda_device(1, None, 8) == 1
    assert cuda_device(1, "", 8) == 1
    assert cuda_device(9, None, 8) == 1
    with pytest.raises(ValueError, match="no CUDA device"):
        cuda_device(0, None, 0)
