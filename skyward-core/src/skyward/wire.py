"""Length-prefixed frames carrying pickle protocol 5 with out-of-band buffers.

A frame is::

    u32 payload length | u16 buffer count | u64 length of each buffer | payload | buffers

The payload is a pickle; large buffers (numpy arrays, bytes handed over as
``PickleBuffer``) travel after it untouched, so a 256 MB array is neither copied into the
pickle nor copied again on the way out. The same framing serves a local socket and an SSH
channel: all it needs is :class:`skyward.provider.Stream`.
"""

from __future__ import annotations

import pickle
import select
import struct
import threading
from collections.abc import Sequence
from typing import Any

import cloudpickle

from skyward.errors import SerializationError
from skyward.provider import Stream

__all__ = ["FrameReader", "FrameWriter", "dumps", "encode", "loads"]

_HEAD = struct.Struct("!IH")
_BUFLEN = struct.Struct("!Q")
_MAX_BUFFERS = 0xFFFF
_READ_CHUNK = 256 * 1024
# Buffers at least this large are received straight into their own memory.
_DIRECT_READ = 64 * 1024

Parts = list[bytes | memoryview]


def dumps(obj: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj`` by value where needed, keeping large buffers out of band.

    :raises SerializationError: when something in ``obj`` cannot be pickled.
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except Exception as error:
        raise SerializationError(f"cannot pickle {_describe(obj)}: {error}") from error
    return data, buffers


def loads(data: bytes | bytearray | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Inverse of :func:`dumps`."""
    return pickle.loads(data, buffers=buffers)


def _describe(obj: object) -> str:
    name = type(obj).__name__
    return f"a {name}" if name[0] not in "AEIOU" else f"an {name}"


def _dumps_envelope(obj: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Frames carry Skyward's own message types, which the C pickler handles several
    times faster than cloudpickle's; the user's objects inside them are already pickled
    (by value, where needed) in a ``Payload``. Anything else falls back to cloudpickle."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        return pickle.dumps(obj, protocol=5, buffer_callback=buffers.append), buffers
    except Exception:
        return dumps(obj)


def encode(obj: object) -> Parts:
    """The parts of one frame, ready for :meth:`FrameWriter.write`."""
    payload, buffers = _dumps_envelope(obj)
    raws = [b.raw() for b in buffers]
    if len(raws) > _MAX_BUFFERS:
        raise SerializationError(f"too many out-of-band buffers ({len(raws)})")
    head = bytearray(_HEAD.pack(len(payload), len(raws)))
    for raw in raws:
        head += _BUFLEN.pack(raw.nbytes)
    # Small frames go out in one write: one syscall, one segment.
    if not raws or sum(r.nbytes for r in raws) < _DIRECT_READ:
        return [b"".join([bytes(head), payload, *(bytes(r) for r in raws)])]
    return [bytes(head) + payload, *raws]


class FrameWriter:
    """Writes whole frames to a stream; safe to share between threads."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.written = 0
        """Bytes written so far (whole frames)."""

    def write(self, parts: Parts) -> None:
        with self._lock:
            for part in parts:
                self._stream.sendall(part)
                self.written += len(part) if isinstance(part, bytes) else part.nbytes

    def send(self, obj: object) -> None:
        """Encode and write ``obj``; encoding errors surface before anything is written."""
        self.write(encode(obj))


class FrameReader:
    """Reads frames from a stream through a small receive buffer."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._buf = bytearray(_READ_CHUNK)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def _fill(self, need: int) -> None:
        """Make at least ``need`` bytes available from ``_start``."""
        if self._end - self._start >= need:
            return
        if need > len(self._buf):
            grown = bytearray(need)
            grown[: self._end - self._start] = self._view[self._start : self._end]
            self._buf, self._view = grown, memoryview(grown)
            self._end -= self._start
            self._start = 0
        elif self._start + need > len(self._buf):
            size = self._end - self._start
            self._view[:size] = self._view[self._start : self._end]
            self._start, self._end = 0, size
        while self._end - self._start < need:
            n = self._stream.recv_into(self._view[self._end :], len(self._buf) - self._end)
            if n == 0:
                raise EOFError("connection closed")
            self._end += n

    def _take(self, n: int) -> memoryview:
        self._fill(n)
        chunk = self._view[self._start : self._start + n]
        self._start += n
        return chunk

    def _read_buffer(self, n: int) -> bytearray:
        out = bytearray(n)
        have = min(n, self._end - self._start)
        out[:have] = self._view[self._start : self._start + have]
        self._start += have
        if have < n and n - have < _DIRECT_READ:
            out[have:] = self._take(n - have)
            return out
        view = memoryview(out)
        while have < n:
            got = self._stream.recv_into(view[have:], n - have)
            if got == 0:
                raise EOFError("connection closed")
            have += got
        return out

    def ready(self) -> bool:
        """True when bytes wait to be read (buffered here or on the socket): a read will
        not block for long. Only for streams with a ``fileno`` (sockets)."""
        if self._end > self._start:
            return True
        fileno = getattr(self._stream, "fileno", None)
        if fileno is None:
            return False
        readable, _, _ = select.select([fileno()], [], [], 0)
        return bool(readable)

    def read(self) -> Any:
        """Read one frame and unpickle it. Raises ``EOFError`` when the peer closed."""
        size, count = _HEAD.unpack(self._take(_HEAD.size))
        lengths = [_BUFLEN.unpack(self._take(_BUFLEN.size))[0] for _ in range(count)]
        payload = bytes(self._take(size))
        buffers = [self._read_buffer(n) for n in lengths]
        return loads(payload, buffers)
