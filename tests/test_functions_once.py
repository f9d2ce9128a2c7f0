"""A call's function crosses the wire once per node, then travels as its hash."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import skyward as sky

Factory = Callable[..., sky.ComputePool]
EXECUTORS = pytest.mark.parametrize("executor", ["process", "thread"])
FACTOR = 2


@sky.compute
def scaled(x: int) -> int:
    return x * FACTOR


@sky.compute
def function_files() -> int:
    from skyward import refs

    return sum(1 for i in refs.stored() if i.startswith("fn-"))


def _sent(pool: sky.ComputePool) -> list[int]:
    return [c.bytes_sent for c in pool._cluster.clients]  # type: ignore[union-attr]


@EXECUTORS
def test_a_big_function_crosses_once_per_node(local_pool_factory: Factory, executor: str) -> None:
    table = os.urandom(1 << 20)  # captured by the closure: part of the function's pickle

    @sky.compute
    def lookup(i: int) -> int:
        return table[i]

    with local_pool_factory(nodes=2, concurrency=2, executor=executor) as pool:
        before = _sent(pool)
        results = sky.gather(*(lookup(i) for i in range(40))) >> pool
        after = _sent(pool)
        assert list(results) == list(table[:40])
        for node_bytes in (a - b for a, b in zip(after, before, strict=True)):
            assert len(table) <= node_bytes < len(table) + 50_000, node_bytes
        files = function_files() @ pool
        assert files == (files[0],) * 4, "every process of a node sees the same store"
        assert files[0] >= 1


@EXECUTORS
def test_changed_globals_and_edited_functions_are_sent_again(
    local_pool_factory: Factory, executor: str
) -> None:
    global FACTOR
    with local_pool_factory(nodes=1, executor=executor) as pool:
        assert scaled(5) >> pool == 10
        first = function_files() >> pool
        assert scaled(6) >> pool == 12
        assert function_files() >> pool == first, "the same function is not stored again"
        FACTOR = 3
        try:
            assert scaled(5) >> pool == 15, "the new value of the global reached the node"
        finally:
            FACTOR = 2
        namespace: dict[str, object] = {}
        for body, expected in (("x + 1", 6), ("x + 100", 105)):  # a notebook cell, edited
            exec(f"def edited(x):\n    return {body}\n", namespace)
            function = sky.compute(namespace["edited"])  # type: ignore[call-overload]
            assert function(5) >> pool == expected


def test_a_restarted_agent_gets_the_function_again(local_pool_factory: Factory) -> None:
    import signal

    with local_pool_factory(nodes=1, executor="thread") as pool:
        assert scaled(1) >> pool == 2

        @sky.compute
        def die() -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        with pytest.raises(sky.WorkerLostError):
            die() >> pool
        assert scaled(4) >> pool == 8
