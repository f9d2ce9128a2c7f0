"""``sky.put(value) -> sky.Ref``: data sent to each node once, however many calls use it.

A :class:`Ref` pickles as its id only. The client sees which refs a call's payload holds
(as an argument or captured in a closure: pickling finds both) and sends each to a node
before the first call there that needs it (a :class:`~skyward.messages.Put`); later calls
send the id. On the node the agent writes the value, with its pickle-5 buffers aligned,
into a file of its directory; the agent's threads and its worker processes map that file
(a numpy array is read from the page cache, not copied per process) and unpickle it once
per process. Refs resolve to their values while the call's payload is unpickled, before
the function runs. ``ref.release()`` (or the pool closing) removes it from every node.

Treat a ref's value as read-only: its arrays come back read-only, and other objects are
shared by the calls that run in the same process.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import mmap
import os
import pickle
import shutil
import struct
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from skyward.errors import SerializationError

if TYPE_CHECKING:
    from skyward.messages import Payload

__all__ = ["REFS_DIR_ENV", "Ref", "put"]

T = TypeVar("T")

REFS_DIR_ENV = "SKYWARD_REFS_DIR"
"""Set by the agent for its worker processes: where the node's refs are stored."""

_collecting: contextvars.ContextVar[list[Ref[Any]] | None] = contextvars.ContextVar(
    "skyward_refs_collecting", default=None
)


class _Holder(Protocol):
    def release_refs(self, ids: tuple[str, ...]) -> None: ...


class Ref(Generic[T]):
    """A value stored on the nodes that use it; pass it to calls instead of the value."""

    def __init__(self, value: T) -> None:
        from skyward import wire

        self.id = os.urandom(16).hex()  # not uuid: one import fewer on the agent's path
        self._value: T | None = value
        # Pickled once, here: an unpicklable value fails at put(), not at some later call.
        data, buffers = wire.dumps(value)
        self._pickled: tuple[bytes, tuple[Any, ...]] | None = (data, tuple(buffers))
        self._released = False
        self._lock = threading.Lock()
        self._holders: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def value(self) -> T:
        """The value, on the client."""
        if self._released:
            raise ValueError(f"{self!r} was released")
        return self._value  # type: ignore[return-value]

    @property
    def released(self) -> bool:
        return self._released

    def pickled(self) -> tuple[bytes, tuple[Any, ...]]:
        """The value's pickle and out-of-band buffers (a ``Payload``'s fields)."""
        pickled = self._pickled
        if pickled is None:
            raise SerializationError(f"{self!r} was released: it cannot be sent to a call")
        return pickled

    def held_by(self, holder: _Holder) -> None:
        """``holder`` (a node's client) sent this ref to its node."""
        with self._lock:
            self._holders.add(holder)

    def release(self) -> None:
        """Remove the value from every node that has it (and from here). Idempotent."""
        with self._lock:
            self._released = True
            self._value, self._pickled = None, None
            holders = list(self._holders)
            self._holders.clear()
        for holder in holders:
            holder.release_refs((self.id,))

    def __reduce__(self) -> tuple[Any, ...]:
        if self._released:
            raise SerializationError(f"{self!r} was released: it cannot be sent to a call")
        found = _collecting.get()
        if found is not None:
            found.append(self)
        return (_resolve, (self.id,))

    def __repr__(self) -> str:
        state = " (released)" if self._released else ""
        return f"<sky.Ref {self.id[:12]}{state}>"


