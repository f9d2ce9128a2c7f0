"""Binary frames of the hot messages (one pickle per call) and coalescing writers."""

from __future__ import annotations

import math
import socket
import threading

import numpy as np
import pytest

from skyward import messages, wire
from tests.conftest import Pair


def _round_trip(pair: Pair, obj: object) -> object:
    a, b = pair
    wire.FrameWriter(a).send(obj)
    return wire.FrameReader(b).read()


@pytest.mark.parametrize(
    "task",
    [
        messages.Task(1, messages.Payload.of((abs, (-3,), {}))),
        messages.Task(2**63, messages.Payload.of((abs, (-3,), {})), worker=3, timeout=1.5),
        messages.Task(7, messages.Payload.of((abs, (-3,), {})), timeout=0.0, window=64),
    ],
    ids=["plain", "pinned-with-timeout", "streamed"],
)
def test_a_task_round_trips_with_its_options(pair: Pair, task: messages.Task) -> None:
    got = _round_trip(pair, task)
    assert isinstance(got, messages.Task)
    assert (got.id, got.worker, got.timeout, got.window) == (
        task.id,
        task.worker,
        task.timeout,
        task.window,
    )
    fn, args, kwargs = got.payload.open()
    assert fn(*args, **kwargs) == 3


def test_a_call_is_one_pickle_behind_a_binary_header() -> None:
    payload = messages.Payload.of((abs, (-3,), {}))
    (frame,) = wire.encode(messages.Task(5, payload, timeout=None))
    size, lengths = wire.frame_lengths(frame)
    assert lengths == []
    assert size == len(payload.data)
    assert frame.endswith(payload.data), "the data is the payload's pickle, not an envelope"
    assert len(frame) - len(payload.data) < 40


def test_results_and_items_round_trip(pair: Pair) -> None:
    array = np.arange(100_000, dtype=np.float64)
    value = messages.Result(9, value=messages.Payload.of({"a": array}))
    empty = messages.Result(10)
    item = messages.Item(11, 4, messages.Payload.of("x"))
    try:
        raise KeyError("missing")
    except KeyError as error:
        failed = messages.Result(12, failure=messages.Failure.of(error))
    a, b = pair
    writer = wire.FrameWriter(a)
    sender = threading.Thread(
        target=lambda: [writer.send(m) for m in (value, empty, item, failed)], daemon=True
    )
    sender.start()
    reader = wire.FrameReader(b)
    got_value, got_empty, got_item, got_failed = (reader.read() for _ in range(4))
    sender.join(20)
    assert isinstance(got_value, messages.Result)
    assert got_value.value is not None
    np.testing.assert_array_equal(got_value.value.open()["a"], array)
    assert got_empty == messages.Result(10)
    assert isinstance(got_item, messages.Item)
    assert (got_item.id, got_item.seq, got_item.value.open()) == (11, 4, "x")
    assert isinstance(got_failed, messages.Result)
    assert got_failed.failure is not None
    assert got_failed.failure.type_name == "builtins.KeyError"
    assert got_failed.failure.exception is not None
    assert isinstance(got_failed.failure.exception.open(), KeyError)


def test_big_buffers_of_a_result_stay_out_of_band() -> None:
    array = np.ones(1 << 20, dtype=np.uint8)
    parts = wire.encode(messages.Result(1, value=messages.Payload.of(array)))
    size, lengths = wire.frame_lengths(parts[0])
    assert lengths == [array.nbytes]
    assert size < 1000
    assert any(isinstance(p, memoryview) and p.nbytes == array.nbytes for p in parts)


def test_an_unknown_frame_kind_is_an_error(pair: Pair) -> None:
    a, b = pair
    a.sendall(wire._HEAD.pack(250, 0, 0))
    with pytest.raises(ValueError, match="unknown frame kind 250"):
        wire.FrameReader(b).read()


def test_nan_timeout_is_not_a_timeout_of_nan(pair: Pair) -> None:
    got = _round_trip(pair, messages.Task(1, messages.Payload.of(None)))
    assert isinstance(got, messages.Task)
    assert got.timeout is None
    assert not math.isnan(got.timeout or 0.0)


class _SlowStream:
    """A socket whose sends take a while, so frames of other threads queue up."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def sendall(self, data: bytes | memoryview) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(20)
        self.sock.sendall(data)

    def recv_into(self, buffer: memoryview, n: int) -> int:
        return self.sock.recv_into(buffer, n)

    def close(self) -> None:
        self.sock.close()


def test_frames_written_while_the_writer_is_busy_go_out_together_in_order(pair: Pair) -> None:
    a, b = pair
    stream = _SlowStream(a)
    writer = wire.FrameWriter(stream)
    first = threading.Thread(target=writer.send, args=("first",))
    first.start()
    assert stream.entered.wait(20)
    # While "first" is being written, 50 frames from other threads queue up behind it;
    # none of them waits for the write.
    for i in range(50):
        thread = threading.Thread(target=writer.send, args=(i,))
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), "a queued frame's writer returned at once"
    stream.release.set()
    first.join(20)
    reader = wire.FrameReader(b)
    assert [reader.read() for _ in range(51)] == ["first", *range(50)]
    assert stream.calls == 2, "the 50 queued frames went out in one write"
    assert writer.writes == 2


def test_a_failed_write_does_not_wedge_the_writer(pair: Pair) -> None:
    a, b = pair
    writer = wire.FrameWriter(a)
    b.close()

    def flood() -> None:
        for _ in range(1000):
            writer.send(b"x" * 100_000)

    with pytest.raises(OSError):
        flood()
    with pytest.raises(OSError):
        writer.send("again")  # raises again rather than queueing forever


def test_a_frame_pointing_into_the_callers_memory_is_sent_before_write_returns(
    pair: Pair,
) -> None:
    a, b = pair
    stream = _SlowStream(a)
    writer = wire.FrameWriter(stream)
    first = threading.Thread(target=writer.send, args=("first",))
    first.start()
    assert stream.entered.wait(20)
    array = np.arange(100_000, dtype=np.int64)  # an out-of-band buffer: a memoryview part
    big = threading.Thread(target=writer.send, args=(array,))
    big.start()
    big.join(0.3)
    assert big.is_alive(), "it waits for the writer instead of queueing a view of the array"
    stream.release.set()
    first.join(20)
    reader = wire.FrameReader(b)
    assert reader.read() == "first"
    got = reader.read()
    big.join(20)
    array[:] = -1  # changed after write() returned: what was sent is what it was then
    np.testing.assert_array_equal(got, np.arange(100_000, dtype=np.int64))
