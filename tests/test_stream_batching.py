"""Streamed items that queue up share a frame; a lone item still goes at once.

The node's side runs for real: ``agent.tasks._stream`` with its sender thread, the relay of
a worker's frames (``agent.streams.relay``) over a socket pair, the Item frame codec, the
client's ``_Stream`` and the agent's ``StreamGate``; then whole streams on Local pools.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import skyward as sky
from skyward import messages, wire
from skyward.agent import streams, tasks
from skyward.agent.streams import StreamGate, relay
from skyward.agent.tasks import _stream
from skyward.node import _END, _Stream
from tests.conftest import wait_until

TASK = messages.Task(7, messages.Payload.of(None), window=64)


class Open:
    """A gate with all the credit in the world."""

    def wait(self, seq: int, nbytes: int) -> bool:
        return True


class Window:
    """A consumer that takes nothing: ``window`` items may go, then the gate waits until
    ``closed`` (the consumer closed the stream)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.closed = threading.Event()

    def wait(self, seq: int, nbytes: int) -> bool:
        if seq < self.window:
            return True
        self.closed.wait(30)
        return False


def seqs(frames: list[messages.Item]) -> list[list[int]]:
    return [list(range(f.seq, f.end)) for f in frames]


def values(frames: list[messages.Item]) -> list[Any]:
    return [v.open() for f in frames for v in f.values]


def test_items_that_queue_up_while_a_frame_is_written_share_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "SLOW_ITEM", 60.0)  # every item after the first comes fast
    frames: list[messages.Item] = []
    written = threading.Event()

    def send(item: messages.Item) -> None:
        frames.append(item)
        if len(frames) == 2:
            written.wait(10)  # the connection is slow to take the sender's first frame

    def items() -> Iterator[int]:
        yield from range(21)
        written.set()

    result = _stream(TASK, items(), Open(), send, "items", True)
    assert result.failure is None
    # Item 0 (a lone one) went at once; the sender took the first of the others (with any
    # that came while it started) and, while that frame was being written, the rest came:
    # one frame.
    assert seqs(frames)[0] == [0]
    assert len(frames) in (2, 3), seqs(frames)
    assert values(frames) == list(range(21))


def test_a_lone_item_is_written_before_the_generator_resumes() -> None:
    sent: list[int] = []
    seen: list[int] = []

    def items() -> Iterator[int]:
        yield 0
        seen.append(len(sent))  # resumed: item 0 must be out already
        end = time.monotonic() + 0.05
        while time.monotonic() < end:  # computing, the GIL held
            pass
        yield 1
        seen.append(len(sent))

    def send(item: messages.Item) -> None:
        sent.extend(range(item.seq, item.end))

    result = _stream(TASK, items(), Open(), send, "f", True)
    assert result.failure is None
    assert seen == [1, 2]
    assert sent == [0, 1]


def test_the_credit_window_still_bounds_what_is_produced_and_sent() -> None:
    frames: list[messages.Item] = []
    produced: list[int] = []
    closed = threading.Event()

    def endless() -> Iterator[int]:
        i = 0
        try:
            while True:
                produced.append(i)
                yield i
                i += 1
        finally:
            closed.set()

    gate = Window(5)
    done: list[messages.Result] = []
    thread = threading.Thread(
        target=lambda: done.append(_stream(TASK, endless(), gate, frames.append, "f", True))
    )
    thread.start()
    deadline = time.monotonic() + 10
    while sum(len(f.values) for f in frames) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # room to run ahead, if it could
    assert values(frames) == [0, 1, 2, 3, 4]
    assert produced == [0, 1, 2, 3, 4, 5], "one more waits at the gate, no further"
    gate.closed.set()
    thread.join(10)
    assert closed.is_set(), "the generator's cleanup ran"
    assert done[0].failure is None


def test_an_exception_arrives_after_every_item_yielded_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "SLOW_ITEM", 60.0)  # items 1.. go through the sender thread
    order: list[object] = []

    def send(item: messages.Item) -> None:
        if order == [0]:
            time.sleep(0.2)  # items queue up behind the sender's first frame
        order.extend(v.open() for v in item.values)

    def fails() -> Iterator[int]:
        yield from range(10)
        raise ValueError("boom after 10")

    result = _stream(TASK, fails(), Open(), send, "fails", True)
    order.append("end")
    assert order == [*range(10), "end"]
    assert result.failure is not None
    assert "boom after 10" in result.failure.message


def test_a_failed_write_stops_the_generator_with_the_error() -> None:
    closed = threading.Event()

    def send(item: messages.Item) -> None:
        raise OSError("the connection went away")

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with pytest.raises(OSError, match="went away"):
        _stream(TASK, endless(), Open(), send, "f", True)
    assert closed.is_set()


