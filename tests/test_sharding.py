"""partition_indices and sky.shard(): exact partitions, aligned arrays, simulated nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import skyward as sky
from skyward.cluster import InstanceInfo, set_node_info
from skyward.errors import ConfigurationError
from skyward.sharding import partition_indices

PAIRS = [
    (0, 1),
    (0, 3),
    (1, 1),
    (1, 4),
    (2, 5),
    (3, 3),
    (5, 2),
    (7, 3),
    (10, 4),
    (10, 10),
    (11, 4),
    (100, 7),
    (1000, 8),
    (1001, 16),
    (17, 1),
]


def check_partition(parts: list[list[int]], length: int) -> None:
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(length)), "every index exactly once"
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1, f"sizes differ by more than one: {sizes}"


@pytest.fixture
def on_node() -> Iterator[Callable[..., None]]:
    """Pretend to run on node ``node`` of ``total`` (restored to 'no pool' afterwards)."""

    def set_node(node: int, total: int, job_id: str = "j") -> None:
        set_node_info(InstanceInfo(node=node, total_nodes=total, job_id=job_id))

    try:
        yield set_node
    finally:
        set_node_info(None)


def across_nodes(
    on_node: Callable[..., None], total: int, *arrays: Any, job_id: str = "j", **options: Any
) -> list[Any]:
    """Call shard(*arrays, **options) as each of ``total`` nodes would."""
    results = []
    for node in range(total):
        on_node(node, total, job_id)
        results.append(sky.shard(*arrays, **options))
    return results


# -- partition_indices --------------------------------------------------------------------


@pytest.mark.parametrize(("length", "parts"), PAIRS)
def test_partition_is_exact(length: int, parts: int) -> None:
    chunks = [partition_indices(length, p, parts) for p in range(parts)]
    check_partition(chunks, length)
    # Without shuffle each part is contiguous and parts follow each other in order.
    assert [i for c in chunks for i in c] == list(range(length))


@pytest.mark.parametrize(("length", "parts"), PAIRS)
def test_shuffled_partition_with_a_shared_seed_is_exact(length: int, parts: int) -> None:
    chunks = [partition_indices(length, p, parts, shuffle=True, seed=1234) for p in range(parts)]
    check_partition(chunks, length)


def test_shuffle_actually_shuffles_and_is_reproducible() -> None:
    first = partition_indices(1000, 0, 1, shuffle=True, seed=7)
    again = partition_indices(1000, 0, 1, shuffle=True, seed=7)
    other = partition_indices(1000, 0, 1, shuffle=True, seed=8)
    assert first == again
    assert first != list(range(1000))
    assert first != other


def test_fewer_items_than_parts_leaves_some_parts_empty() -> None:
    chunks = [partition_indices(2, p, 5) for p in range(5)]
    assert [len(c) for c in chunks] == [1, 1, 0, 0, 0]


def test_larger_parts_come_first() -> None:
    assert [len(partition_indices(11, p, 4)) for p in range(4)] == [3, 3, 3, 2]


@pytest.mark.parametrize(("part", "parts"), [(-1, 3), (3, 3), (0, 0)])
def test_part_out_of_range(part: int, parts: int) -> None:
    with pytest.raises(ValueError):
        partition_indices(10, part, parts)


# -- shard() outside a pool ---------------------------------------------------------------


def test_outside_a_pool_shard_returns_the_whole_data() -> None:
    data = list(range(10))
    assert sky.instance_info().total_nodes == 1
    assert sky.shard(data) == data
    assert sky.shard(tuple(data)) == tuple(data)
    array = np.arange(10)
    np.testing.assert_array_equal(sky.shard(array), array)


def test_outside_a_pool_several_arrays_come_back_as_a_tuple() -> None:
    x, y = sky.shard([1, 2, 3], ("a", "b", "c"))
    assert x == [1, 2, 3]
    assert y == ("a", "b", "c")


def test_outside_a_pool_shuffle_keeps_every_item() -> None:
    data = list(range(100))
    shuffled = sky.shard(data, shuffle=True, seed=3)
    assert sorted(shuffled) == data
    assert shuffled != data


def test_shard_does_not_modify_the_input() -> None:
    data = list(range(20))
    sky.shard(data, shuffle=True, seed=1)
    assert data == list(range(20))


# -- shard() on simulated nodes -----------------------------------------------------------


@pytest.mark.parametrize(("length", "total"), [(10, 3), (3, 4), (0, 2), (100, 7)])
def test_lists_are_partitioned_across_nodes(
    on_node: Callable[..., None], length: int, total: int
) -> None:
    data = [f"item{i}" for i in range(length)]
    parts = across_nodes(on_node, total, data)
    assert all(isinstance(p, list) for p in parts)
    assert [x for p in parts for x in p] == data
    check_partition([[data.index(x) for x in p] for p in parts], length)


def test_tuples_stay_tuples(on_node: Callable[..., None]) -> None:
    data = tuple(range(9))
    parts = across_nodes(on_node, 2, data)
    assert parts == [(0, 1, 2, 3, 4), (5, 6, 7, 8)]


def test_each_node_gets_its_own_part(on_node: Callable[..., None]) -> None:
    on_node(1, 3)
    assert sky.shard(list(range(10))) == [4, 5, 6]
    on_node(2, 3)
    assert sky.shard(list(range(10))) == [7, 8, 9]


def test_numpy_arrays_are_partitioned(on_node: Callable[..., None]) -> None:
    array = np.arange(40).reshape(20, 2)
    parts = across_nodes(on_node, 3, array)
    assert all(isinstance(p, np.ndarray) for p in parts)
    assert [p.shape for p in parts] == [(7, 2), (7, 2), (6, 2)]
    np.testing.assert_array_equal(np.concatenate(parts), array)


def test_several_arrays_stay_aligned(on_node: Callable[..., None]) -> None:
    x = np.arange(50) * 10
    y = [f"label{i}" for i in range(50)]
    z = tuple(range(50))
    parts = across_nodes(on_node, 4, x, y, z, shuffle=True, seed=99)
    seen = []
    for x_part, y_part, z_part in parts:
        assert len(x_part) == len(y_part) == len(z_part)
        for xv, yv, zv in zip(x_part, y_part, z_part, strict=True):
            assert xv == zv * 10
            assert yv == f"label{zv}"
        seen.extend(z_part)
    assert sorted(seen) == list(range(50))


def test_shuffle_without_seed_is_a_partition_across_nodes(on_node: Callable[..., None]) -> None:
    data = list(range(101))
    parts = across_nodes(on_node, 5, data, shuffle=True)
    check_partition(parts, 101)
    assert [x for p in parts for x in p] != data  # really shuffled


def test_shuffle_without_seed_is_stable_for_one_job(on_node: Callable[..., None]) -> None:
    data = list(range(200))
    first = across_nodes(on_node, 2, data, shuffle=True, job_id="job-a")
    again = across_nodes(on_node, 2, data, shuffle=True, job_id="job-a")
    other = across_nodes(on_node, 2, data, shuffle=True, job_id="job-b")
    assert first == again
    assert first != other


def test_shuffle_with_seed_ignores_the_job(on_node: Callable[..., None]) -> None:
    data = list(range(200))
    a = across_nodes(on_node, 2, data, shuffle=True, seed=5, job_id="job-a")
    b = across_nodes(on_node, 2, data, shuffle=True, seed=5, job_id="job-b")
    assert a == b


# -- errors -------------------------------------------------------------------------------


def test_different_lengths_are_an_error(on_node: Callable[..., None]) -> None:
    on_node(0, 2)
    with pytest.raises(ConfigurationError) as info:
        sky.shard([1, 2, 3], [1, 2])
    assert info.value.field == "shard"
    assert isinstance(info.value, ValueError)


def test_different_lengths_are_an_error_outside_a_pool() -> None:
    with pytest.raises(ConfigurationError):
        sky.shard(np.arange(3), np.arange(4))


@pytest.mark.parametrize("data", [{1, 2, 3}, {"a": 1, "b": 2}, "abc", b"abc"])
def test_unsupported_type_is_an_error(on_node: Callable[..., None], data: object) -> None:
    on_node(0, 2)
    with pytest.raises(ConfigurationError) as info:
        sky.shard(data)
    assert info.value.field == "shard"


def test_nothing_to_shard_is_an_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        sky.shard()
    assert info.value.field == "shard"


@pytest.mark.parametrize("data", [42, (i for i in range(3))])
def test_unsized_unsupported_type_is_a_configuration_error(data: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        sky.shard(data)
    assert info.value.field == "shard"


def test_distributed_sampler_partitions_each_epoch() -> None:
    from skyward.cluster import InstanceInfo, set_node_info
    from skyward.sharding import DistributedSampler

    dataset = list(range(37))
    try:
        per_epoch = []
        for epoch in (0, 1):
            seen = []
            for node in range(3):
                set_node_info(InstanceInfo(node=node, total_nodes=3, job_id="j"))
                sampler = DistributedSampler(dataset, shuffle=True)
                sampler.set_epoch(epoch)
                indices = list(sampler)
                assert len(sampler) == len(indices)
                seen.append(indices)
            # Equal lengths (DDP needs them): 37 over 3 is padded to 39 by wrapping around.
            assert {len(part) for part in seen} == {13}
            assert {i for part in seen for i in part} == set(dataset)
            per_epoch.append(seen)
        assert per_epoch[0] != per_epoch[1], "set_epoch changes the shuffle"
    finally:
        set_node_info(None)
