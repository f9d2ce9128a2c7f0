"""Process workers: one process per worker, crash isolation, per-call timeouts and retries."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from tests.conftest import agent_processes

Factory = Callable[..., sky.ComputePool]


@sky.compute
def whoami(seconds: float = 0.0) -> tuple[int, int, int, int]:
    time.sleep(seconds)
    info = sky.instance_info()
    return info.node, info.worker, info.workers_per_node, os.getpid()


@sky.compute
def die(how: str) -> None:
    if how == "exit":
        os._exit(7)
    elif how == "segfault":
        ctypes.string_at(0)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)


@sky.compute
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _count(path: str) -> int:
    """Append one line per attempt; the node's own record of how often a call ran."""
    with open(path, "a") as handle:
        handle.write("attempt\n")
    with open(path) as handle:
        return sum(1 for _ in handle)


@sky.compute(retries=3, retry_on=(ConnectionError,))
def flaky(path: str, succeed_on: int) -> int:
    attempt = _count(path)
    if attempt < succeed_on:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@sky.compute(retries=2)
def crashes_until(path: str, succeed_on: int) -> int:
    attempt = _count(path)
    if attempt < succeed_on:
        os._exit(3)
    return attempt


def test_each_worker_is_its_own_process_with_its_own_index(local_pool_factory: Factory) -> None:
    with local_pool_factory(nodes=2, concurrency=2) as pool:
        seen = sky.gather(*(whoami(0.2) for _ in range(16))) >> pool
        every = whoami() @ pool
    assert {(n, w) for n, w, _, _ in seen} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    pids = {(n, w): pid for n, w, _, pid in seen}
    assert len(set(pids.values())) == 4, "four workers, four processes"
    assert [(n, w) for n, w, _, _ in every] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {pid for *_, pid in every} == set(pids.values()), "workers are reused across calls"
    assert {per for _, _, per, _ in every} == {2}


def test_thread_executor_keeps_one_process_per_node(local_pool_factory: Factory) -> None:
    with local_pool_factory(nodes=1, concurrency=2, executor="thread") as pool:
        every = whoami() @ pool
    assert [w for _, w, _, _ in every] == [0, 1]
    assert len({pid for *_, pid in every}) == 1


@pytest.mark.parametrize(
    ("how", "cause"),
    [
        ("exit", "exited with code 7"),
        ("segfault", "killed by SIGSEGV"),
        ("sigkill", "killed by SIGKILL"),
    ],
)
def test_a_dying_worker_fails_only_its_call(
    local_pool_factory: Factory, how: str, cause: str
) -> None:
    with local_pool_factory(nodes=1, concurrency=2) as pool:
        before = {pid for *_, pid in whoami() @ pool}
        neighbour = pool.submit(nap(1.5))
        time.sleep(0.2)
        with pytest.raises(sky.WorkerLostError) as caught:
            die(how) >> pool
        error = caught.value
        assert (error.node, error.cause) == (0, cause)
        assert error.worker in (0, 1)
        assert f"worker {error.worker}" in str(error)
        assert neighbour.result(timeout=30) == 1.5, "the other worker's call finished"
        after = {pid for *_, pid in whoami() @ pool}
        assert len(after) == 2, "the dead worker was replaced"
        assert len(before & after) == 1
        assert len(agent_processes(pool.pool_id)) == 1, "the agent itself lived on"


def test_a_call_past_its_timeout_is_killed_and_its_worker_replaced(
    local_pool_factory: Factory,
) -> None:
    with local_pool_factory(nodes=1) as pool:
        (before,) = {pid for *_, pid in whoami() @ pool}
        started = time.monotonic()
        with pytest.raises(sky.TaskTimeoutError) as caught:
            pool.submit(nap(60), timeout=1).result()
        assert time.monotonic() - started < 10
        assert isinstance(caught.value, TimeoutError)
        assert "timeout of 1s" in str(caught.value)
        (after,) = {pid for *_, pid in whoami() @ pool}
        assert after != before
        with pytest.raises(ProcessLookupError):
            os.kill(before, 0)


def test_a_thread_past_its_timeout_is_answered_on_time(local_pool_factory: Factory) -> None:
    with local_pool_factory(nodes=1, executor="thread") as pool:
        started = time.monotonic()
        with pytest.raises(sky.TaskTimeoutError):
            pool.submit(nap(3), timeout=0.5).result()
        assert time.monotonic() - started < 2.5


