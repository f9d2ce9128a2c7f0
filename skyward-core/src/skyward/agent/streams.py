"""The agent's side of streamed calls (generator functions run with ``>> pool``).

Flow control is by credit: the client says how many items it has consumed
(:class:`~skyward.messages.Credit`, cumulative) and the node sends at most ``window``
beyond that, so a slow consumer holds back the generator instead of growing a queue on
either side. The items sent but not yet covered by a credit (at most ``window + 1``) are
kept here, as the frames they went in (one item or several): after a reconnect they are
sent again (the client drops the ones it already has, by sequence number), so a dropped
connection loses no item of an open stream.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from skyward import messages, wire
from skyward.agent.tasks import (
    BATCH_ITEMS,
    MAX_BUFFERS_PER_FRAME,
    MAX_BYTES_AHEAD,
    MAX_ITEMS_PER_FRAME,
)

__all__ = ["StreamGate", "Streams", "merged", "relay"]

Send = Callable[[object], None]


def relay(
    reader: wire.FrameReader, emit: Callable[[messages.Item], None], item: messages.Item
) -> object | None:
    """Pass ``item`` (read from a worker process) on with ``emit``, joined by the items of
    its stream already read behind it (in ``reader``'s buffer: a lone item is never held
    back for the next); the next frame read that is not one of them, else ``None``."""
    items, count, nbuffers = [item], len(item.values), _buffer_count(item)
    while BATCH_ITEMS and reader.buffered():
        try:
            frame: object = reader.read()
        except BaseException:
            emit(merged(items))  # those read so far are the client's (a timeout, a death)
            raise
        if not isinstance(frame, messages.Item) or frame.id != item.id:
            emit(merged(items))
            return frame
        if count + len(frame.values) > MAX_ITEMS_PER_FRAME or (
            nbuffers + _buffer_count(frame) > MAX_BUFFERS_PER_FRAME
        ):
            emit(merged(items))
            items, count, nbuffers = [], 0, 0
        items.append(frame)
        count, nbuffers = count + len(frame.values), nbuffers + _buffer_count(frame)
    emit(merged(items))
    return None


def _buffer_count(item: messages.Item) -> int:
    return sum(len(value.buffers) for value in item.values)


def merged(items: list[messages.Item]) -> messages.Item:
    """Consecutive frames of one stream as one frame."""
    if len(items) == 1:
        return items[0]
    first = items[0]
    more = [*first.more]
    for item in items[1:]:
        more.extend(item.values)
    return messages.Item(first.id, first.seq, first.value, tuple(more))


class StreamGate:
    """One streamed task: its credit, whether the consumer closed it, its unconsumed items."""

    def __init__(self, task_id: int, window: int, send: Send) -> None:
        self.id = task_id
        self.window = window
        self._send = send
        self._cond = threading.Condition()
        self._consumed = 0
        self._cancelled = False
        self._ended = False
        self._retained: dict[int, messages.Item] = {}
        self._sizes: dict[int, int] = {}
        """Bytes of each item sent and not yet consumed (this thread runs the generator)."""
        self._ahead = 0
        """Their sum."""
        self._forward: Send | None = None

    # -- the client's side (the agent's connection thread) ----------------------------

    def credit(self, consumed: int) -> None:
        with self._cond:
            if consumed <= self._consumed:
                return
            self._consumed = consumed
            # A frame goes once all its items are consumed.
            for seq in [s for s, item in self._retained.items() if item.end <= consumed]:
                del self._retained[seq]
            for seq in [s for s in self._sizes if s < consumed]:
                self._ahead -= self._sizes.pop(seq)
            self._cond.notify_all()
            forward = self._forward
        if forward is not None:
            forward(messages.Credit(self.id, consumed))

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
            forward = self._forward
        if forward is not None:
            forward(messages.Cancel(self.id))

    def end(self) -> None:
        """The task answered (or timed out): wake a generator still waiting for credit."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def replay(self) -> list[messages.Item]:
        with self._cond:
            return [self._retained[s] for s in sorted(self._retained)]

    # -- the generator's side ---------------------------------------------------------

    def wait(self, seq: int, nbytes: int) -> bool:
        """Block until item ``seq`` may be sent; False when the stream was closed."""
        with self._cond:
            while not self._stopped and (
                seq >= self._consumed + self.window or self._ahead >= MAX_BYTES_AHEAD
            ):
                self._cond.wait()
            self._ahead += nbytes - self._sizes.get(seq, 0)
            self._sizes[seq] = nbytes
            return not self._stopped

    @property
    def _stopped(self) -> bool:
        return self._cancelled or self._ended

    def emit(self, item: messages.Item) -> None:
        with self._cond:
            self._retained[item.seq] = item
        self._send(item)

    def attach(self, forward: Send) -> None:
        """A worker process runs the generator: pass credit and cancellation on to it."""

        def quiet(message: object) -> None:
            with contextlib.suppress(OSError):  # a replaced worker: nothing left to tell
                forward(message)

        with self._cond:
            self._forward = quiet
            if self._consumed:
                quiet(messages.Credit(self.id, self._consumed))
            if self._cancelled:
                quiet(messages.Cancel(self.id))

    def detach(self) -> None:
        with self._cond:
            self._forward = None


class Streams:
    """The node's open streams, by task id, kept until the client acknowledges the end."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._gates: dict[int, StreamGate] = {}

    def open(self, task: messages.Task) -> StreamGate:
        gate = StreamGate(task.id, task.window, self._send)
        with self._lock:
            self._gates[task.id] = gate
        return gate

    def get(self, task_id: int) -> StreamGate | None:
        with self._lock:
            return self._gates.get(task_id)

    def on_message(self, message: messages.Credit | messages.Cancel) -> None:
        gate = self.get(message.id)
        if gate is None:
            return  # ended and acknowledged already
        if isinstance(message, messages.Credit):
            gate.credit(message.consumed)
        else:
            gate.cancel()

    def end(self, task_id: int) -> None:
        gate = self.get(task_id)
        if gate is not None:
            gate.end()

    def forget(self, ids: tuple[int, ...]) -> None:
        with self._lock:
            for task_id in ids:
                self._gates.pop(task_id, None)

    def replay(self) -> list[messages.Item]:
        with self._lock:
            gates = list(self._gates.values())
        return [item for gate in gates for item in gate.replay()]
