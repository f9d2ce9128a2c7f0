"""Messages between the client and a node agent.

Envelopes hold only skyward types and plain data, so they always unpickle on both sides.
A task's function and arguments, and a result's value, travel as a separate inner pickle
(``Payload``): when *that* fails to unpickle (a module missing on the node, an exception
type missing on the client), the receiver still knows which task it belonged to and can
answer with a clear error instead of losing the connection.

The hot messages (:class:`Task`, :class:`Result`, :class:`Item`) are not pickled at all:
their frames carry the ids and options as binary fields and the payload's own pickle as
data (see the end of this module), so a call costs one pickle each way.
"""

from __future__ import annotations

import math
import pickle
import struct
import traceback
from typing import Any

import attrs
from attrs import frozen

from skyward import refs, wire

__all__ = [
    "EXIT_LIFETIME",
    "EXIT_NO_HEARTBEAT",
    "EXIT_REASON_FILE",
    "READY_PREFIX",
    "Ack",
    "Cancel",
    "Credit",
    "Failure",
    "GpuSample",
    "Heartbeat",
    "Hello",
    "Item",
    "Log",
    "Payload",
    "Put",
    "Release",
    "Result",
    "Sample",
    "Shutdown",
    "Task",
    "WorkerInit",
    "is_scalar",
    "scalar_arguments",
]

READY_PREFIX = "SKYWARD-AGENT-READY"
"""First line an agent prints on its original stdout: ``SKYWARD-AGENT-READY <port> <pid>``."""
EXIT_REASON_FILE = "exit-reason"
"""Written in the agent's directory when it stops on purpose: ``<exit code> <reason>``."""
EXIT_NO_HEARTBEAT = 3
"""Exit code of an agent whose client stopped sending heartbeats."""
EXIT_LIFETIME = 4
"""Exit code of an agent that reached the pool's lifetime (timeout or budget)."""


_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None), refs.Ref})
"""Argument types the standard pickler handles exactly as cloudpickle would."""

_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})

SEND_FUNCTIONS_ONCE = True
"""Send a call's function once per node, then its hash (False: by value in every call;
kept for benchmarks that compare the two)."""


@frozen
class Payload:
    """An inner pickle with its out-of-band buffers."""

    data: bytes
    buffers: tuple[Any, ...] = ()
    refs: tuple[Any, ...] = attrs.field(default=(), eq=False, repr=False)
    """The :class:`~skyward.refs.Ref` objects pickled inside (by id): the client sends
    them to a node before this payload. Never on the wire (see ``__reduce__``)."""

    @classmethod
    def of(cls, obj: object) -> Payload:
        """Pickle ``obj``; raises :class:`~skyward.errors.SerializationError`."""
        if type(obj) in _SCALARS:
            # A plain result (None, a number, a string): the C pickler, no ref to collect.
            return cls(pickle.dumps(obj, 5))
        with refs.collecting() as found:
            data, buffers = wire.dumps(obj)
        return cls(data, tuple(buffers), tuple({id(r): r for r in found}.values()))

    @classmethod
    def call(
        cls,
        fn: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        blob: tuple[Any, tuple[Any, ...]] | None = None,
    ) -> Payload:
        """Pickle a call: its function as a :class:`~skyward.refs.FunctionBlob` (sent to a
        node once, then named by its hash), then the arguments. Opens to ``(fn, args,
        kwargs)`` like ``Payload.of((fn, args, kwargs))``. ``blob``: what
        :func:`~skyward.function_blobs.function_blob` gave for ``fn`` (a batch of calls
        asks once)."""
        if not SEND_FUNCTIONS_ONCE:
            return cls.of((fn, args, kwargs))
        from skyward import function_blobs  # the client's side only: not on the agent's path

        buffers: list[pickle.PickleBuffer] = []
        # Refs the function closes over travel (once) as well as those in its arguments.
        function, captured = function_blobs.function_blob(fn) if blob is None else blob
        if scalar_arguments(args, kwargs):
            # Numbers and strings hold no ref: the C pickler alone, nothing to collect.
            data = pickle.dumps((function, args, kwargs), 5)
            return cls(data, (), (function, *captured))
        with refs.collecting() as found:
            if all(type(a) in _PLAIN for a in args) and all(
                type(v) in _PLAIN for v in kwargs.values()
            ):
                # Nothing here needs pickling by value: the C pickler is several times faster.
                data = pickle.dumps((function, args, kwargs), 5, buffer_callback=buffers.append)
            else:
                data, buffers = wire.dumps((function, args, kwargs))
        unique = {id(r): r for r in (*captured, *found)}
        return cls(data, tuple(buffers), (function, *unique.values()))

    def open(self) -> Any:
        return wire.loads(self.data, self.buffers)

    def __reduce__(self) -> tuple[Any, ...]:
        # Hand inner buffers to the outer pickler as PickleBuffers so they go out of band
        # in the frame too, instead of being copied into the envelope.
        return (Payload, (self.data, tuple(pickle.PickleBuffer(b) for b in self.buffers)))


