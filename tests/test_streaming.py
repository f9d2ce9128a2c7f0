"""Streamed results: a generator function run with ``>> pool`` yields as the node produces,
with credit-based backpressure, mid-stream exceptions, early close, and reconnects."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from tests.conftest import wait_until

Factory = Callable[..., sky.ComputePool]
EXECUTORS = pytest.mark.parametrize("executor", ["process", "thread"])


def _produced(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@sky.compute
def count(n: int, log: str | None = None, pause: float = 0.0) -> Iterator[int]:
    for i in range(n):
        if log is not None:
            with open(log, "a") as handle:  # the node's own record of what it produced
                handle.write(f"{i}\n")
        yield i
        time.sleep(pause)


@sky.compute
def wait_for_flag(flag: str) -> Iterator[str]:
    yield "first"
    deadline = time.monotonic() + 30
    while not Path(flag).exists():  # only the consumer, having item 0, creates it
        if time.monotonic() > deadline:
            raise TimeoutError("the first item never reached the consumer")
        time.sleep(0.02)
    yield "second"


@sky.compute
def fails_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"boom after {n}")


@sky.compute
def endless(log: str, closed: str) -> Iterator[int]:
    i = 0
    try:
        while True:
            with open(log, "a") as handle:
                handle.write(f"{i}\n")
            yield i
            i += 1
    finally:
        Path(closed).write_text("closed")


@sky.compute
def square(x: int) -> int:
    return x * x


@EXECUTORS
def test_items_arrive_as_the_node_yields_them(
    local_pool_factory: Factory, tmp_path: Path, executor: str
) -> None:
    flag = tmp_path / "flag"
    with local_pool_factory(nodes=1, executor=executor) as pool:
        items = wait_for_flag(str(flag)) >> pool
        assert not isinstance(items, list)
        assert next(items) == "first"
        flag.write_text("go")
        assert list(items) == ["second"]
        assert list(count(1000) >> pool) == list(range(1000))
        assert list(count(0) >> pool) == []
        assert square(7) >> pool == 49, "the worker is free again"


@EXECUTORS
def test_a_slow_consumer_holds_the_generator_back(
    local_pool_factory: Factory, tmp_path: Path, executor: str
) -> None:
    log = tmp_path / "produced"
    with local_pool_factory(nodes=1, executor=executor) as pool:
        pool.stream_window = 4
        items = count(200, str(log)) >> pool
        taken = [next(items)]
        time.sleep(1.5)  # the node runs ahead as far as its credit allows, no further
        ahead = _produced(log)
        assert 1 + 4 <= ahead <= 1 + 4 + 1, ahead
        for _ in range(50):
            taken.append(next(items))
        time.sleep(1.0)
        ahead = _produced(log)
        assert len(taken) + 4 - 2 <= ahead <= len(taken) + 4 + 1, (len(taken), ahead)
        taken.extend(items)
    assert taken == list(range(200))
    assert _produced(log) == 200


@EXECUTORS
def test_an_exception_mid_stream_arrives_after_the_items_before_it(
    local_pool_factory: Factory, executor: str
) -> None:
    with local_pool_factory(nodes=1, executor=executor) as pool:
        items = fails_after(3) >> pool
        got = [next(items) for _ in range(3)]
        with pytest.raises(ValueError, match="boom after 3") as caught:
            next(items)
        assert got == [0, 1, 2]
        assert "fails_after" in caught.value.remote_traceback  # type: ignore[attr-defined]
        assert "run_task" not in caught.value.remote_traceback  # type: ignore[attr-defined]


@EXECUTORS
def test_closing_the_iterator_stops_the_generator_on_the_node(
    local_pool_factory: Factory, tmp_path: Path, executor: str
) -> None:
    log, closed = tmp_path / "produced", tmp_path / "closed"
    with local_pool_factory(nodes=1, executor=executor) as pool:
        pool.stream_window = 4
        items = endless(str(log), str(closed)) >> pool
        assert [next(items) for _ in range(3)] == [0, 1, 2]
        items.close()  # type: ignore[attr-defined]
        assert wait_until(closed.exists, 15), "the generator's finally ran on the node"
        assert _produced(log) <= 3 + 4 + 1
        assert square(3) >> pool == 9, "the worker took the next call"
        # Dropping the iterator (a `break` out of a loop) closes it too.
        for item in endless(str(log), str(tmp_path / "closed2")) >> pool:
            if item == 1:
                break
        assert wait_until((tmp_path / "closed2").exists, 15)


def test_a_generator_function_elsewhere_than_run_is_a_clear_error(
    local_pool_factory: Factory,
) -> None:
    with local_pool_factory(nodes=1) as pool, pytest.raises(TypeError, match=">> pool"):
        sky.gather(count(3)) >> pool


@EXECUTORS
def test_a_dropped_connection_loses_no_item_of_an_open_stream(
    local_pool_factory: Factory, executor: str
) -> None:
    with local_pool_factory(nodes=1, executor=executor) as pool:
        pool.stream_window = 8
        items = count(300, None, 0.005) >> pool
        got = [next(items) for _ in range(20)]
        client = pool._cluster.clients[0]  # type: ignore[union-attr]
        for _ in range(2):
            time.sleep(0.2)
            connection = client._stream
            assert isinstance(connection, socket.socket)
            connection.shutdown(socket.SHUT_RDWR)  # the link drops; the agent lives on
            got.extend(next(items) for _ in range(30))
        got.extend(items)
        assert got == list(range(300)), "no item lost or doubled"
        assert square(4) >> pool == 16


@sky.compute(timeout=1.5)
def slow_to_consume(log: str) -> Iterator[int]:
    for i in range(1000):
        with open(log, "a") as handle:
            handle.write(f"{i}\n")
        yield i


@EXECUTORS
def test_a_stream_past_its_timeout_fails_where_it_stands(
    local_pool_factory: Factory, tmp_path: Path, executor: str
) -> None:
    log = tmp_path / "produced"
    with local_pool_factory(nodes=1, executor=executor) as pool:
        pool.stream_window = 2
        items = slow_to_consume(str(log)) >> pool
        assert next(items) == 0
        time.sleep(2.5)  # the consumer stalls past the call's timeout
        got = list(_until_error(items))
        assert got[:-1] == list(range(1, len(got)))
        assert isinstance(got[-1], sky.TaskTimeoutError)
        assert square(2) >> pool == 4, "the worker is free again"
        assert _produced(log) <= 1 + 2 + 1


def _until_error(items: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from items
    except Exception as error:
        yield error


@sky.compute
def big_items(log: str) -> Iterator[bytes]:
    for i in range(40):
        with open(log, "a") as handle:
            handle.write(f"{i}\n")
        yield bytes(16 * 1024 * 1024)


@EXECUTORS
def test_large_items_are_held_back_by_bytes_too(
    local_pool_factory: Factory, tmp_path: Path, executor: str
) -> None:
    log = tmp_path / "produced"
    with local_pool_factory(nodes=1, executor=executor) as pool:
        pool.stream_window = 1000  # items alone would let all 640 MiB run ahead
        items = big_items(str(log)) >> pool
        assert len(next(items)) == 16 * 1024 * 1024
        time.sleep(1.5)
        # 64 MiB ahead of the consumer is 4 items, plus the one being produced.
        assert _produced(log) <= 1 + 4 + 1, _produced(log)
        assert sum(1 for _ in items) == 39
