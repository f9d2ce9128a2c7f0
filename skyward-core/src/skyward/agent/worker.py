"""A worker process: ``python -m skyward.agent.worker <fd>``, started by the agent.

It reads :class:`~skyward.messages.Task` frames from the socket it inherited as ``fd``,
runs them one at a time, and answers each with a :class:`~skyward.messages.Result`. It
shares the agent's stdout and stderr (so its output streams like the agent's own) and
dies with the agent.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import socket
import sys
import time
from concurrent.futures import CancelledError

from skyward import buffers, cluster, messages, refs, wire
from skyward.agent.output import line_buffered
from skyward.agent.running import RunningCall
from skyward.agent.tasks import MAX_BYTES_AHEAD, run_task

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    running = RunningCall(int(args[1])) if len(args) > 1 else None
    serve(socket.socket(fileno=int(args[0])), running)


def serve(sock: socket.socket, running: RunningCall | None = None) -> None:
    """The worker's life on ``sock``: in a process of its own (``main``) or in a child the
    agent forked before it started any thread (its first workers, see ``workers.py``).
    ``running``: where it writes the id of each call it starts (the agent reads it before
    killing the worker to stop a cancelled call)."""
    _die_with_parent()
    sys.stdout, sys.stderr = line_buffered(1), line_buffered(2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's business
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked child had the agent's handler
    # A worker forked from the agent inherits its setting: its own buffers stay private.
    buffers.share_large_buffers(False)
    # Large arguments arrive as descriptors of the agent's memory files (SCM_RIGHTS).
    reader, writer = wire.FrameReader(buffers.FdSocket(sock)), wire.FrameWriter(sock)
    init = reader.read()
    if not isinstance(init, messages.WorkerInit):
        raise SystemExit(f"skyward worker: expected WorkerInit, got {type(init).__name__}")
    cluster.set_node_info(init.info)
    cluster.set_worker(init.info.worker)
    writer.send(messages.Heartbeat())  # ready
    ahead: collections.deque[object] = collections.deque()
    """Frames read early, looking for cancellations of calls queued behind the current."""
    skip: set[int] = set()
    while True:
        # A frame that arrives with the bytes already buffered here was received a while
        # ago (before the last call ran): what came since is looked for on the socket.
        fresh = not ahead and not reader.buffered()
        try:
            task = ahead.popleft() if ahead else reader.read()
        except EOFError:
            return  # the agent closed our socket: we are done
        if isinstance(task, messages.Release):
            refs.forget(task.ids)
            continue
        if isinstance(task, messages.Heartbeat):
            writer.send(task)  # an echo: wakes the agent's thread for this worker
            continue
        if isinstance(task, messages.Cancel):
            skip.add(task.id)  # a call queued behind the one that just ended
            continue
        if not isinstance(task, messages.Task):
            continue  # credit for a stream that has ended: moot
        if running is not None:
            running.set(task.id)
        with contextlib.suppress(EOFError):
            # A cancellation of this call may be waiting behind it. A call just received
            # came with everything sent before it: only the buffer is looked at (a
            # cancellation sent after that receive crossed the call either way; the agent
            # kills a worker that runs a call it asked it to skip).
            while reader.buffered() if fresh else reader.ready():
                frame = reader.read()
                if isinstance(frame, messages.Cancel):
                    skip.add(frame.id)
                else:
                    ahead.append(frame)
        if task.id in skip:
            skip.discard(task.id)
            writer.send(cancelled(task.id))
            continue
        if task.window:
            # Each item goes as it comes (the agent's relay joins those that queue up): a
            # sender thread here would hold a fast run's last item while the generator
            # computes with the GIL (see tasks._Sender), for little more speed.
            writer.send(run_task(task, _SocketGate(task, reader), writer.send))
        else:
            writer.send(run_task(task))


def cancelled(task_id: int) -> messages.Result:
    """The answer to a call cancelled before it started here."""
    error = CancelledError("the client cancelled this call")
    return messages.Result(task_id, failure=messages.Failure.of(error))


_LOOK_EVERY = 0.001
"""Seconds between looks for a stream's credit or cancellation while it has credit."""


class _SocketGate:
    """A streamed task's credit, as the agent forwards it over the worker's socket."""

    def __init__(self, task: messages.Task, reader: wire.FrameReader) -> None:
        self._id = task.id
        self._window = task.window
        self._reader = reader
        self._consumed = 0
        self._cancelled = False
        self._sizes: dict[int, int] = {}
        self._ahead = 0  # the sum of _sizes: bytes sent and not yet consumed
        self._next_look = 0.0

    def _held_back(self, seq: int) -> bool:
        if seq >= self._consumed + self._window:
            return True
        return self._ahead >= MAX_BYTES_AHEAD

    def wait(self, seq: int, nbytes: int) -> bool:
        # Take what already arrived (a cancellation must not wait for the credit to run
        # out), then block only while out of credit. The socket is looked at once a
        # millisecond at most: a look costs a system call, many times an item's own cost.
        now = time.monotonic()
        if now >= self._next_look or self._reader.buffered():
            self._next_look = now + _LOOK_EVERY
            while not self._cancelled and self._reader.ready():
                self._apply(self._reader.read())
        while not self._cancelled and self._held_back(seq):
            self._apply(self._reader.read())
        self._ahead += nbytes - self._sizes.get(seq, 0)
        self._sizes[seq] = nbytes
        return not self._cancelled

    def _apply(self, message: object) -> None:
        if isinstance(message, messages.Credit) and message.id == self._id:
            self._consumed = max(self._consumed, message.consumed)
            for seq in [s for s in self._sizes if s < self._consumed]:
                self._ahead -= self._sizes.pop(seq)
        elif isinstance(message, messages.Cancel) and message.id == self._id:
            self._cancelled = True
        elif isinstance(message, messages.Release):
            refs.forget(message.ids)


if __name__ == "__main__":
    main()