def scalar_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a call's arguments are all numbers, strings, bytes or ``None``: they hold no
    ref and always pickle (with the C pickler, as they are)."""
    # Loops, not all() over generators: asked once per call of a batch, mostly of one or
    # two arguments, where making the generator costs more than the test.
    for value in args:
        if type(value) not in _SCALARS:
            return False
    if kwargs:
        for value in kwargs.values():
            if type(value) not in _SCALARS:
                return False
    return True


def is_scalar(value: object) -> bool:
    """Whether ``value`` is a number, string, bytes or ``None`` (see
    :func:`scalar_arguments`)."""
    return type(value) in _SCALARS


@frozen
class Hello:
    """First frame an agent sends on every new connection.

    On a reconnection, ``inflight`` and ``completed`` tell the client which of its tasks
    the agent has: the rest never arrived and are safe to send again.
    """

    node: int
    pid: int
    python: str
    skyward_version: str
    inflight: tuple[int, ...] = ()
    """Tasks queued or running."""
    completed: tuple[int, ...] = ()
    """Tasks finished whose results the client has not acknowledged (re-sent next)."""
    workers: int = 1
    """Workers on this node (``instance_info().workers_per_node``)."""
    executor: str = "thread"
    """``"process"`` or ``"thread"``."""
    refs: tuple[str, ...] = ()
    """Ids of the :class:`~skyward.refs.Ref` values the node holds."""


@frozen
class Task:
    """Run ``payload`` = ``(fn, args, kwargs)`` and answer with a :class:`Result` of ``id``."""

    id: int
    payload: Payload
    worker: int | None = None
    """Run on this worker of the node (``@ pool`` reaches every worker); any when ``None``."""
    timeout: float | None = None
    """Seconds the call may run; past it the call fails with ``TaskTimeoutError``."""
    window: int = 0
    """A streamed call (a generator function) when above 0: the node sends its items as
    :class:`Item` frames, at most ``window`` beyond what the client said it consumed
    (:class:`Credit`), then a :class:`Result` of ``None`` (or the failure) ends the stream."""


@frozen
class WorkerInit:
    """Agent → a new worker process: who it is (its ``instance_info()``)."""

    info: Any
    """The worker's :class:`~skyward.cluster.InstanceInfo`."""


@frozen
class Failure:
    """A remote exception, described well enough to re-raise on the client."""

    type_name: str
    message: str
    traceback: str
    exception: Payload | None = None
    """The pickled exception itself, when it could be pickled."""

    @classmethod
    def of(cls, error: BaseException, *, skip_frames: int = 0) -> Failure:
        tb = traceback.format_exception(type(error), error, error.__traceback__)
        if skip_frames and len(tb) > 1 + skip_frames:
            tb = [tb[0], *tb[1 + skip_frames :]]
        kind = type(error)
        pickled: Payload | None
        try:
            pickled = Payload.of(error)
            # Must also come back: exceptions with odd __init__ pickle but do not unpickle.
            pickled.open()
        except Exception:
            pickled = None
        return cls(
            type_name=f"{kind.__module__}.{kind.__qualname__}",
            message=_message(error),
            traceback="".join(tb),
            exception=pickled,
        )


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception as broken:  # a broken __str__ must not cost the task its answer
        return f"<str() of the exception failed: {broken!r}>"


@frozen
class Result:
    """The answer to task ``id``: a value payload, or a failure."""

    id: int
    value: Payload | None = None
    failure: Failure | None = None


@frozen
class Item:
    """Agent → client: item ``seq`` (0, 1, ...) that streamed task ``id`` yielded, and the
    items after it in ``more`` (``seq + 1``, ...) when several were waiting to be sent."""

    id: int
    seq: int
    value: Payload
    more: tuple[Payload, ...] = ()

    @property
    def values(self) -> tuple[Payload, ...]:
        return (self.value, *self.more) if self.more else (self.value,)

    @property
    def end(self) -> int:
        """The sequence number after this frame's last item."""
        return self.seq + 1 + len(self.more)


@frozen
class Credit:
    """Client → agent: the consumer of stream ``id`` has taken its items below ``consumed``;
    the node may send up to ``consumed + window``. Cumulative, so sending it again (after a
    reconnect) is harmless; it also lets the agent forget the items below ``consumed``."""

    id: int
    consumed: int


@frozen
class Cancel:
    """Client → agent: nobody wants task ``id`` any more.

    A queued task is dropped. A stream's generator stops at its next item (its cleanup
    runs). With ``force`` (a cancelled future, an interrupted caller) a running call stops
    where it stands: a process worker is killed, with everything it started, and replaced;
    a call on a thread cannot be stopped and runs on. Either way the agent answers with a
    :class:`Result` (a ``CancelledError``), which the client drops and acknowledges.
    """

    id: int
    force: bool = False
    """Stop a running call now (kill its worker process), not at its next item."""


@frozen
class Put:
    """Client → agent: keep ref ``id``'s value for the calls that name it."""

    id: str
    payload: Payload


@frozen
class Release:
    """Client → agent (→ worker processes): forget these refs."""

    ids: tuple[str, ...]


