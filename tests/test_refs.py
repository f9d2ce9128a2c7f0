"""``sky.put``: a value crosses the wire once per node however many calls use it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import skyward as sky

Factory = Callable[..., sky.ComputePool]
EXECUTORS = pytest.mark.parametrize("executor", ["process", "thread"])
SIZE = 8 * 1024 * 1024  # bytes of the array


@sky.compute
def total(array: np.ndarray, scale: float) -> tuple[float, int, bool]:
    return float(array.sum()) * scale, os.getpid(), bool(array.flags.writeable)


def _sent(pool: sky.ComputePool) -> list[int]:
    return [c.bytes_sent for c in pool._cluster.clients]  # type: ignore[union-attr]


@EXECUTORS
def test_a_large_array_crosses_the_wire_once_per_node(
    local_pool_factory: Factory, executor: str
) -> None:
    array = np.arange(SIZE // 8, dtype=np.float64)
    expected = float(array.sum())
    with local_pool_factory(nodes=2, concurrency=2, executor=executor) as pool:
        before = _sent(pool)
        ref = sky.put(array)
        captured: Any = ref  # on the node, the closure sees the array itself

        @sky.compute
        def closed_over(scale: float) -> float:
            return float(captured.sum()) * scale

        calls = [total(ref, 1.0) for _ in range(20)] + [closed_over(2.0) for _ in range(20)]
        results = sky.gather(*calls) >> pool
        after = _sent(pool)
    assert [r[0] for r in results[:20]] == [expected] * 20
    assert list(results[20:]) == [2 * expected] * 20
    assert all(not r[2] for r in results[:20]), "a ref's arrays are read-only views"
    if executor == "process":
        assert len({r[1] for r in results[:20]}) > 1, "several worker processes shared it"
    sent = [a - b for a, b in zip(after, before, strict=True)]
    for node_bytes in sent:
        # Once per node, plus 40 small call frames; passing the array would be ~20x.
        assert SIZE <= node_bytes < SIZE + 200_000, sent


def test_passing_the_array_each_call_costs_it_each_time(local_pool_factory: Factory) -> None:
    array = np.ones(SIZE // 8)
    with local_pool_factory(nodes=1) as pool:
        before = _sent(pool)[0]
        sky.gather(*(total(array, 1.0) for _ in range(5))) >> pool
        assert _sent(pool)[0] - before >= 5 * SIZE


@EXECUTORS
def test_release_removes_it_from_the_nodes(local_pool_factory: Factory, executor: str) -> None:
    with local_pool_factory(nodes=1, executor=executor) as pool:
        ref = sky.put({"weights": [1, 2, 3]})

        @sky.compute
        def stored() -> list[str]:
            from skyward import refs

            return [i for i in refs.stored() if not i.startswith("fn-")]

        @sky.compute
        def weights(value: dict[str, list[int]]) -> list[int]:
            return value["weights"]

        assert weights(ref) >> pool == [1, 2, 3]
        assert stored() >> pool == [ref.id]
        ref.release()
        ref.release()  # idempotent
        assert stored() >> pool == []
        with pytest.raises(sky.SerializationError, match="released"):
            weights(ref) >> pool
        again = sky.put({"weights": [4]})
        assert weights(again) >> pool == [4], "a new ref after a release"


def test_an_unpicklable_value_fails_at_put() -> None:
    import threading

    with pytest.raises(sky.SerializationError, match="cannot pickle"):
        sky.put(threading.Lock())


def test_refs_survive_a_dropped_connection(local_pool_factory: Factory) -> None:
    import socket

    array = np.ones(1024)
    with local_pool_factory(nodes=1) as pool:
        ref = sky.put(array)
        assert (total(ref, 1.0) >> pool)[0] == 1024.0
        client = pool._cluster.clients[0]  # type: ignore[union-attr]
        connection = client._stream
        assert isinstance(connection, socket.socket)
        connection.shutdown(socket.SHUT_RDWR)
        assert (total(ref, 3.0) >> pool)[0] == 3072.0
