"""Running one task: open its payload, call the function, pack the answer.

The same code runs in a thread of the agent (``executor="thread"``) and in a worker
process (``executor="process"``). A streamed task (``Task.window > 0``) whose function
returns a generator sends each item through ``send`` once its ``gate`` allows, and ends
with a :class:`Result` of ``None`` (or of the exception the generator raised).

Items that queue up share a frame, and none waits for a timer. In a worker process each
item goes at once to the agent, whose thread for that worker relays to the client all the
items already arrived in one :class:`~skyward.messages.Item` frame (``workers.py``). In
the agent itself (``executor="thread"``) the items go out from a thread of their own
(:class:`_Sender`), so the generator runs on while a frame is being written: the items it
yields meanwhile go together in the next frame, and an item yielded while nothing is
being written goes at once.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
from collections.abc import Callable, Generator
from typing import Any, Protocol

from skyward import messages
from skyward.errors import SerializationError

__all__ = ["Gate", "run_task"]


MAX_BYTES_AHEAD = 64 * 1024 * 1024
"""A stream's node also stops once this many bytes are sent and not yet consumed (the
window counts items; this keeps large items from multiplying it into gigabytes). One
item always goes, however large."""


BATCH_ITEMS = os.environ.get("SKYWARD_STREAM_BATCH", "1") != "0"
"""Items that queue up share a frame (see the module's notes). ``SKYWARD_STREAM_BATCH=0``
in the node's environment sends and relays one frame per item, as before (for
benchmarks)."""

MAX_ITEMS_PER_FRAME = 1024
"""At most this many items in one frame (the credit window bounds them first, as a rule)."""

MAX_BUFFERS_PER_FRAME = 60_000
"""Out-of-band buffers in one frame stay below the wire's limit (65,535)."""


class Gate(Protocol):
    def wait(self, seq: int, nbytes: int) -> bool:
        """Block until item ``seq`` (``nbytes`` long) may be sent; False when the consumer
        closed the stream."""
        ...


def payload_size(payload: messages.Payload) -> int:
    return len(payload.data) + sum(memoryview(b).nbytes for b in payload.buffers)


SendItem = Callable[[messages.Item], None]


def run_task(
    task: messages.Task,
    gate: Gate | None = None,
    send: SendItem | None = None,
    *,
    sender_thread: bool = False,
) -> messages.Result:
    """Run ``task``; every outcome, even an exception, becomes a :class:`Result`.

    ``sender_thread``: a stream's items go out from a thread of their own (see the
    module's notes); else the generator's thread sends each as it comes.
    """
    try:
        fn, args, kwargs = task.payload.open()
    except BaseException as error:
        return messages.Result(task.id, failure=messages.Failure.of(error))
    name = getattr(fn, "__qualname__", fn)
    try:
        value = fn(*args, **kwargs)
        if inspect.isgenerator(value):
            if task.window <= 0 or gate is None or send is None:
                value.close()
                raise TypeError(
                    f"{name!r} is a generator function: its items stream back only with "
                    "`f(...) >> pool` (gather, submit and `@ pool` need a function that "
                    "returns its result)"
                )
            return _stream(task, value, gate, send, name, sender_thread and BATCH_ITEMS)
    except BaseException as error:
        # Drop this frame from the traceback: the user's code starts one level down.
        return messages.Result(task.id, failure=messages.Failure.of(error, skip_frames=1))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        return messages.Result(task.id, value=messages.Payload.of(value))
    except SerializationError as error:
        message = f"the result of {name!r} cannot be sent back: {error}"
        return messages.Result(task.id, failure=messages.Failure.of(SerializationError(message)))


def _stream(
    task: messages.Task,
    generator: Generator[Any, Any, Any],
    gate: Gate,
    send: SendItem,
    name: object,
    sender_thread: bool,
) -> messages.Result:
    seq = 0
    sender = _Sender(task.id, send) if sender_thread else None
    failure: messages.Failure | None = None
    try:
        while True:
            try:
                item = next(generator)
            except StopIteration:
                break
            except BaseException as error:
                failure = messages.Failure.of(error, skip_frames=1)
                break
            try:
                payload = messages.Payload.of(item)
            except SerializationError as error:
                message = f"item {seq} of {name!r} cannot be sent back: {error}"
                failure = messages.Failure.of(SerializationError(message))
                break
            if not gate.wait(seq, payload_size(payload)):
                break  # the consumer closed the stream (or the call timed out)
            if sender is None:
                send(messages.Item(task.id, seq, payload))
            else:
                sender.put(seq, payload)
            seq += 1
    finally:
        try:
            if sender is not None:
                # Every item handed over goes before the end: a failure arrives after the
                # items yielded before it, and the Result never overtakes an item.
                sender.close()
        finally:
            generator.close()  # runs the generator's own cleanup (its finally blocks) now
    if failure is not None:
        return messages.Result(task.id, failure=failure)
    return messages.Result(task.id, value=messages.Payload.of(None))


class _Sender:
    """Sends one stream's items from a thread of its own, all that are waiting in one frame.

    The generator's thread hands each item over with :meth:`put`. When the sender is idle
    the generator waits until it has taken the item (a thread switch, so the item leaves
    at once even when the generator's next step holds the GIL); when it is busy writing,
    the item waits with any others for the next frame. The credit window (checked before
    :meth:`put`) bounds what can wait. A failed write ends the sender; the generator's
    thread gets the error at its next :meth:`put` or at :meth:`close`.
    """

    def __init__(self, task_id: int, send: SendItem) -> None:
        self._id = task_id
        self._send = send
        self._cond = threading.Condition(threading.Lock())
        self._waiting: list[messages.Payload] = []
        self._first = 0
        """Sequence number of ``_waiting[0]``."""
        self._busy = False
        self._closing = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def put(self, seq: int, payload: messages.Payload) -> None:
        with self._cond:
            if self._error is not None:
                raise self._error
            if not self._waiting:
                self._first = seq
            self._waiting.append(payload)
            if self._busy:
                return  # goes with the next frame
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name=f"skyward-stream-{self._id}"
                )
                self._thread.start()
            else:
                self._cond.notify_all()
            while self._waiting and self._error is None:
                self._cond.wait()

    def close(self) -> None:
        """Return once every item handed over is written (or the writing failed)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:
                    return  # closing, and everything is written
                batch, first = self._take()
                self._busy = True
                self._cond.notify_all()  # the generator may go on
            try:
                self._send(messages.Item(self._id, first, batch[0], tuple(batch[1:])))
            except BaseException as error:
                with self._cond:
                    self._error = error
                    self._waiting = []
                    self._busy = False
                    self._cond.notify_all()
                return

    def _take(self) -> tuple[list[messages.Payload], int]:
        """The waiting items that fit in one frame (the rest stay for the next)."""
        first, count, nbuffers = self._first, 0, 0
        for payload in self._waiting:
            nbuffers += len(payload.buffers)
            if count and (count >= MAX_ITEMS_PER_FRAME or nbuffers > MAX_BUFFERS_PER_FRAME):
                break
            count += 1
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        self._first += count
        return batch, first
