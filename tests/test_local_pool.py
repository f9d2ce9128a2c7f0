"""End-to-end behaviour of pools on the embedded Local provider: real agent processes."""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

import numpy as np
import pytest

import skyward as sky
from tests.conftest import agent_processes, wait_until


class CustomError(Exception):
    """Defined in the test module: travels to the node by value and back as itself."""


@sky.compute
def add(a: int, b: int) -> int:
    return a + b


@sky.compute
def where() -> tuple[int, int, int, str, int]:
    info = sky.instance_info()
    return info.node, info.total_nodes, os.getpid(), os.getcwd(), info.workers_per_node


@sky.compute
def placement(i: int) -> tuple[int, int, int]:
    info = sky.instance_info()
    return i, info.node, info.worker


@sky.compute
def fail(message: str) -> None:
    raise CustomError(message)


@sky.compute
def fail_with_value_error() -> None:
    int("not a number")


@sky.compute
def identity(value: Any) -> Any:
    return value


@sky.compute
def make_lock() -> threading.Lock:
    return threading.Lock()


@sky.compute
def shout(text: str) -> str:
    print(text)
    print(f"err:{text}", file=__import__("sys").stderr)
    return text


@sky.compute
def env_value(name: str) -> str | None:
    return os.environ.get(name)


@sky.compute
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@sky.compute
def my_shard(data: Any) -> Any:
    return sky.shard(data)


@sky.compute
def my_shards(x: Any, y: Any, shuffle: bool) -> Any:
    return sky.shard(x, y, shuffle=shuffle)


def test_run_broadcast_and_batch(local_pool_factory: Any) -> None:
    with local_pool_factory(nodes=3, concurrency=2) as pool:
        assert pool.is_active
        assert pool.instance_count == 3
        assert add(2, 3) >> pool == 5

        workers = where() @ pool
        assert [w[0] for w in workers] == [0, 0, 1, 1, 2, 2], "every worker, by node then worker"
        assert {w[1] for w in workers} == {3}
        assert len({w[2] for w in workers}) == 6, "each worker is its own process"
        assert len({w[3] for w in workers}) == 3, "each node has its own directory"
        assert {w[4] for w in workers} == {2}

        a, b = (add(1, 1) & add(2, 2)) >> pool
        assert (a, b) == (2, 4)
        three = (add(1, 1) & add(2, 2) & add(3, 3)) >> pool
        assert three == (2, 4, 6)
    assert not pool.is_active
    assert pool.instance_count == 0


def test_gather_1000_calls_over_4_nodes_with_concurrency_2(local_pool_factory: Any) -> None:
    with local_pool_factory(nodes=4, concurrency=2) as pool:
        results = sky.gather(*(placement(i) for i in range(1000))) >> pool
    assert [r[0] for r in results] == list(range(1000)), "results come back in call order"
    per_node = collections.Counter(r[1] for r in results)
    assert set(per_node) == {0, 1, 2, 3}
    # Least-loaded dispatch fills every node's window (4 x concurrency) before reusing one.
    assert min(per_node.values()) >= 8, f"work is spread over the nodes: {per_node}"
    assert {r[2] for r in results} <= {0, 1}


def test_concurrency_runs_tasks_at_the_same_time(local_pool_factory: Any) -> None:
    with local_pool_factory(nodes=1, concurrency=4) as pool:
        started = time.monotonic()
        sky.gather(*(sleep_for(0.5) for _ in range(4))) >> pool
        elapsed = time.monotonic() - started
    assert elapsed < 1.5, f"4 x 0.5 s on 4 slots took {elapsed:.2f}s"


def test_remote_exception_keeps_type_and_traceback(local_pool_factory: Any) -> None:
    with local_pool_factory(nodes=1) as pool:
        with pytest.raises(CustomError, match="boom") as caught:
            fail("boom") >> pool
        remote_tb = caught.value.remote_traceback  # type: ignore[attr-defined]
        assert "in fail" in remote_tb
        assert "raise CustomError(message)" in remote_tb
        assert isinstance(caught.value.__cause__, sky.errors.RemoteTraceback)

        with pytest.raises(ValueError, match="invalid literal") as value_error:
            fail_with_value_error() >> pool
        assert "fail_with_value_error" in value_error.value.remote_traceback  # type: ignore[attr-defined]

        assert add(1, 2) >> pool == 3, "the pool keeps serving after remote errors"