def _frames_through(
    write: Callable[[wire.FrameWriter], None], *, all_sent: bool = True
) -> wire.FrameReader:
    """A reader of what ``write`` writes from a thread (a large frame fills the socket);
    ``all_sent``: once all of it is written."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)  # a relay that waited for a frame never sent would fail here

    def writing() -> None:
        with theirs:
            write(wire.FrameWriter(theirs))

    writer = threading.Thread(target=writing, daemon=True)
    writer.start()
    if all_sent:
        writer.join(5)
    return wire.FrameReader(ours)


def _item(seq: int, value: object = None) -> messages.Item:
    return messages.Item(TASK.id, seq, messages.Payload.of(seq if value is None else value))


def test_the_agent_relays_the_items_already_read_in_one_frame() -> None:
    def write(writer: wire.FrameWriter) -> None:
        for seq in range(5):
            writer.send(_item(seq))
        writer.send(messages.Result(TASK.id, value=messages.Payload.of(None)))

    reader = _frames_through(write)
    first = reader.read()
    emitted: list[messages.Item] = []
    after = relay(reader, emitted.append, first)
    assert seqs(emitted) == [[0, 1, 2, 3, 4]]
    assert isinstance(after, messages.Result)


def test_the_agent_relays_a_lone_item_without_waiting_for_another() -> None:
    ours, theirs = socket.socketpair()
    ours.settimeout(2)
    wire.FrameWriter(theirs).send(_item(0))
    reader = wire.FrameReader(ours)
    emitted: list[messages.Item] = []
    assert relay(reader, emitted.append, reader.read()) is None  # theirs is still open
    assert seqs(emitted) == [[0]]
    theirs.close()


def test_the_agent_relays_what_it_read_when_the_worker_dies_mid_frame() -> None:
    def write(writer: wire.FrameWriter) -> None:
        writer.send(_item(0))
        writer.send(_item(1))
        whole = b"".join(bytes(p) for p in wire.encode(_item(2)))
        writer.write([whole[: len(whole) // 2]])  # and the worker is gone

    reader = _frames_through(write)
    emitted: list[messages.Item] = []
    with pytest.raises(EOFError):
        relay(reader, emitted.append, reader.read())
    assert seqs(emitted) == [[0, 1]]


def test_a_relayed_frame_holds_at_most_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "MAX_ITEMS_PER_FRAME", 2)

    def write(writer: wire.FrameWriter) -> None:
        for seq in range(5):
            writer.send(_item(seq))

    reader = _frames_through(write)
    emitted: list[messages.Item] = []
    assert relay(reader, emitted.append, reader.read()) is None
    assert seqs(emitted) == [[0, 1], [2, 3], [4]]


def test_an_item_frame_of_several_keeps_each_items_buffers() -> None:
    arrays = [np.arange(20_000, dtype=np.float64) * k for k in range(3)]
    item = messages.Item(
        3, 10, messages.Payload.of("head"), tuple(messages.Payload.of(a) for a in arrays)
    )
    assert sum(len(v.buffers) for v in item.values) == 3  # out of band, one each
    reader = _frames_through(lambda writer: writer.send(item), all_sent=False)
    got = reader.read()
    assert isinstance(got, messages.Item)
    assert (got.id, got.seq, got.end) == (3, 10, 14)
    opened = [v.open() for v in got.values]
    assert opened[0] == "head"
    for array, back in zip(arrays, opened[1:], strict=True):
        assert np.array_equal(array, back)
    lone = _frames_through(lambda writer: writer.send(_item(4, "x"))).read()
    assert (lone.seq, lone.more, lone.value.open()) == (4, (), "x")


def _drain(stream: _Stream) -> list[list[Any]]:
    got = []
    while not stream.queue.empty():
        entry = stream.queue.get()
        got.append(entry if entry is _END else [p.open() for p in entry])
    return got


def test_the_client_keeps_only_the_items_it_does_not_have_after_a_replay() -> None:
    stream = _Stream(64)
    stream.deliver(messages.Item(1, 0, *_payloads(0, 3)))
    stream.deliver(messages.Item(1, 1, *_payloads(1, 5)))  # replayed: 1 and 2 are here
    stream.deliver(messages.Item(1, 2, *_payloads(2, 4)))  # all here already
    assert _drain(stream) == [[0, 1, 2], [3, 4]]
    assert stream.received == 5


def _payloads(start: int, stop: int) -> tuple[messages.Payload, tuple[messages.Payload, ...]]:
    payloads = [messages.Payload.of(i) for i in range(start, stop)]
    return payloads[0], tuple(payloads[1:])


def test_the_agent_keeps_a_frame_until_all_its_items_are_consumed() -> None:
    sent: list[object] = []
    gate = StreamGate(1, 64, sent.append)
    gate.emit(messages.Item(1, 0, *_payloads(0, 3)))
    gate.emit(messages.Item(1, 3, *_payloads(3, 5)))
    gate.credit(2)
    assert [f.seq for f in gate.replay()] == [0, 3]
    gate.credit(3)
    assert [f.seq for f in gate.replay()] == [3]
    gate.credit(5)
    assert gate.replay() == []


@sky.compute
def fast_then_fails(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"boom after {n}")


@sky.compute
def blocks(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield np.full(64 * 1024 // 8, float(i)).tobytes()


@sky.compute
def endless_fast(closed: str) -> Iterator[int]:
    i = 0
    try:
        while True:
            yield i
            i += 1
    finally:
        Path(closed).write_text("closed")


@pytest.mark.parametrize("executor", ["process", "thread"])
def test_fast_streams_arrive_whole_and_in_order_on_a_local_pool(
    local_pool_factory: Callable[..., sky.ComputePool], executor: str, tmp_path: Path
) -> None:
    with local_pool_factory(nodes=1, executor=executor) as pool:
        items = fast_then_fails(20_000) >> pool
        got = [next(items) for _ in range(20_000)]
        assert got == list(range(20_000))
        with pytest.raises(ValueError, match="boom after 20000"):
            next(items)
        pool.stream_window = 16
        arrived = [np.frombuffer(b)[0] for b in blocks(300) >> pool]
        assert arrived == [float(i) for i in range(300)]
        # Closed while the generator has credit to spare: it still stops, its finally runs.
        pool.stream_window = 100_000
        closed = tmp_path / "closed"
        items = endless_fast(str(closed)) >> pool
        assert [next(items) for _ in range(3)] == [0, 1, 2]
        items.close()  # type: ignore[attr-defined]
        assert wait_until(closed.exists, 15)
