"""Calls batched per connection (issue 12): a batch's calls are held back into a few
writes, a lone call goes out at once, and every guarantee of the dispatch path holds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import skyward as sky
from skyward import messages, wire
from tests.conftest import Pair


def _task(task_id: int) -> wire.Parts:
    return wire.encode(messages.Task(task_id, messages.Payload.call(len, ((1, 2),), {})))


def test_frames_held_in_a_batch_go_out_in_one_write_at_its_end(pair: Pair) -> None:
    a, b = pair
    writer = wire.FrameWriter(a)
    with wire.holding():
        for i in range(200):
            writer.write(_task(i), hold=True)
        assert writer.writes == 0, "held frames wait for the end of the batch"
        assert wire.has_held()
    assert not wire.has_held()
    assert writer.writes == 1
    reader = wire.FrameReader(b)
    assert [reader.read().id for _ in range(200)] == list(range(200))


def test_a_frame_outside_a_batch_is_written_at_once(pair: Pair) -> None:
    a, _ = pair
    writer = wire.FrameWriter(a)
    writer.write(_task(1), hold=True)  # hold=True means nothing outside holding()
    assert writer.writes == 1
    with wire.holding():
        writer.send(messages.Heartbeat())  # frames not marked hold=True are never held
        assert writer.writes == 2


def test_any_other_frame_sends_what_is_held_first(pair: Pair) -> None:
    a, b = pair
    writer = wire.FrameWriter(a)
    with wire.holding():
        writer.write(_task(1), hold=True)
        writer.write(_task(2), hold=True)
        # A Cancel from another thread must never overtake the call it cancels.
        other = threading.Thread(target=writer.send, args=(messages.Cancel(2, force=True),))
        other.start()
        other.join(20)
        assert writer.writes == 1, "the held calls and the Cancel went out in one write"
        writer.write(_task(3), hold=True)
    reader = wire.FrameReader(b)
    got = [reader.read() for _ in range(4)]
    assert [type(m).__name__ for m in got] == ["Task", "Task", "Cancel", "Task"]
    assert [m.id for m in got] == [1, 2, 2, 3]


def test_flush_held_sends_before_the_thread_waits(pair: Pair) -> None:
    a, b = pair
    writer = wire.FrameWriter(a)
    with wire.holding():
        writer.write(_task(7), hold=True)
        wire.flush_held()
        assert writer.writes == 1
        assert wire.FrameReader(b).read().id == 7
        wire.flush_held()  # nothing held: nothing written
        assert writer.writes == 1


def test_a_batch_past_the_hold_limit_is_written_as_it_grows(pair: Pair) -> None:
    a, b = pair
    writer = wire.FrameWriter(a)
    text = "x" * 10_000
    count = 3 * wire._HOLD_LIMIT // len(text)
    done = threading.Event()

    def read_all() -> None:
        reader = wire.FrameReader(b)
        assert [reader.read() for _ in range(count)] == [text] * count
        done.set()

    threading.Thread(target=read_all, daemon=True).start()
    with wire.holding():
        for _ in range(count):
            writer.write(wire.encode(text), hold=True)
        # Held frames never pile up past the limit: they go out about once a MiB.
        assert 2 <= writer.writes <= 4
    assert done.wait(20)


def _client_writes(pool: sky.ComputePool) -> int:
    cluster = pool._cluster
    assert cluster is not None
    return sum(c._writer.writes for c in cluster.clients if c._writer is not None)


@sky.compute
def ident(x: int) -> int:
    return x


@sky.compute
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_gather_goes_out_in_few_writes_and_a_lone_call_at_once(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    with local_pool_factory(nodes=2, concurrency=2) as pool:
        calls = 600
        before = _client_writes(pool)
        assert sky.gather(*(ident(i) for i in range(calls))) >> pool == tuple(range(calls))
        # One write per call before; now the window (4 calls per worker) refills half at
        # a time. Heartbeats and acks add a few writes of their own.
        assert _client_writes(pool) - before < calls / 2
        # A lone call is written before submit() returns, not held for company.
        before = _client_writes(pool)
        future = pool.submit(nap(0.5))
        assert _client_writes(pool) > before
        assert future.result(timeout=30) == 0.5
        results = list(pool.map(ident, range(300)))
        assert results == list(range(300))


def test_calls_cancelled_while_held_are_dropped_and_none_runs_twice(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    with local_pool_factory(nodes=2, concurrency=1) as pool:
        # 8 calls fill the windows (4 per worker) without waiting: all are still held
        # when half of them are cancelled; each Cancel goes out after its call.
        with wire.holding():
            futures = [pool.submit(nap(0.2)) for _ in range(8)]
            assert wire.has_held()
            assert all(future.cancel() for future in futures[4:])
        assert [f.result(timeout=30) for f in futures[:4]] == [0.2] * 4
        assert all(f.cancelled() for f in futures[4:])
        # The pool still works, and every call is answered once.
        assert sky.gather(*(ident(i) for i in range(50))) >> pool == tuple(range(50))
        cluster = pool._cluster
        assert cluster is not None
        assert all(c.inflight == 0 for c in cluster.clients)


@sky.compute
def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def test_map_over_a_lazy_iterable_sends_each_call_at_once(
    local_pool_factory: Callable[..., sky.ComputePool], tmp_path: Path
) -> None:
    first = tmp_path / "first"
    held: list[bool] = []

    def items() -> Iterator[str]:
        yield str(first)
        # A producer that waits on the calls it fed: the first call must not be held
        # back until the next item comes (a heartbeat would send it, seconds later).
        held.append(wire.has_held())
        deadline = time.monotonic() + 20
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.exists(), "the first call was held back"
        yield str(tmp_path / "second")

    with local_pool_factory(concurrency=1) as pool:
        assert list(pool.map(touch, items())) == [str(first), str(tmp_path / "second")]
    assert held == [False]
