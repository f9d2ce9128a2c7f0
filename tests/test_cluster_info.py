"""instance_info(), is_head, per-thread worker index and current_accelerator()."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

import skyward as sky
from skyward.cluster import (
    InstanceInfo,
    current_accelerator,
    instance_info,
    set_node_info,
    set_worker,
)

T = TypeVar("T")


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread (so worker indices never stick to the test thread)."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(5)
    if errors:
        raise errors[0]
    return out[0]


@pytest.fixture
def node_info() -> Iterator[Callable[[InstanceInfo], None]]:
    try:
        yield set_node_info
    finally:
        set_node_info(None)


def test_defaults_outside_a_pool() -> None:
    info = sky.instance_info()
    assert info.node == 0
    assert info.total_nodes == 1
    assert info.is_head is True
    assert info.accelerators == []
    assert info.worker == 0
    assert info.workers_per_node == 1
    assert isinstance(info.job_id, str)
    assert info.job_id
    assert isinstance(info.head_addr, str)
    assert isinstance(info.head_port, int)


def test_top_level_names() -> None:
    assert sky.instance_info is instance_info
    assert sky.current_accelerator is current_accelerator
    assert sky.InstanceInfo is InstanceInfo


def test_current_accelerator_outside_a_pool_is_none() -> None:
    assert current_accelerator() is None


@pytest.mark.parametrize(("node", "head"), [(0, True), (1, False), (7, False)])
def test_is_head(node: int, head: bool) -> None:
    assert InstanceInfo(node=node, total_nodes=8).is_head is head


def test_node_info_set_by_the_agent_is_returned(
    node_info: Callable[[InstanceInfo], None],
) -> None:
    info = InstanceInfo(
        node=2,
        total_nodes=4,
        accelerators=["A100", "A100"],
        head_addr="10.0.0.1",
        head_port=29500,
        job_id="pool-123",
        workers_per_node=3,
    )
    node_info(info)

    got = sky.instance_info()
    assert got == info
    assert got.is_head is False
    assert current_accelerator() == "A100"


def test_node_info_reset_restores_defaults(node_info: Callable[[InstanceInfo], None]) -> None:
    node_info(InstanceInfo(node=3, total_nodes=4, job_id="x"))
    assert sky.instance_info().node == 3
    set_node_info(None)
    assert sky.instance_info().node == 0
    assert sky.instance_info().total_nodes == 1


def test_current_accelerator_on_cpu_node(node_info: Callable[[InstanceInfo], None]) -> None:
    node_info(InstanceInfo(node=0, total_nodes=2, accelerators=[]))
    assert current_accelerator() is None


def test_current_accelerator_takes_the_first(node_info: Callable[[InstanceInfo], None]) -> None:
    node_info(InstanceInfo(node=0, total_nodes=1, accelerators=["H100", "T4"]))
    assert current_accelerator() == "H100"


def test_worker_index_is_per_thread(node_info: Callable[[InstanceInfo], None]) -> None:
    node_info(
        InstanceInfo(
            node=1, total_nodes=2, job_id="pool-9", accelerators=["L4"], workers_per_node=4
        )
    )
    barrier = threading.Barrier(4)
    seen: dict[int, InstanceInfo] = {}
    lock = threading.Lock()

    def worker(index: int) -> None:
        set_worker(index)
        barrier.wait(5)  # every thread has set its index before anyone reads
        info = instance_info()
        with lock:
            seen[index] = info

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)

    assert sorted(seen) == [0, 1, 2, 3]
    for index, info in seen.items():
        assert info.worker == index
        # Everything else is the node's.
        assert (info.node, info.total_nodes, info.job_id) == (1, 2, "pool-9")
        assert info.workers_per_node == 4
        assert info.accelerators == ["L4"]
    # The test thread never called set_worker.
    assert instance_info().worker == 0


def test_worker_index_without_node_info() -> None:
    def read() -> InstanceInfo:
        set_worker(2)
        return instance_info()

    info = in_thread(read)
    assert info.worker == 2
    assert info.node == 0
    assert info.total_nodes == 1


def test_thread_without_set_worker_sees_worker_zero(
    node_info: Callable[[InstanceInfo], None],
) -> None:
    node_info(InstanceInfo(node=0, total_nodes=1, workers_per_node=2))
    assert in_thread(lambda: instance_info().worker) == 0


def test_worker_copy_does_not_share_the_accelerator_list(
    node_info: Callable[[InstanceInfo], None],
) -> None:
    base = InstanceInfo(node=0, total_nodes=1, accelerators=["T4"], workers_per_node=2)
    node_info(base)

    def mutate() -> list[str]:
        set_worker(1)
        info = instance_info()
        info.accelerators.append("changed")
        return info.accelerators

    assert in_thread(mutate) == ["T4", "changed"]
    assert base.accelerators == ["T4"]


def test_instance_info_is_frozen() -> None:
    with pytest.raises(AttributeError):
        sky.instance_info().node = 3  # type: ignore[misc]
