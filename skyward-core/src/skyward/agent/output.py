"""The agent's file descriptors 1 and 2, captured into pipes and streamed as log lines.

Everything written there, by Python or by any child process, becomes a ``Log`` frame. A
task's result must not overtake what the task printed (a caller that closes the pool as
soon as it has the result would lose the last lines), so :meth:`OutputCapture.drain`
waits until every byte already in the pipes has been turned into frames. Usually there is
nothing to wait for and it costs one ``poll`` of both pipes; otherwise a marker is written
into each pipe and the pump reports when it reaches it (pipes are first in, first out).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import select
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["OutputCapture", "line_buffered"]

_MARK = b"\x1eskyward-drain:"
_CHUNK = 65536
_DRAIN_TIMEOUT = 5.0

Emit = Callable[[str, str, float], None]
"""``emit(stream, line, timestamp)``."""


class _Pump:
    """One pipe's reader thread."""

    def __init__(self, read_fd: int, write_fd: int, stream: str, emit: Emit) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.stream = stream
        self._emit = emit
        self._pending = b""
        self._busy = False
        self._lock = threading.Condition()
        self._reached: set[int] = set()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name=f"skyward-{self.stream}").start()

    @property
    def busy(self) -> bool:
        """Bytes read from the pipe and not yet emitted."""
        return self._busy

    def mark(self, token: int) -> None:
        os.write(self.write_fd, _MARK + str(token).encode() + b"\n")

    def wait(self, token: int, deadline: float) -> None:
        with self._lock:
            while token not in self._reached:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._lock.wait(left)
            self._reached.discard(token)

    def flush_partial(self) -> None:
        with self._lock:
            partial, self._pending = self._pending, b""
        if partial:
            self._emit(self.stream, partial.decode("utf-8", "replace"), time.time())

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        while True:
            poller.poll()
            # Busy from before the read until the lines are emitted: ``idle`` never sees
            # an empty pipe while read bytes are still in flight.
            self._busy = True
            try:
                chunk = os.read(self.read_fd, _CHUNK)
                if not chunk:
                    return
                self._consume(chunk)
            finally:
                self._busy = False

    def _consume(self, chunk: bytes) -> None:
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        now = time.time()
        reached: list[int] = []
        for raw in lines:
            line, mark, token = raw.partition(_MARK)
            if mark:
                with contextlib.suppress(ValueError):
                    reached.append(int(token))
                if not line:
                    continue
            self._emit(self.stream, line.decode("utf-8", "replace"), now)
        if reached:
            with self._lock:
                self._reached.update(reached)
                self._lock.notify_all()


def line_buffered(fd: int) -> io.TextIOWrapper:
    """A text stream on ``fd`` that writes whole lines: with several processes on one pipe
    (worker processes, ``PYTHONUNBUFFERED``), a line is one ``write`` and stays whole."""
    raw = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115 - lives as long as the process
    return io.TextIOWrapper(raw, line_buffering=True)


class OutputCapture:
    """Route fds 1 and 2 into pipes whose lines go to ``emit``."""

    def __init__(self, emit: Emit, *, start: bool = True) -> None:
        self._tokens = itertools.count()
        self._pumps: list[_Pump] = []
        self.original_stdout = os.dup(1)
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            self._pumps.append(_Pump(read_end, fd, stream, emit))
        sys.stdout = line_buffered(1)
        sys.stderr = line_buffered(2)
        # One system call per drain tells whether either pipe holds bytes (a result is
        # sent after each call's drain: it is on every call's way back). A poll object
        # per thread: one object refuses two threads polling with it at once.
        self._pollers = threading.local()
        if start:
            self.start()

    def start(self) -> None:
        """Start reading the pipes (``start=False`` leaves the process without threads, so
        the agent can fork its first workers)."""
        for pump in self._pumps:
            pump.start()

    @property
    def private_fds(self) -> list[int]:
        """Descriptors a forked worker must not keep (the pipes' read ends, the agent's
        original stdout)."""
        return [self.original_stdout, *(p.read_fd for p in self._pumps)]

    def drain(self, *, final: bool = False) -> None:
        """Return once every byte written to fds 1 and 2 before the call has been emitted.

        ``final`` also emits a last line that lacks its newline (at exit).
        """
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        waiting = self._waiting()
        if waiting:
            token = next(self._tokens)
            deadline = time.monotonic() + _DRAIN_TIMEOUT
            for pump in waiting:
                pump.mark(token)
            for pump in waiting:
                pump.wait(token, deadline)
        if final:
            for pump in self._pumps:
                pump.flush_partial()

    def _waiting(self) -> list[_Pump]:
        """The pumps with bytes in their pipe or read but not yet emitted. A pump's busy
        flag is set before its read and cleared after its lines are emitted, so it is
        looked at after the pipe (bytes move from the pipe to the pump, never back)."""
        poller: select.poll | None = getattr(self._pollers, "poller", None)
        if poller is None:
            poller = self._pollers.poller = select.poll()
            for pump in self._pumps:
                poller.register(pump.read_fd, select.POLLIN)
        ready = {fd for fd, events in poller.poll(0) if events & select.POLLIN}
        return [p for p in self._pumps if p.read_fd in ready or p.busy]