def test_retries_on_listed_exceptions_count_attempts(
    local_pool_factory: Factory, tmp_path: Path
) -> None:
    with local_pool_factory(nodes=1) as pool:
        assert flaky(str(tmp_path / "a"), 3) >> pool == 3
        with pytest.raises(ConnectionError) as caught:
            flaky(str(tmp_path / "b"), 10) >> pool
        assert "each of its 4 attempts" in " ".join(caught.value.__notes__)
        assert (tmp_path / "b").read_text().count("attempt") == 4
        # not listed: no retry
        with pytest.raises(ConnectionError):
            pool.submit(flaky(str(tmp_path / "c"), 10), retry_on=()).result()
        assert (tmp_path / "c").read_text().count("attempt") == 1
        with pytest.raises(ConnectionError):
            pool.submit(flaky(str(tmp_path / "d"), 10), retries=0).result()
        assert (tmp_path / "d").read_text().count("attempt") == 1


def test_a_lost_worker_is_retried(local_pool_factory: Factory, tmp_path: Path) -> None:
    with local_pool_factory(nodes=1) as pool:
        assert crashes_until(str(tmp_path / "a"), 3) >> pool == 3
        with pytest.raises(sky.WorkerLostError):
            crashes_until(str(tmp_path / "b"), 9) >> pool
        assert (tmp_path / "b").read_text().count("attempt") == 3


def test_submit_and_map(local_pool_factory: Factory) -> None:
    with local_pool_factory(nodes=2, concurrency=2) as pool:
        future = pool.submit(nap(0.1))
        assert future.result(timeout=30) == 0.1
        assert list(pool.map(lambda x, y: x * y, range(50), range(50))) == [
            i * i for i in range(50)
        ]
        unordered = list(pool.map(nap, [0.6, 0.0, 0.3, 0.0], ordered=False))
        assert sorted(unordered) == [0.0, 0.0, 0.3, 0.6]
        assert unordered[-1] == 0.6
        lazy = pool.map(nap, [0.0] * 1000)
        assert next(lazy) == 0.0, "map yields before it has sent everything"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retry_on": (ValueError, "x")}, "retry_on"),
        ({"retry_on": (int,)}, "retry_on"),
    ],
)
def test_call_options_are_validated(options: dict[str, Any], field: str) -> None:
    with pytest.raises(sky.ConfigurationError, match=field):
        sky.compute(**options)(time.sleep)


def test_executor_is_validated() -> None:
    with pytest.raises(sky.ConfigurationError, match="executor"):
        sky.ComputePool(provider=sky.Local(), executor="fork")  # type: ignore[arg-type]


def test_output_of_worker_processes_streams_and_is_complete(local_pool_factory: Factory) -> None:
    lines: list[str] = []
    lock = threading.Lock()

    def collect(event: Any) -> None:
        if isinstance(event, sky.LogLine):
            with lock:
                lines.append(event.line)

    @sky.compute
    def shout(i: int) -> int:
        for j in range(20):
            print(f"call {i} line {j}")
        return i

    with local_pool_factory(nodes=1, concurrency=2, on_event=collect) as pool:
        assert sky.gather(*(shout(i) for i in range(4))) >> pool == (0, 1, 2, 3)
    assert sorted(line for line in lines if line.startswith("call ")) == sorted(
        f"call {i} line {j}" for i in range(4) for j in range(20)
    )


@sky.compute
def fail_after(seconds: float, message: str) -> None:
    time.sleep(seconds)
    raise ValueError(message)


def test_gather_in_completion_order_and_with_exceptions(local_pool_factory: Factory) -> None:
    with local_pool_factory(nodes=1, concurrency=3) as pool:
        stream = sky.gather(nap(0.8), nap(0.0), nap(0.4), ordered=False) >> pool
        assert list(stream) == [0.0, 0.4, 0.8]
        mixed = sky.gather(nap(0.1), fail_after(0.0, "bad"), return_exceptions=True) >> pool
        assert mixed[0] == 0.1
        assert isinstance(mixed[1], ValueError)
        assert str(mixed[1]) == "bad"
        with pytest.raises(ValueError, match="bad"):
            sky.gather(nap(0.1), fail_after(0.0, "bad")) >> pool
        both = (
            sky.gather(fail_after(0.3, "late"), nap(0.0), ordered=False, return_exceptions=True)
            >> pool
        )
        first, second = list(both)
        assert first == 0.0
        assert isinstance(second, ValueError)