class FunctionBlob:
    """A call's function, pickled by value, named by the hash of its pickle.

    It travels like a ref (a ``Put`` once per node, then its id). The client pickles the
    function again whenever what it captured may have changed (see
    :mod:`skyward.function_blobs`): an edited function, or globals it captured that
    changed, give another hash and so are sent again. On the node it is unpickled once per
    process and reused.
    """

    __slots__ = ("_buffers", "_data", "captured", "id")

    def __init__(self, data: bytes, buffers: list[pickle.PickleBuffer]) -> None:
        # SHA-1 hashes about 3x faster than BLAKE2 here (1.8 GB/s with the CPU's SHA
        # instructions) and is hashed each call. Collisions need someone who crafts
        # them, and only the client's own code is ever named by it.
        digest = hashlib.sha1(data, usedforsecurity=False)
        for buffer in buffers:
            digest.update(buffer.raw())
        self.id = f"fn-{digest.hexdigest()}"
        self._data, self._buffers = data, tuple(buffers)
        self.captured: tuple[Any, ...] = ()
        """The :class:`Ref` values the function captures (pickled inside by id): they
        travel to a node before the first call of the function there."""

    def pickled(self) -> tuple[bytes, tuple[Any, ...]]:
        """The function's pickle and out-of-band buffers (a ``Payload``'s fields)."""
        return self._data, self._buffers

    def held_by(self, holder: _Holder) -> None:
        """Functions stay on the node until the pool closes."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_resolve, (self.id,))

    def __repr__(self) -> str:
        return f"<function blob {self.id[:15]}>"


def put(value: T) -> Ref[T]:
    """Store ``value`` for calls to use: each node receives it once, before the first call
    that uses it (as an argument or in a closure), and keeps it until the pool closes or
    ``ref.release()``. Raises :class:`~skyward.errors.SerializationError` at once when
    ``value`` cannot be pickled."""
    return Ref(value)


@contextlib.contextmanager
def collecting() -> Any:
    """Collect the refs pickled inside the block (a call's payload)."""
    found: list[Ref[Any]] = []
    token = _collecting.set(found)
    try:
        yield found
    finally:
        _collecting.reset(token)


# -- the node's side ----------------------------------------------------------------------

_HEAD = struct.Struct("!QI")
_SPAN = struct.Struct("!QQ")
_ALIGN = 64
_values: dict[str, Any] = {}
_values_lock = threading.Lock()


def directory() -> Path:
    return Path(os.environ.get(REFS_DIR_ENV) or "refs").absolute()


def store(ref_id: str, payload: Payload) -> None:
    """Agent: keep ``payload`` for the node's processes (written once, then renamed)."""
    folder = directory()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    raws = [memoryview(b).cast("B") for b in payload.buffers]
    head = _HEAD.size + _SPAN.size * len(raws)
    offset = _aligned(head + len(payload.data))
    spans = []
    for raw in raws:
        spans.append((offset, raw.nbytes))
        offset = _aligned(offset + raw.nbytes)
    partial = folder / f".{ref_id}.partial"
    with open(partial, "wb") as handle:
        handle.write(_HEAD.pack(len(payload.data), len(raws)))
        for span in spans:
            handle.write(_SPAN.pack(*span))
        handle.write(payload.data)
        for (start, _), raw in zip(spans, raws, strict=True):
            handle.seek(start)
            handle.write(raw)
    partial.rename(folder / ref_id)


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def stored() -> tuple[str, ...]:
    folder = directory()
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")))


def forget(ids: tuple[str, ...]) -> None:
    """Drop this process's opened values of ``ids``."""
    with _values_lock:
        for ref_id in ids:
            _values.pop(ref_id, None)


def remove(ids: tuple[str, ...]) -> None:
    """Agent: forget ``ids`` and delete them from the node."""
    forget(ids)
    folder = directory()
    for ref_id in ids:
        with contextlib.suppress(FileNotFoundError):
            (folder / ref_id).unlink()


def remove_all() -> None:
    shutil.rmtree(directory(), ignore_errors=True)


def _resolve(ref_id: str) -> Any:
    """Unpickling a ref on the node: its value, opened once per process."""
    with _values_lock:
        if ref_id in _values:
            return _values[ref_id]
    path = directory() / ref_id
    try:
        handle = open(path, "rb")  # noqa: SIM115 (the map outlives the file object)
    except FileNotFoundError:
        raise LookupError(
            f"sky.Ref {ref_id[:12]} is not on this node: it was released (ref.release()) "
            "while a call that uses it was on its way"
        ) from None
    with handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    size, count = _HEAD.unpack(view[: _HEAD.size])
    spans = [
        _SPAN.unpack(view[_HEAD.size + i * _SPAN.size : _HEAD.size + (i + 1) * _SPAN.size])
        for i in range(count)
    ]
    start = _HEAD.size + _SPAN.size * count
    from skyward import wire

    value = wire.loads(view[start : start + size], [view[o : o + n] for o, n in spans])
    with _values_lock:
        return _values.setdefault(ref_id, value)