def test_unpicklable_argument_and_result_are_clear_errors(local_pool_factory: Any) -> None:
    with local_pool_factory(nodes=1) as pool:
        with pytest.raises(sky.SerializationError, match="cannot pickle"):
            identity(threading.Lock()) >> pool
        with pytest.raises(sky.SerializationError, match="cannot be sent back"):
            make_lock() >> pool
        assert add(20, 22) >> pool == 42


def test_large_numpy_round_trip(local_pool_factory: Any) -> None:
    array = np.random.default_rng(0).random(4_000_000)  # 32 MB
    with local_pool_factory(nodes=1) as pool:
        back = identity(array) >> pool
    assert back.dtype == array.dtype
    assert np.array_equal(back, array)


def test_shard_partitions_exactly_across_nodes(local_pool_factory: Any) -> None:
    data = list(range(103))
    with local_pool_factory(nodes=4) as pool:
        parts = my_shard(data) @ pool
        tuple_parts = my_shard(tuple(data)) @ pool
        x = np.arange(50)
        y = np.arange(50) * 10
        pairs = my_shards(x, y, True) @ pool
    assert sorted(v for part in parts for v in part) == data
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(isinstance(p, tuple) for p in tuple_parts)
    assert sorted(v for part in tuple_parts for v in part) == data
    xs = np.concatenate([p[0] for p in pairs])
    assert sorted(xs.tolist()) == list(range(50)), "shuffled shards still partition"
    assert xs.tolist() != list(range(50)), "shuffle changed the order"
    for px, py in pairs:
        assert np.array_equal(px * 10, py), "x and y stay aligned"


def test_image_and_pool_env_reach_functions(local_pool_factory: Any) -> None:
    image = sky.Image(env={"FROM_IMAGE": "image"})
    with local_pool_factory(nodes=1, image=image, env={"FROM_POOL": "pool"}) as pool:
        assert env_value("FROM_IMAGE") >> pool == "image"
        assert env_value("FROM_POOL") >> pool == "pool"
    for process in agent_processes(pool.pool_id):
        assert "pool" not in " ".join(process.cmdline())


def test_prints_arrive_as_log_lines_tagged_with_node(
    local_pool_factory: Any, events: list[Any]
) -> None:
    with local_pool_factory(nodes=2, on_event=events.append) as pool:
        shout("hello-from-node") @ pool
        assert wait_until(
            lambda: (
                len(
                    [
                        e
                        for e in events
                        if isinstance(e, sky.LogLine) and "hello-from-node" in e.line
                    ]
                )
                >= 4
            ),
            5,
        )
    lines = [e for e in events if isinstance(e, sky.LogLine) and "hello-from-node" in e.line]
    assert {(e.node, e.stream) for e in lines} == {
        (0, "stdout"),
        (1, "stdout"),
        (0, "stderr"),
        (1, "stderr"),
    }
    assert all(e.instance_id.endswith(f"node{e.node}") for e in lines)


def test_metrics_events_when_collecting(local_pool_factory: Any, events: list[Any]) -> None:
    with local_pool_factory(nodes=1, on_event=events.append):
        assert wait_until(lambda: any(isinstance(e, sky.Metrics) for e in events), 10)
    sample = next(e for e in events if isinstance(e, sky.Metrics))
    assert 0 <= sample.cpu_percent <= 100 * (os.cpu_count() or 1)
    assert 0 < sample.memory_percent < 100
    assert 0 < sample.memory_used_mb < sample.memory_total_mb
    assert sample.gpu_utilization is None  # no GPU on this machine
    assert any(isinstance(e, sky.CostUpdate) for e in events)


def test_no_metrics_when_disabled(local_pool_factory: Any, events: list[Any]) -> None:
    with local_pool_factory(nodes=1, on_event=events.append, collect_metrics=False) as pool:
        time.sleep(1.2)
        assert add(1, 1) >> pool == 2
    assert not any(isinstance(e, sky.Metrics) for e in events)


