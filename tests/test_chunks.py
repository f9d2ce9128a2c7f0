"""Large batches go to the nodes in chunks: many calls per task, each call settled alone."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError, Future

import pytest

import skyward as sky
from skyward import chunk_calls, chunks

Factory = Callable[..., sky.ComputePool]
EXECUTORS = pytest.mark.parametrize("executor", ["process", "thread"])


@sky.compute
def double(x: int) -> int:
    return 2 * x


@sky.compute
def fails_on_sevens(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"seven divides {x}")
    return x


def _tasks(pool: sky.ComputePool) -> int:
    return sum(c.tasks_sent for c in pool._cluster.clients)  # type: ignore[union-attr]


def _run(pool: sky.ComputePool, how: str, n: int) -> list[int]:
    if how == "gather":
        return list(sky.gather(*(double(i) for i in range(n))) >> pool)
    if how == "map":
        return list(pool.map(double, range(n)))
    return sorted(pool.map(double, range(n), ordered=False))


@EXECUTORS
@pytest.mark.parametrize("how", ["gather", "map", "map-unordered"])
def test_a_large_batch_takes_far_fewer_tasks_than_calls(
    local_pool_factory: Factory, executor: str, how: str
) -> None:
    with local_pool_factory(nodes=2, executor=executor) as pool:
        before = _tasks(pool)
        assert _run(pool, how, 3000) == [2 * i for i in range(3000)]
        first = _tasks(pool) - before
        assert first < 3000 / 4, f"{first} tasks for 3000 calls"
        # The cost per call is known now: a second batch starts with large chunks.
        before = _tasks(pool)
        assert _run(pool, how, 3000) == [2 * i for i in range(3000)]
        assert _tasks(pool) - before < first


def test_a_small_batch_is_a_task_per_call(local_pool_factory: Factory) -> None:
    with local_pool_factory(nodes=1, executor="thread") as pool:
        before = _tasks(pool)
        assert sky.gather(*(double(i) for i in range(3))) >> pool == (0, 2, 4)
        assert _tasks(pool) - before == 3


@EXECUTORS
def test_each_call_of_a_chunk_fails_alone_with_its_own_traceback(
    local_pool_factory: Factory, executor: str
) -> None:
    with local_pool_factory(nodes=1, executor=executor) as pool:
        calls = [fails_on_sevens(i) for i in range(1, 400)]
        outcomes = sky.gather(*calls, return_exceptions=True) >> pool
        for x, outcome in zip(range(1, 400), outcomes, strict=True):
            if x % 7 == 0:
                assert isinstance(outcome, ValueError)
                assert str(outcome) == f"seven divides {x}"
                text = outcome.remote_traceback  # type: ignore[attr-defined]
                assert "fails_on_sevens" in text
                assert "run_chunk" not in text
            else:
                assert outcome == x
        with pytest.raises(ValueError, match="seven divides 7"):
            sky.gather(*calls) >> pool
        unordered = sky.gather(*calls, ordered=False, return_exceptions=True) >> pool
        assert sorted(o for o in unordered if isinstance(o, int)) == [
            x for x in range(1, 400) if x % 7
        ]


@sky.compute(retries=2, retry_on=(ConnectionError,))
def flaky(x: int) -> int:
    from skyward import instance_info

    marker = f"/tmp/skyward-chunk-test-{instance_info().node}-{x}"
    import os

    if x % 50 == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionError("first try fails")
    return x


def test_a_failed_call_is_retried_alone(local_pool_factory: Factory) -> None:
    import glob
    import os

    for leftover in glob.glob("/tmp/skyward-chunk-test-*"):
        os.unlink(leftover)
    events: list[sky.SkywardEvent] = []
    try:
        with local_pool_factory(nodes=1, executor="thread", on_event=events.append) as pool:
            assert sky.gather(*(flaky(i) for i in range(1, 500))) >> pool == tuple(range(1, 500))
        retried = [e for e in events if isinstance(e, sky.TaskSubmitted) and e.attempt == 2]
        assert len(retried) == len(range(50, 500, 50)), "each failed call, alone, once"
    finally:
        for leftover in glob.glob("/tmp/skyward-chunk-test-*"):
            os.unlink(leftover)


def test_chunk_sizes_follow_the_measured_cost() -> None:
    sizer = chunks.ChunkSizer()
    assert sizer.size("fn", 10_000, 2) == 1, "unknown: one call"
    sizer.observe("fn", 10, 10 * 1e-5)  # 10 µs a call
    assert sizer.size("fn", 10_000, 2) == min(chunks.MAX_CALLS, 1000)
    assert sizer.size("fn", 40, 2) == 5, "near the end: a quarter of each worker's share"
    sizer.observe("slow", 1, 1.0)
    assert sizer.size("slow", 10_000, 2) == 1, "a call longer than the target goes alone"


def test_chunking_can_be_turned_off(local_pool_factory: Factory) -> None:
    with local_pool_factory(nodes=1, executor="thread") as pool:
        chunks.ENABLED = False
        try:
            before = _tasks(pool)
            sky.gather(*(double(i) for i in range(50))) >> pool
            assert _tasks(pool) - before == 50
        finally:
            chunks.ENABLED = True


def test_map_stops_at_the_first_failure_of_a_chunked_call(local_pool_factory: Factory) -> None:
    with local_pool_factory(nodes=1, executor="thread") as pool:
        results = pool.map(fails_on_sevens, range(1, 3000))
        got = [next(results) for _ in range(6)]
        assert got == [1, 2, 3, 4, 5, 6]
        with pytest.raises(ValueError, match="seven divides 7"):
            next(results)


class Unpicklable:
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("this object stays where it was made")


@sky.compute
def echo(x: object) -> object:
    if x == "unpicklable":
        return Unpicklable()
    return x


@EXECUTORS
def test_a_chunk_mixes_scalar_and_other_arguments_and_results(
    local_pool_factory: Factory, executor: str
) -> None:
    # Scalar calls are pickled with their chunk, others on their own; scalar results come
    # back inside the chunk's answer, others pickled apart: one that cannot be pickled
    # fails only its own call.
    values: list[object] = []
    for i in range(600):
        values.append(i if i % 3 else [i, {"i": str(i)}])
    values[301] = "unpicklable"
    with local_pool_factory(nodes=1, executor=executor) as pool:
        before = _tasks(pool)
        sky.gather(*(echo(v) for v in values[:300])) >> pool  # learn the cost: chunks
        outcomes = sky.gather(*(echo(v) for v in values), return_exceptions=True) >> pool
        assert _tasks(pool) - before < 600 / 4
    for value, outcome in zip(values, outcomes, strict=True):
        if value == "unpicklable":
            assert isinstance(outcome, sky.SerializationError)
            assert "cannot be sent back" in str(outcome)
        else:
            assert outcome == value


def test_a_chunk_is_reported_by_its_calls(local_pool_factory: Factory) -> None:
    events: list[object] = []
    with local_pool_factory(nodes=1, executor="thread", on_event=events.append) as pool:
        outcomes = (
            sky.gather(*(fails_on_sevens(i) for i in range(1, 1001)), return_exceptions=True)
            >> pool
        )
    failed = {x for x in range(1, 1001) if x % 7 == 0}
    assert {
        x for x, o in zip(range(1, 1001), outcomes, strict=True) if isinstance(o, Exception)
    } == failed
    submitted = [e for e in events if isinstance(e, sky.TaskSubmitted)]
    finished = [e for e in events if isinstance(e, sky.TaskFinished)]
    assert len(submitted) < 1000 / 4, "a chunk is one event"
    numbered = sorted(t for e in submitted for t in range(e.task, e.task + e.calls))
    assert numbered == list(range(numbered[0], numbered[0] + 1000)), "each call, once"
    reported_ok = {t for e in finished if e.ok for t in range(e.task, e.task + e.calls)}
    reported_failed = {t for e in finished if not e.ok for t in range(e.task, e.task + e.calls)}
    assert len(reported_ok) + len(reported_failed) == 1000
    assert {t - numbered[0] + 1 for t in reported_failed} == failed


def test_ctrl_c_while_taking_a_chunk_cancels_it() -> None:
    cancelled: list[bool] = []
    chunk = chunk_calls.Chunk(3, Future, lambda: cancelled.append(True))

    def interrupt(*args: object, **kwargs: object) -> bool:
        raise KeyboardInterrupt  # as Ctrl-C lands in the caller's wait

    chunk._cond.wait_for = interrupt  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        chunk.values()
    assert cancelled == [True], "the chunk stops on its node"
    del chunk._cond.wait_for  # the caller's next wait is a plain one
    outcomes = chunk.values(keep_exceptions=True)
    assert all(isinstance(o, CancelledError) for o in outcomes), outcomes


def test_a_chunk_gives_its_values_in_order_keeping_exceptions() -> None:
    chunk = chunk_calls.Chunk(3, Future, lambda: None)
    chunk.settle_all([(2, "c", None), (0, "a", None), (1, None, ValueError("b"))])
    assert chunk.values(keep_exceptions=True)[0::2] == ["a", "c"]
    assert isinstance(chunk.values(keep_exceptions=True)[1], ValueError)
    with pytest.raises(ValueError, match="b"):
        chunk.values()


@EXECUTORS
def test_unordered_map_and_gather_take_chunks_as_they_complete(
    local_pool_factory: Factory, executor: str
) -> None:
    with local_pool_factory(nodes=2, executor=executor) as pool:
        taken: list[int] = []
        mapped = pool.map(fails_on_sevens, range(1, 3000), ordered=False)
        with pytest.raises(ValueError, match="seven divides"):
            taken.extend(mapped)
        assert all(x % 7 for x in taken), "only values before the failure"
        gathered = sky.gather(
            *(fails_on_sevens(i) for i in range(1, 3000)), ordered=False, return_exceptions=True
        )
        outcomes = list(gathered >> pool)
        odd = [o for o in outcomes if not isinstance(o, int | ValueError)]
        assert not odd, odd[:3]
        assert sorted(o for o in outcomes if isinstance(o, int)) == [
            x for x in range(1, 3000) if x % 7
        ]
        assert sum(isinstance(o, ValueError) for o in outcomes) == len(range(7, 3000, 7))
        with pytest.raises(ValueError, match="seven divides"):
            list(sky.gather(*(fails_on_sevens(i) for i in range(1, 3000)), ordered=False) >> pool)
        assert sorted(pool.map(double, range(2000), ordered=False)) == [2 * i for i in range(2000)]
