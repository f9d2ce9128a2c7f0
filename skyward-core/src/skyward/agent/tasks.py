"""Running one task: open its payload, call the function, pack the answer.

The same code runs in a thread of the agent (``executor="thread"``) and in a worker
process (``executor="process"``). A streamed task (``Task.window > 0``) whose function
returns a generator sends each item through ``send`` once its ``gate`` allows, and ends
with a :class:`Result` of ``None`` (or of the exception the generator raised).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Generator
from typing import Any, Protocol

from skyward import messages
from skyward.errors import SerializationError

__all__ = ["Gate", "run_task"]


MAX_BYTES_AHEAD = 64 * 1024 * 1024
"""A stream's node also stops once this many bytes are sent and not yet consumed (the
window counts items; this keeps large items from multiplying it into gigabytes). One
item always goes, however large."""


class Gate(Protocol):
    def wait(self, seq: int, nbytes: int) -> bool:
        """Block until item ``seq`` (``nbytes`` long) may be sent; False when the consumer
        closed the stream."""
        ...


def payload_size(payload: messages.Payload) -> int:
    return len(payload.data) + sum(memoryview(b).nbytes for b in payload.buffers)


SendItem = Callable[[messages.Item], None]


def run_task(
    task: messages.Task, gate: Gate | None = None, send: SendItem | None = None
) -> messages.Result:
    """Run ``task``; every outcome, even an exception, becomes a :class:`Result`."""
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
            return _stream(task, value, gate, send, name)
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
) -> messages.Result:
    seq = 0
    try:
        while True:
            try:
                item = next(generator)
            except StopIteration:
                break
            except BaseException as error:
                return messages.Result(task.id, failure=messages.Failure.of(error, skip_frames=1))
            try:
                payload = messages.Payload.of(item)
            except SerializationError as error:
                message = f"item {seq} of {name!r} cannot be sent back: {error}"
                failure = messages.Failure.of(SerializationError(message))
                return messages.Result(task.id, failure=failure)
            if not gate.wait(seq, payload_size(payload)):
                break  # the consumer closed the stream (or the call timed out)
            send(messages.Item(task.id, seq, payload))
            seq += 1
    finally:
        generator.close()  # runs the generator's own cleanup (its finally blocks) now
    return messages.Result(task.id, value=messages.Payload.of(None))