def test_event_order_from_infra_creating_to_cost_final(
    local_pool_factory: Any, events: list[Any]
) -> None:
    with local_pool_factory(nodes=2, on_event=events.append, collect_metrics=False) as pool:
        add(1, 2) >> pool
    kinds = [type(e).__name__ for e in events if not isinstance(e, sky.LogLine)]
    assert kinds[0] == "InfraCreating"
    assert kinds[1] == "InfraCreated"
    assert kinds[2] == "InstanceLaunching"
    assert kinds[3:5] == ["InstanceProvisioned", "InstanceProvisioned"]
    assert kinds[-1] == "CostFinal"
    stopping = kinds.index("PoolStopping")
    assert kinds[stopping + 1 : stopping + 3] == ["InstanceStopping", "InstanceStopping"]
    for instance_id in {e.instance_id for e in events if isinstance(e, sky.InstanceProvisioned)}:
        own = [
            type(e).__name__
            for e in events
            if isinstance(e, sky.BootstrapStarting | sky.BootstrapProgress | sky.BootstrapCompleted)
            and e.instance_id == instance_id
        ]
        assert own[0] == "BootstrapStarting"
        assert own[-1] == "BootstrapCompleted"
        assert "BootstrapProgress" in own
    assert kinds.index("BootstrapCompleted") < stopping
    final = events[-1]
    assert final.total_cost == 0.0
    assert final.ondemand_count == 2


def test_use_callback_and_emit_reach_pool_listeners(local_pool_factory: Any) -> None:
    seen: list[Any] = []
    with sky.use_callback(seen.append), local_pool_factory(nodes=1) as pool:
        add(1, 1) >> pool
        sky.emit(sky.Error("custom"))
    assert any(isinstance(e, sky.InfraCreating) for e in seen)
    assert sky.Error("custom") in seen


def test_pool_timeout_is_a_hard_lifetime(local_pool_factory: Any) -> None:
    pool = local_pool_factory(nodes=1, timeout=2)
    with pool:
        assert add(1, 1) >> pool == 2
        with pytest.raises(sky.PoolTimeoutError):
            sleep_for(10) >> pool
        assert not pool.is_active
        with pytest.raises(sky.PoolTimeoutError):
            add(1, 1) >> pool
    assert wait_until(lambda: not agent_processes(pool.pool_id), 5)


def test_sending_to_a_closed_pool_is_a_clear_error(local_pool_factory: Any) -> None:
    pool = local_pool_factory(nodes=1)
    with pytest.raises(sky.PoolClosedError, match="not active"):
        add(1, 1) >> pool
    with pool:
        pass
    with pytest.raises(sky.PoolClosedError):
        add(1, 1) >> pool


def test_accelerator_on_local_has_no_offer(local_pool_factory: Any) -> None:
    pool = local_pool_factory(nodes=1, accelerator="A100")
    with pytest.raises(sky.NoAvailableProviderError, match="accelerator A100"):
        pool.open()
    assert not pool.is_active


@sky.compute
def agent_pid() -> int:
    return os.getpid()


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_agent_killed_mid_task_is_a_worker_lost_error_and_the_node_recovers(
    local_pool_factory: Any, executor: str
) -> None:
    """With threads the task's process is the agent; with processes it is one worker."""
    import signal

    with local_pool_factory(nodes=1, executor=executor) as pool:
        first_pid = agent_pid() >> pool
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                sleep_for(30) >> pool
            except BaseException as error:
                outcome.append(error)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)
        os.kill(first_pid, signal.SIGKILL)
        caller.join(timeout=20)
        assert len(outcome) == 1
        assert isinstance(outcome[0], sky.WorkerLostError)
        assert outcome[0].cause == "killed by SIGKILL"
        assert add(2, 2) >> pool == 4, "the pool serves the next call"
        assert agent_pid() >> pool != first_pid
    assert wait_until(lambda: not agent_processes(pool.pool_id), 5)
