"""Running one task: open its payload, call the function, pack the answer.

The same code runs in a thread of the agent (``executor="thread"``) and in a worker
process (``executor="process"``).
"""

from __future__ import annotations

import sys

from skyward import messages
from skyward.errors import SerializationError

__all__ = ["run_task"]


def run_task(task: messages.Task) -> messages.Result:
    """Run ``task``; every outcome, even an exception, becomes a :class:`Result`."""
    try:
        fn, args, kwargs = task.payload.open()
    except BaseException as error:
        return messages.Result(task.id, failure=messages.Failure.of(error))
    try:
        value = fn(*args, **kwargs)
    except BaseException as error:
        # Drop this frame from the traceback: the user's code starts one level down.
        return messages.Result(task.id, failure=messages.Failure.of(error, skip_frames=1))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        return messages.Result(task.id, value=messages.Payload.of(value))
    except SerializationError as error:
        name = getattr(fn, "__qualname__", fn)
        message = f"the result of {name!r} cannot be sent back: {error}"
        return messages.Result(task.id, failure=messages.Failure.of(SerializationError(message)))
