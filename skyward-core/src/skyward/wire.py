"""Length-prefixed frames: a binary header, one pickle, and its out-of-band buffers.

A frame is::

    u8 kind | u32 data length | u16 buffer count | fields of the kind | u64 length of
    each buffer | data | buffers

Kind 0 carries any object as a pickle (Skyward's envelopes: greetings, logs, samples...).
The hot messages (a call, its result, a stream's item) have kinds of their own (see
:func:`register`): their ids and options are the fixed binary fields and ``data`` is the
user's pickle itself, so a call is pickled once, not once more inside an envelope. Large
buffers (numpy arrays, tensors, bytes handed over as ``PickleBuffer``) travel after the
data untouched: a 256 MB array is neither copied into the pickle nor copied again on the
way out. The same framing serves a local socket and an SSH channel: all it needs is
:class:`skyward.provider.Stream`.

Writers coalesce: a frame written while another thread is writing on the same stream is
queued, and the writing thread sends everything queued in one more write before it
returns. A lone frame goes out at once; frames that pile up (results of several workers,
log lines, a batch of calls) share system calls and segments.

One thread sending many calls never builds such a queue, so it says so: inside
:func:`holding`, frames written with ``hold=True`` wait in their writer until the block
ends, :func:`flush_held` is called (before the thread waits for anything), or any other
frame is written to that writer (which sends them first, so order is kept across
threads). A gather of thousands of calls goes out in a few writes; a lone call, written
outside such a block, is never delayed.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import select
import struct
import threading
from collections import ChainMap
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import cloudpickle

from skyward import buffers as bigbuffers
from skyward import reducers
from skyward.errors import SerializationError

if TYPE_CHECKING:
    # Only a protocol: the agent (which imports this module) needs none of skyward.provider.
    from skyward.provider import Stream

__all__ = [
    "FrameReader",
    "FrameWriter",
    "dumps",
    "dumps_envelope",
    "encode",
    "encode_local",
    "flush_held",
    "frame_lengths",
    "has_held",
    "holding",
    "loads",
    "register",
]

_HEAD = struct.Struct("!BIH")
_BUFLEN = struct.Struct("!Q")
_MAX_BUFFERS = 0xFFFF
_READ_CHUNK = 256 * 1024
# Buffers at least this large are received straight into their own memory, and sent
# without being joined to the frame's head.
_DIRECT_READ = 64 * 1024
# A writer's queue of frames waiting for the writing thread; past this, writers wait.
_QUEUE_LIMIT = 4 * 1024 * 1024
# Frames held by holding() past this many bytes in one writer are sent at once.
_HOLD_LIMIT = 1024 * 1024

Part = bytes | memoryview
Parts = list[Part]

KIND_PICKLE = 0
"""A pickled object (no fields)."""

Pack = Callable[[Any], tuple[tuple[Any, ...], bytes, Sequence[Any]]]
"""``obj -> (field values, data, buffers)``."""
Unpack = Callable[[tuple[Any, ...], bytes, list[Any]], Any]
"""``(field values, data, buffers) -> obj`` (buffers: ``bytearray`` or ``mmap``)."""

_by_type: dict[type, tuple[int, struct.Struct, Pack]] = {}
_by_kind: dict[int, tuple[struct.Struct, Unpack]] = {}


def register(kind: int, cls: type, fields: struct.Struct, pack: Pack, unpack: Unpack) -> None:
    """Frames of ``cls`` carry ``fields`` in binary and their own pickle as data."""
    if not 0 < kind < 256:
        raise ValueError(f"frame kind {kind} is not in 1..255")
    _by_type[cls] = (kind, fields, pack)
    _by_kind[kind] = (fields, unpack)


def dumps(obj: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj`` by value where needed, keeping large buffers out of band (tensors
    and ``array.array`` too: see :mod:`skyward.reducers`).

    :raises SerializationError: when something in ``obj`` cannot be pickled.
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        with io.BytesIO() as file:
            reducers.table()  # adds torch's reducer once the user imported torch
            pickler = _Pickler(file, protocol=5, buffer_callback=buffers.append)
            pickler.dump(obj)
            data = file.getvalue()
    except Exception as error:
        raise SerializationError(f"cannot pickle {_describe(obj)}: {error}") from error
    return data, buffers


def loads(data: bytes | bytearray | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Inverse of :func:`dumps`."""
    return pickle.loads(data, buffers=buffers)


def _describe(obj: object) -> str:
    name = type(obj).__name__
    return f"a {name}" if name[0] not in "AEIOU" else f"an {name}"


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    # Read once per pickler, at its creation (an instance attribute set later is ignored).
    # A live view: reducers added to the table later (torch, once imported) are seen.
    # Flat (one lookup per object, not a ChainMap inside a ChainMap).
    dispatch_table: ClassVar[ChainMap[type, Any]] = ChainMap(
        reducers.table(), *cloudpickle.Pickler.dispatch_table.maps
    )


