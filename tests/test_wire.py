"""Frames over a real socketpair: round trips, big arrays, errors, remote exceptions."""

from __future__ import annotations

import pickle
import socket
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from skyward import messages, wire
from skyward.errors import RemoteError, RemoteTraceback, SerializationError, SkywardError
from skyward.node import rebuild_exception
from tests.conftest import Pair


def in_background(fn: Callable[[], None]) -> Callable[[], None]:
    """Start ``fn`` in a thread; return a join that re-raises what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> None:
        thread.join(20)
        assert not thread.is_alive(), "writer thread hung"
        if errors:
            raise errors[0]

    return join


def nothing_to_read(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(20)
    return False


def header(parts: list[Any]) -> tuple[int, list[int]]:
    """(payload length, buffer lengths) from the head of an encoded frame."""
    return wire.frame_lengths(bytes(parts[0][:4096]))


class CustomError(Exception):
    """An exception type that pickles and unpickles normally."""


class HalfPicklableError(Exception):
    """Pickles (args=(message,)) but cannot unpickle: __init__ needs two arguments."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class UnpicklableError(Exception):
    """Carries a lock, so it cannot be pickled at all."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def closure_over(value: object) -> Callable[[], object]:
    return lambda: value


def raised(error: BaseException) -> BaseException:
    """``error`` with a real traceback."""

    def fail() -> None:
        raise error

    try:
        fail()
    except BaseException as caught:
        return caught
    raise AssertionError("unreachable")


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        None,
        0,
        -(2**70),
        3.5,
        "héllo ✓",
        b"\x00bytes\xff",
        bytearray(b"mutable"),
        [1, [2, [3]], {"a": (1, 2)}],
        {1, 2, 3},
        {"nested": {"list": [None, True, False]}},
        (),
        messages.Heartbeat(),
        messages.Shutdown(),
        messages.Hello(node=1, pid=42, python="3.11", skyward_version="0.1.0"),
        messages.Log(stream="stdout", line="hello", timestamp=1.5),
        messages.Sample(1.0, 2.0, 3.0, 4.0, gpu_utilization=50.0),
    ],
)
def test_small_objects_round_trip(pair: Pair, obj: object) -> None:
    a, b = pair
    wire.FrameWriter(a).send(obj)
    got = wire.FrameReader(b).read()
    assert got == obj
    assert type(got) is type(obj)


def test_functions_travel_by_value(pair: Pair) -> None:
    a, b = pair
    offset = 10
    wire.FrameWriter(a).send(lambda x: x + offset)
    fn = wire.FrameReader(b).read()
    assert fn(5) == 15


def test_thousand_frames_back_to_back(pair: Pair) -> None:
    a, b = pair
    frames = [{"i": i, "text": f"{i:06d}" * (1 + i % 300)} for i in range(1000)]
    writer = wire.FrameWriter(a)
    join = in_background(lambda: [writer.send(f) for f in frames] and None)

    reader = wire.FrameReader(b)
    received = [reader.read() for _ in range(1000)]
    join()

    assert received == frames
    assert nothing_to_read(b)


def test_mixed_frames_back_to_back(pair: Pair) -> None:
    """Small frames, in-band payloads bigger than the receive buffer and big arrays, mixed."""
    a, b = pair
    rng = np.random.default_rng(0)
    frames: list[Any] = [
        "small",
        b"x" * (3 * 1024 * 1024),  # in-band payload larger than the 256 KB receive buffer
        rng.random(50_000),  # 400 KB out-of-band buffer
        [1, 2, 3],
        rng.random(10),  # tiny buffer, merged into one write
        b"y" * 300_000,
        "end",
    ]
    writer = wire.FrameWriter(a)
    join = in_background(lambda: [writer.send(f) for f in frames] and None)

    reader = wire.FrameReader(b)
    received = [reader.read() for _ in frames]
    join()

    for sent, got in zip(frames, received, strict=True):
        if isinstance(sent, np.ndarray):
            np.testing.assert_array_equal(got, sent)
        else:
            assert got == sent


def test_64mb_array_arrives_intact_and_writable(pair: Pair) -> None:
    a, b = pair
    array = np.arange(8 * 1024 * 1024, dtype=np.float64)  # 64 MiB
    assert array.nbytes == 64 * 1024 * 1024
    join = in_background(lambda: wire.FrameWriter(a).send(array))

    got = wire.FrameReader(b).read()
    join()

    assert isinstance(got, np.ndarray)
    assert got.dtype == array.dtype
    assert got.shape == array.shape
    assert np.array_equal(got, array)
    assert got.flags.writeable
    got[0] = -1.0  # really writable
    assert got[0] == -1.0
    assert array[0] == 0.0


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(20_000.0).reshape(100, 200)),
        np.arange(100_000.0)[::3],
        np.array([], dtype=np.float32),
        np.zeros((0, 5)),
        np.array(["a", "bb", "ccc"]),
    ],
    ids=["fortran-order", "strided-view", "empty", "empty-2d", "strings"],
)
def test_unusual_arrays_round_trip(pair: Pair, array: np.ndarray) -> None:
    a, b = pair
    join = in_background(lambda: wire.FrameWriter(a).send(array))
    got = wire.FrameReader(b).read()
    join()
    assert got.dtype == array.dtype
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_big_array_is_not_copied_into_the_pickle() -> None:
    array = np.ones(1024 * 1024, dtype=np.uint8)
    parts = wire.encode(array)
    size, lengths = header(parts)
    assert lengths == [array.nbytes]
    assert size < 10_000  # the payload holds only the array's description


@pytest.mark.parametrize("elements", [16, 100_000], ids=["small-buffers", "large-buffers"])
def test_frame_with_several_out_of_band_buffers(pair: Pair, elements: int) -> None:
    a, b = pair
    rng = np.random.default_rng(1)
    obj = {
        "x": rng.random(elements),
        "y": np.arange(elements, dtype=np.int32),
        "z": rng.integers(0, 255, size=(elements, 3), dtype=np.uint8),
        "raw": pickle.PickleBuffer(bytearray(b"pb" * elements)),
        "meta": {"name": "batch", "n": elements},
    }
    parts = wire.encode(obj)
    _, lengths = header(parts)
    assert lengths == [
        obj["x"].nbytes,
        obj["y"].nbytes,
        obj["z"].nbytes,
        2 * elements,
    ]

    writer = wire.FrameWriter(a)
    join = in_background(lambda: writer.write(parts))
    got = wire.FrameReader(b).read()
    join()

    np.testing.assert_array_equal(got["x"], obj["x"])
    np.testing.assert_array_equal(got["y"], obj["y"])
    np.testing.assert_array_equal(got["z"], obj["z"])
    assert bytes(got["raw"]) == b"pb" * elements
    assert got["meta"] == {"name": "batch", "n": elements}


def test_writer_is_safe_to_share_between_threads(pair: Pair) -> None:
    a, b = pair
    writer = wire.FrameWriter(a)
    senders, per_sender = 4, 100

    def send_all(sender: int) -> None:
        for i in range(per_sender):
            writer.send((sender, i, np.full(20_000, sender * 1000 + i, dtype=np.int64)))

    joins = [in_background(lambda s=s: send_all(s)) for s in range(senders)]
    reader = wire.FrameReader(b)
    received = [reader.read() for _ in range(senders * per_sender)]
    for join in joins:
        join()

    for sender in range(senders):
        mine = [(i, arr) for s, i, arr in received if s == sender]
        assert [i for i, _ in mine] == list(range(per_sender))
        for i, arr in mine:
            assert (arr == sender * 1000 + i).all()


# -- payloads and serialization errors ----------------------------------------------------


def test_payload_of_a_lambda_round_trips() -> None:
    factor = 3
    payload = messages.Payload.of(lambda x: x * factor)
    assert payload.open()(4) == 12


def test_task_payload_travels_with_its_buffers_out_of_band(pair: Pair) -> None:
    a, b = pair
    array = np.arange(200_000, dtype=np.float64)

    def total(values: np.ndarray, scale: float = 1.0) -> float:
        return float(values.sum() * scale)

    task = messages.Task(7, messages.Payload.of((total, (array,), {"scale": 2.0})))
    parts = wire.encode(task)
    size, lengths = header(parts)
    assert array.nbytes in lengths
    assert size < array.nbytes

    join = in_background(lambda: wire.FrameWriter(a).write(parts))
    got = wire.FrameReader(b).read()
    join()

    assert isinstance(got, messages.Task)
    assert got.id == 7
    fn, args, kwargs = got.payload.open()
    np.testing.assert_array_equal(args[0], array)
    assert fn(*args, **kwargs) == total(array, 2.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: threading.Lock(),
        lambda: {"ok": 1, "lock": threading.Lock()},
        lambda: closure_over(threading.Lock()),
    ],
    ids=["lock", "dict-with-lock", "lambda-closing-over-a-lock"],
)
def test_unpicklable_objects_raise_serialization_error(make: Callable[[], object]) -> None:
    with pytest.raises(SerializationError) as info:
        messages.Payload.of(make())
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, SkywardError)
    assert "lock" in str(info.value).lower()


def test_unpicklable_frame_writes_nothing(pair: Pair) -> None:
    a, b = pair
    writer = wire.FrameWriter(a)

    with pytest.raises(SerializationError):
        writer.send({"lock": threading.Lock()})
    with pytest.raises(SerializationError):
        writer.send(messages.Log(stream="stdout", line=threading.Lock(), timestamp=0.0))  # type: ignore[arg-type]

    assert nothing_to_read(b)
    # The stream is still usable: the next frame is the first one the reader sees.
    writer.send("after")
    assert wire.FrameReader(b).read() == "after"


def test_too_many_buffers_is_a_serialization_error(pair: Pair) -> None:
    a, b = pair
    many = [pickle.PickleBuffer(bytearray(1)) for _ in range(0x10000)]
    with pytest.raises(SerializationError):
        wire.FrameWriter(a).send(many)
    assert nothing_to_read(b)


# -- end of stream ------------------------------------------------------------------------


def test_eof_before_any_frame(pair: Pair) -> None:
    a, b = pair
    a.close()
    with pytest.raises(EOFError):
        wire.FrameReader(b).read()


def test_eof_after_the_last_frame(pair: Pair) -> None:
    a, b = pair
    wire.FrameWriter(a).send("only")
    a.shutdown(socket.SHUT_WR)
    reader = wire.FrameReader(b)
    assert reader.read() == "only"
    with pytest.raises(EOFError):
        reader.read()


@pytest.mark.parametrize("where", ["header", "buffer-lengths", "payload", "buffer"])
def test_eof_in_the_middle_of_a_frame(pair: Pair, where: str) -> None:
    a, b = pair
    array = np.arange(100_000, dtype=np.float64)  # an 800 KB buffer, read directly
    raw = b"".join(bytes(p) for p in wire.encode({"name": "x" * 50, "array": array}))
    size, lengths = header([raw])
    head = wire._HEAD.size + 8 * len(lengths)
    cut = {
        "header": 3,
        "buffer-lengths": wire._HEAD.size + 4,
        "payload": head + size // 2,
        "buffer": head + size + lengths[0] // 2,
    }[where]

    def send_part_and_close() -> None:
        a.sendall(raw[:cut])
        a.shutdown(socket.SHUT_WR)

    join = in_background(send_part_and_close)
    with pytest.raises(EOFError):
        wire.FrameReader(b).read()
    join()


# -- failures and remote exceptions -------------------------------------------------------


def test_failure_of_keeps_type_message_and_traceback() -> None:
    error = raised(ValueError("bad value 42"))
    failure = messages.Failure.of(error)

    assert failure.type_name == "builtins.ValueError"
    assert failure.message == "bad value 42"
    assert failure.traceback.startswith("Traceback (most recent call last):")
    assert "in fail" in failure.traceback
    assert failure.traceback.rstrip().endswith("ValueError: bad value 42")
    assert failure.exception is not None
    reopened = failure.exception.open()
    assert type(reopened) is ValueError
    assert reopened.args == ("bad value 42",)


def test_failure_of_a_custom_exception_round_trips_over_the_wire(pair: Pair) -> None:
    a, b = pair
    failure = messages.Failure.of(raised(CustomError("custom", 1)))
    assert failure.type_name.endswith("test_wire.CustomError")

    wire.FrameWriter(a).send(messages.Result(3, failure=failure))
    got = wire.FrameReader(b).read()

    assert isinstance(got, messages.Result)
    assert got.id == 3
    assert got.value is None
    assert got.failure is not None
    assert got.failure.type_name == failure.type_name
    assert got.failure.traceback == failure.traceback
    assert got.failure.exception is not None
    error = rebuild_exception(got.failure)
    assert type(error) is CustomError
    assert error.args == ("custom", 1)


def test_failure_of_skip_frames_drops_the_outer_frames() -> None:
    def inner() -> None:
        raise KeyError("k")

    def outer() -> None:
        inner()

    try:
        outer()
    except KeyError as error:
        full = messages.Failure.of(error)
        trimmed = messages.Failure.of(error, skip_frames=1)

    name = test_failure_of_skip_frames_drops_the_outer_frames.__name__
    assert f"in {name}" in full.traceback
    assert f"in {name}" not in trimmed.traceback
    assert "in outer" in trimmed.traceback
    assert "in inner" in trimmed.traceback
    assert trimmed.traceback.startswith("Traceback (most recent call last):")


def test_exception_that_pickles_but_does_not_unpickle_has_no_payload() -> None:
    error = raised(HalfPicklableError("half", 7))
    pickle.dumps(error)  # it does pickle...
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(error))  # ...but does not come back

    failure = messages.Failure.of(error)

    assert failure.exception is None
    assert failure.type_name.endswith("test_wire.HalfPicklableError")
    assert failure.message == "half"
    assert "HalfPicklableError: half" in failure.traceback


def test_unpicklable_exception_has_no_payload() -> None:
    failure = messages.Failure.of(raised(UnpicklableError("locked")))
    assert failure.exception is None
    assert failure.message == "locked"


class BadStrError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() is broken")


def test_failure_of_an_exception_whose_str_fails() -> None:
    failure = messages.Failure.of(raised(BadStrError()))
    assert failure.type_name.endswith("test_wire.BadStrError")
    assert "BadStrError" in failure.traceback


def test_rebuild_exception_returns_the_original_type_with_the_remote_traceback() -> None:
    failure = messages.Failure.of(raised(ZeroDivisionError("division by zero")))

    error = rebuild_exception(failure)

    assert type(error) is ZeroDivisionError
    assert str(error) == "division by zero"
    cause = error.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert cause.tb == failure.traceback
    assert "Remote traceback:" in str(cause)
    assert failure.traceback in str(cause)
    assert error.remote_traceback == failure.traceback  # type: ignore[attr-defined]


def test_rebuild_exception_without_payload_is_a_remote_error() -> None:
    failure = messages.Failure(
        type_name="somewhere.MissingError",
        message="it broke",
        traceback="Traceback (most recent call last):\n  ...\nsomewhere.MissingError: it broke\n",
    )

    error = rebuild_exception(failure)

    assert isinstance(error, RemoteError)
    assert isinstance(error, SkywardError)
    assert error.type_name == "somewhere.MissingError"
    assert error.remote_traceback == failure.traceback
    assert "somewhere.MissingError" in str(error)
    assert "it broke" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert error.__cause__.tb == failure.traceback


def test_rebuild_exception_of_a_half_picklable_error_is_a_remote_error() -> None:
    failure = messages.Failure.of(raised(HalfPicklableError("half", 7)))
    error = rebuild_exception(failure)
    assert isinstance(error, RemoteError)
    assert error.type_name == failure.type_name
    assert "half" in str(error)


@pytest.mark.parametrize(
    "payload",
    [messages.Payload(b"not a pickle"), messages.Payload.of("not an exception")],
    ids=["garbage", "not-an-exception"],
)
def test_rebuild_exception_with_a_bad_payload_is_a_remote_error(
    payload: messages.Payload,
) -> None:
    failure = messages.Failure("pkg.Err", "msg", "tb text", exception=payload)
    error = rebuild_exception(failure)
    assert isinstance(error, RemoteError)
    assert error.type_name == "pkg.Err"
    assert isinstance(error.__cause__, RemoteTraceback)
    assert error.__cause__.tb == "tb text"
