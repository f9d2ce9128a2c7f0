"""Many small calls in one task: how ``gather`` keeps up with auto-batching peers.

A batch of calls (``gather``, ``run_batch``) larger than the pool's window goes out in
chunks: one :class:`~skyward.messages.Task` whose function is :func:`run_chunk` and whose
argument is the list of its calls, pickled together (see :mod:`skyward.call_batch`): a
call whose arguments are plain scalars as ``(function, args, kwargs)``, its function
written once for the whole chunk; any other as the pickle it would have travelled alone in
(so one argument the node cannot unpickle fails only its call). The node runs them in order and
answers with one :class:`~skyward.messages.Result` holding each call's outcome: a scalar
result as it is, any other pickled on its own (so one result that cannot be pickled fails
only its call). The client settles each call from it, retries a failed call on its own,
and cancels the chunk only when every call in it was cancelled.

How many calls go in a chunk is learned, as joblib's auto-batching does: the node measures
how long its chunk ran, and the next chunk of that function is sized to take about
:data:`TARGET_SECONDS`, but never more than a share of what is left, so the workers finish
together. A function not seen before starts with chunks of one call.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from skyward import messages
from skyward.errors import SerializationError

__all__ = ["ChunkSizer", "all_plain", "outcome", "run_chunk", "unpack"]

ENABLED = True
"""Send large batches in chunks (False: a task per call; kept for benchmarks that compare
the two)."""
TARGET_SECONDS = 0.01
"""What a chunk should take on its node: long enough that a round trip is a small share
of it, short enough that results of ``gather(..., ordered=False)`` arrive steadily."""
MAX_CALLS = 1024
"""The most calls in one chunk."""


def run_chunk(calls: list[Any]) -> tuple[float, list[Any]]:
    """On the node: run each call in order; ``(seconds, outcomes)``, an outcome being a
    scalar result as it is, any other result as a :class:`~skyward.messages.Payload`, or
    the call's :class:`~skyward.messages.Failure`. A call is ``(fn, args, kwargs)`` or a
    ``Payload`` of it."""
    start = time.perf_counter()
    outcomes: list[Any] = []
    for call in calls:
        if type(call) is tuple:
            fn, args, kwargs = call
        else:
            try:
                fn, args, kwargs = call.open()
            except Exception as error:
                outcomes.append(messages.Failure.of(error))
                continue
        try:
            value = fn(*args, **kwargs)
        except BaseException as error:  # as a task of its own would report it
            # Drop this frame from the traceback: the user's code starts one level down.
            outcomes.append(messages.Failure.of(error, skip_frames=1))
            continue
        if messages.is_scalar(value):
            outcomes.append(value)  # pickled with the others: nothing to open on its own
            continue
        try:
            outcomes.append(messages.Payload.of(value))
        except SerializationError as error:
            name = getattr(fn, "__qualname__", fn)
            message = f"the result of {name!r} cannot be sent back: {error}"
            outcomes.append(messages.Failure.of(SerializationError(message)))
    return time.perf_counter() - start, outcomes


def outcome(answer: Any) -> tuple[Any, messages.Failure | None]:
    """A call's ``(value, failure)`` from its entry in :func:`run_chunk`'s outcomes;
    raises what opening a pickled result raises."""
    kind = type(answer)
    if kind is messages.Failure:
        return None, answer
    if kind is messages.Payload:
        return answer.open(), None
    return answer, None


_BOXED = frozenset({messages.Failure, messages.Payload})


def all_plain(outcomes: list[Any]) -> bool:
    """Whether every outcome of a chunk is a plain (scalar) result."""
    return _BOXED.isdisjoint(map(type, outcomes))


def unpack(value: Any, count: int) -> tuple[float, list[Any]]:
    """``run_chunk``'s answer, checked: ``(seconds, outcomes)``."""
    if not (isinstance(value, tuple) and len(value) == 2 and len(value[1]) == count):
        raise SerializationError(f"a chunk of {count} calls came back as {type(value).__name__}")
    seconds, outcomes = value
    return float(seconds), list(outcomes)


class ChunkSizer:
    """Per function, the seconds one call takes on a node (as chunks measured it)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def size(self, key: str, remaining: int, workers: int) -> int:
        """Calls for the next chunk: about :data:`TARGET_SECONDS` of work, at most a
        quarter of each worker's share of ``remaining``."""
        with self._lock:
            seconds = self._seconds.get(key)
        if seconds is None:
            return 1
        share = math.ceil(remaining / (4 * max(1, workers)))
        wanted = TARGET_SECONDS / max(seconds, 1e-7)
        return max(1, min(MAX_CALLS, share, round(wanted)))

    def observe(self, key: str, calls: int, seconds: float) -> None:
        each = seconds / max(1, calls)
        with self._lock:
            known = self._seconds.get(key)
            self._seconds[key] = each if known is None else (known + each) / 2
