"""Running one task: open its payload, call the function, pack the answer.

The same code runs in a thread of the agent (``executor="thread"``) and in a worker
process (``executor="process"``). A streamed task (``Task.window > 0``) whose function
returns a generator sends each item through ``send`` once its ``gate`` allows, and ends
with a :class:`Result` of ``None`` (or of the exception the generator raised).

Items that queue up share a :class:`~skyward.messages.Item` frame, and none waits for a
timer. In a worker process each item goes to the agent as it comes, and the agent's
thread for that worker relays to the client, in one frame, all the stream's items already
arrived (``streams.relay``). In the agent itself (``executor="thread"``) a generator's
fast items go out from a thread of their own (:class:`_Sender`), so the generator runs on
while a frame is being written and the items it yields meanwhile go together in the next;
a lone item (a slow generator's) is written before the generator resumes.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import threading
import time
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


SLOW_ITEM = 0.001
"""Seconds between two items past which the second is a lone item: the generator's thread
writes it itself, before the generator resumes."""


class _Sender:
    """Writes one stream's items: a lone one at once, those that come fast together.

    An item that comes :data:`SLOW_ITEM` or more after the one before (the first item, a
    slow generator's) is written by the generator's thread before the generator resumes,
    after any items still waiting: nothing can hold it back. Items that come faster are
    handed to a thread of this stream's own, which writes all that are waiting in one frame
    each time it gets to it, while the generator runs on: a fast generator's items share
    frames. That thread needs the GIL to write, so the last item of a fast run, when the
    generator then computes in Python without releasing the GIL, can wait up to one switch
    interval (``sys.getswitchinterval()``, 5 ms). The credit window (checked before
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
        """The thread is writing a frame."""
        self._closing = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._last = -math.inf
        """``time.monotonic()`` of the last :meth:`put`."""

    def put(self, seq: int, payload: messages.Payload) -> None:
        now = time.monotonic()
        lone, self._last = now - self._last >= SLOW_ITEM, now
        with self._cond:
            if lone:
                # Written here, after whatever the thread still has to write.
                while (self._waiting or self._busy) and self._error is None:
                    self._cond.wait()
            if self._error is not None:
                raise self._error
            if not lone:
                if not self._waiting:
                    self._first = seq
                self._waiting.append(payload)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, daemon=True, name=f"skyward-stream-{self._id}"
                    )
                    self._thread.start()
                elif not self._busy:
                    self._cond.notify_all()
                return
        self._send(messages.Item(self._id, seq, payload))

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
                self._cond.notify_all()  # a lone item may be waiting for its turn
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:
                    return  # closing, and everything is written
                batch, first = self._take()
                self._busy = True
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