@frozen
class Heartbeat:
    """Client → agent: I am still here."""


@frozen
class Ack:
    """Client → agent: these results arrived; forget them. Also counts as a heartbeat."""

    ids: tuple[int, ...]


@frozen
class Shutdown:
    """Client → agent: finish, stop, and exit."""


@frozen
class Log:
    """Agent → client: one line a function (or anything on the node) printed."""

    stream: str
    line: str
    timestamp: float


@frozen
class GpuSample:
    """One GPU's figures in a :class:`Sample` (``None`` where the driver gives none)."""

    index: int
    """``nvidia-smi``'s index of the GPU."""
    utilization: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    temperature: float | None = None


@frozen
class Sample:
    """Agent → client: one resource sample."""

    cpu_percent: float
    memory_percent: float
    memory_used_mb: float
    memory_total_mb: float
    gpu_utilization: float | None = None
    gpu_memory_used_mb: float | None = None
    gpu_memory_total_mb: float | None = None
    gpu_temperature: float | None = None
    gpus: tuple[GpuSample, ...] = ()
    """Every GPU the node sees."""


# -- binary frames of the hot messages (see skyward.wire) ---------------------------------

KIND_TASK = 1
KIND_RESULT = 2
KIND_ITEM = 3

_TASK = struct.Struct("!QidI")
"""id, worker (-1: any), timeout (NaN: none), window."""
_RESULT = struct.Struct("!QB")
"""id, what the data is (``_VALUE``, ``_FAILURE`` or ``_EMPTY``)."""
_ITEM = struct.Struct("!QQI")
"""id, seq, count (items in the frame). One item: the data is its pickle, the buffers its
buffers. Several: the data starts with ``_ITEM_INDEX`` for each item (its pickle's length,
its buffer count), then the pickles one after another; the buffers follow item by item."""
_ITEM_INDEX = struct.Struct("!II")
_VALUE, _FAILURE, _EMPTY = 0, 1, 2


def _pack_task(task: Task) -> tuple[tuple[Any, ...], bytes, tuple[Any, ...]]:
    worker = -1 if task.worker is None else task.worker
    timeout = math.nan if task.timeout is None else task.timeout
    fields = (task.id, worker, timeout, task.window)
    return fields, task.payload.data, task.payload.buffers


def _unpack_task(fields: tuple[Any, ...], data: bytes, buffers: list[bytearray]) -> Task:
    task_id, worker, timeout, window = fields
    return Task(
        task_id,
        Payload(data, tuple(buffers)),
        None if worker < 0 else worker,
        None if math.isnan(timeout) else timeout,
        window,
    )


def _pack_result(result: Result) -> tuple[tuple[Any, ...], bytes, Any]:
    if result.failure is not None:
        data, buffers = wire.dumps_envelope(result.failure)
        return (result.id, _FAILURE), data, buffers
    if result.value is None:
        return (result.id, _EMPTY), b"", ()
    return (result.id, _VALUE), result.value.data, result.value.buffers


def _unpack_result(fields: tuple[Any, ...], data: bytes, buffers: list[bytearray]) -> Result:
    result_id, what = fields
    if what == _FAILURE:
        failure = wire.loads(data, buffers)
        if not isinstance(failure, Failure):
            raise ValueError(f"a result frame carried {type(failure).__name__}, not a Failure")
        return Result(result_id, failure=failure)
    if what == _EMPTY:
        return Result(result_id)
    return Result(result_id, Payload(data, tuple(buffers)))


def _pack_item(item: Item) -> tuple[tuple[Any, ...], bytes, tuple[Any, ...]]:
    if not item.more:
        return (item.id, item.seq, 1), item.value.data, item.value.buffers
    values = item.values
    index = b"".join(_ITEM_INDEX.pack(len(v.data), len(v.buffers)) for v in values)
    data = b"".join([index, *(v.data for v in values)])
    return (item.id, item.seq, len(values)), data, tuple(b for v in values for b in v.buffers)


def _unpack_item(fields: tuple[Any, ...], data: bytes, buffers: list[bytearray]) -> Item:
    item_id, seq, count = fields
    if count == 1:
        return Item(item_id, seq, Payload(data, tuple(buffers)))
    if count < 1:
        raise ValueError(f"an item frame holds {count} items")
    at, taken, values = _ITEM_INDEX.size * count, 0, []
    for size, nbuffers in _ITEM_INDEX.iter_unpack(data[:at]):
        values.append(Payload(data[at : at + size], tuple(buffers[taken : taken + nbuffers])))
        at, taken = at + size, taken + nbuffers
    if at != len(data) or taken != len(buffers):
        raise ValueError("an item frame's index does not match its contents")
    return Item(item_id, seq, values[0], tuple(values[1:]))


wire.register(KIND_TASK, Task, _TASK, _pack_task, _unpack_task)
wire.register(KIND_RESULT, Result, _RESULT, _pack_result, _unpack_result)
wire.register(KIND_ITEM, Item, _ITEM, _pack_item, _unpack_item)