def dumps_envelope(obj: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Frames carry Skyward's own message types, which the C pickler handles several
    times faster than cloudpickle's; the user's objects inside them are already pickled
    (by value, where needed) in a ``Payload``. Anything else falls back to cloudpickle."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        return pickle.dumps(obj, protocol=5, buffer_callback=buffers.append), buffers
    except Exception:
        return dumps(obj)


def _raw(buffer: Any) -> memoryview:
    if isinstance(buffer, pickle.PickleBuffer):
        return buffer.raw()
    view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def encode(obj: object) -> Parts:
    """The parts of one frame, ready for :meth:`FrameWriter.write`."""
    codec = _by_type.get(type(obj))
    if codec is None:
        kind, fields = KIND_PICKLE, b""
        data, buffers = dumps_envelope(obj)
        raws = [b.raw() for b in buffers]
    else:
        kind, layout, pack = codec
        values, data, found = pack(obj)
        fields = layout.pack(*values)
        raws = [_raw(b) for b in found]
    if len(raws) > _MAX_BUFFERS:
        raise SerializationError(f"too many out-of-band buffers ({len(raws)})")
    head = _HEAD.pack(kind, len(data), len(raws)) + fields
    if raws:
        head += struct.pack(f"!{len(raws)}Q", *(r.nbytes for r in raws))
    # Small frames go out in one write: one syscall, one segment.
    if not raws or sum(r.nbytes for r in raws) < _DIRECT_READ:
        return [b"".join([head, data, *raws])]
    return [head + data, *raws]


def encode_local(obj: object) -> Parts:
    """:func:`encode` for a process on this machine that reads with a
    :class:`skyward.buffers.FdSocket`: buffers in memory files
    (:class:`skyward.buffers.SharedBuffer`) travel as their descriptors, passed with the
    frame's head, instead of their bytes (their lengths carry
    :data:`skyward.buffers.SHARED`)."""
    kind, layout, pack = _by_type[type(obj)]
    values, data, found = pack(obj)
    raws, lengths, fds = [], [], []
    for buffer in found:
        if isinstance(buffer, bigbuffers.SharedBuffer):
            lengths.append(len(buffer) | bigbuffers.SHARED)
            fds.append(buffer.fd)
        else:
            raw = _raw(buffer)
            raws.append(raw)
            lengths.append(raw.nbytes)
    if not fds or len(fds) > bigbuffers.MAX_FDS:
        return encode(obj)  # more than one message can pass: the bytes travel instead
    head = _HEAD.pack(kind, len(data), len(lengths)) + layout.pack(*values)
    head += struct.pack(f"!{len(lengths)}Q", *lengths)
    # The descriptors ride on the first part, which the writer must send on its own (not
    # joined to another): it takes every small buffer up to the first large one.
    lead = 0
    while lead < len(raws) and raws[lead].nbytes < _DIRECT_READ:
        lead += 1
    first = bigbuffers.FdBytes(b"".join([head, data, *raws[:lead]]))
    first.fds = tuple(fds)
    return [first, *raws[lead:]]


def frame_lengths(head: bytes | memoryview) -> tuple[int, list[int]]:
    """``(data length, buffer lengths)`` from the start of a frame (for tests and tools)."""
    kind, size, count = _HEAD.unpack(head[: _HEAD.size])
    start = _HEAD.size + (_by_kind[kind][0].size if kind else 0)
    lengths = struct.unpack(f"!{count}Q", head[start : start + 8 * count])
    return size, list(lengths)


def _nbytes(part: Part) -> int:
    return len(part) if isinstance(part, bytes) else part.nbytes


_local = threading.local()


@contextlib.contextmanager
def holding() -> Iterator[None]:
    """In this thread, frames written with ``hold=True`` wait until the block ends.

    For a loop that sends many calls: they go out together. The caller must call
    :func:`flush_held` before it waits for anything those calls lead to (room on a node,
    a result). Nested blocks flush when the outermost one ends.
    """
    if getattr(_local, "writers", None) is not None:
        yield
        return
    _local.writers = []
    try:
        yield
    finally:
        try:
            flush_held()
        finally:
            _local.writers = None


def flush_held() -> None:
    """Send the frames this thread holds (in :func:`holding`). A write that fails is
    ignored, as a failed write of a call is: the call waits in its node client, which
    sends it again on the next connection if the agent does not have it."""
    writers: list[FrameWriter] | None = getattr(_local, "writers", None)
    if not writers:
        return
    pending, writers[:] = list(writers), []
    for writer in pending:
        with contextlib.suppress(OSError, EOFError):
            writer.write([])


def has_held() -> bool:
    """True when this thread holds frames not yet sent."""
    return bool(getattr(_local, "writers", None))


class FrameWriter:
    """Writes whole frames to a stream; safe to share between threads.

    A frame written while another thread is writing joins a queue that thread sends next
    (in one write when the frames are small), instead of waiting for the lock: frames
    keep the order in which :meth:`write` was called. A frame with out-of-band buffers (it
    points into the caller's memory), or one that would take the queue over 4 MiB, waits
    for the writer and is written before :meth:`write` returns. A frame queued behind a
    write that fails is lost with the connection, like bytes still in the socket's buffer
    would be.
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._cond = threading.Condition(threading.Lock())
        self._queue: Parts = []
        self._queued = 0
        self._busy = False
        self.written = 0
        """Bytes written so far (whole frames)."""
        self.writes = 0
        """Batches of frames written (several queued frames are one)."""
        self._held: Parts = []
        self._held_size = 0

    def write(self, parts: Parts, *, hold: bool = False) -> None:
        """Write a frame (its encoded ``parts``); ``hold=True`` lets it wait inside
        :func:`holding` (see the module's notes)."""
        with self._cond:
            held_here: list[FrameWriter] | None = getattr(_local, "writers", None)
            if hold and held_here is not None and all(type(p) is bytes for p in parts):
                size = sum(_nbytes(p) for p in parts)
                if self._held_size + size < _HOLD_LIMIT:
                    self._held.extend(parts)
                    self._held_size += size
                    if self not in held_here:
                        held_here.append(self)
                    return
            if self._held:
                # Frames held by a holding thread go first: order is kept.
                parts = self._held + parts
                self._held, self._held_size = [], 0
            if not parts:
                return
            if self._busy:
                size = sum(_nbytes(p) for p in parts)
                # Only frames of immutable bytes wait in the queue: one that points into
                # the caller's memory (an array's out-of-band buffer) is written before
                # write() returns, as a caller that changes its array next may expect.
                if all(type(p) is bytes for p in parts) and self._queued + size <= _QUEUE_LIMIT:
                    self._queue.extend(parts)
                    self._queued += size
                    return
                while self._busy:
                    self._cond.wait()
            self._busy = True
        pending = parts
        try:
            while True:
                self._send(pending)
                with self._cond:
                    if not self._queue:
                        self._busy = False
                        self._cond.notify_all()
                        return
                    pending, self._queue, self._queued = self._queue, [], 0
                    self._cond.notify_all()
        except BaseException:
            with self._cond:
                self._busy = False
                self._queue, self._queued = [], 0
                self._cond.notify_all()
            raise

    def _send(self, parts: Parts) -> None:
        small: Parts = []
        for part in parts:
            if _nbytes(part) < _DIRECT_READ:
                small.append(part)
                continue
            if small:
                self._sendall(small)
                small = []
            self._sendall([part])
        if small:
            self._sendall(small)

    def _sendall(self, parts: Parts) -> None:
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._stream.sendall(data)
        self.written += _nbytes(data)
        self.writes += 1

    def send(self, obj: object) -> None:
        """Encode and write ``obj``; encoding errors surface before anything is written."""
        self.write(encode(obj))


class FrameReader:
    """Reads frames from a stream through a small receive buffer.

    Buffers of 1 MiB and more are received straight into memory of their own, from
    ``allocate`` (:func:`skyward.buffers.allocate` unless given); a buffer sent by
    :func:`encode_local` is mapped from the descriptor the stream passed.
    """

    def __init__(
        self, stream: Stream, allocate: Callable[[int], bytearray | Any] | None = None
    ) -> None:
        self._stream = stream
        self._allocate = allocate or bigbuffers.allocate
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

    def _read_buffer(self, n: int) -> bytearray | Any:
        if n & bigbuffers.SHARED:
            take = getattr(self._stream, "take_shared", None)
            if take is None:
                raise ValueError("a frame refers to shared memory this stream cannot pass")
            return take(n & ~bigbuffers.SHARED)
        out = self._allocate(n) if n >= bigbuffers.LARGE else bytearray(n)
        have = min(n, self._end - self._start)
        out[:have] = self._view[self._start : self._start + have]
        self._start += have
        if have < n and n - have < _DIRECT_READ:
            out[have:] = self._take(n - have)
            return out
        view = memoryview(out)
        # Large buffers' pages are mapped a few MiB ahead of the bytes received, not all
        # before the first byte (the sender would wait) nor one fault at a time.
        ready = have if n >= bigbuffers.LARGE else n
        while have < n:
            if ready < n and have + _READ_CHUNK > ready:
                step = min(bigbuffers.AHEAD, n - ready)
                ready = ready + step if bigbuffers.populate(out, ready, step) else n
            got = self._stream.recv_into(view[have:], n - have)
            if got == 0:
                raise EOFError("connection closed")
            have += got
        return out

    def buffered(self) -> bool:
        """True when bytes of the stream wait in this reader's buffer."""
        return self._end > self._start

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
        """Read one frame and decode it. Raises ``EOFError`` when the peer closed."""
        kind, size, count = _HEAD.unpack(self._take(_HEAD.size))
        values: tuple[Any, ...] = ()
        unpack: Unpack | None = None
        if kind:
            try:
                layout, unpack = _by_kind[kind]
            except KeyError:
                raise ValueError(f"unknown frame kind {kind}") from None
            values = layout.unpack(self._take(layout.size))
        lengths = struct.unpack(f"!{count}Q", self._take(8 * count)) if count else ()
        data = bytes(self._take(size))
        buffers = [self._read_buffer(n) for n in lengths]
        if unpack is None:
            return loads(data, buffers)
        return unpack(values, data, buffers)
