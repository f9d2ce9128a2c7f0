"""Which call a worker process runs, told without asking it: a page both processes map.

A cancelled call is stopped by killing its worker process. The agent knows which call it
wrote first, not which one the worker runs at that instant: the worker may have answered
it and started the next one a moment before. Killing then would lose a call the client
never cancelled. So the worker writes the id of each call into a shared page before it
starts it, and the agent stops the worker (``SIGSTOP``: it cannot run on meanwhile), reads
the page, and kills only when the cancelled call is the one running; otherwise it lets the
worker go on (``SIGCONT``). Writing the page is a store to memory: no system call per call.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import struct
import time

__all__ = ["RunningCall"]

_FORMAT = struct.Struct("q")
_STOP_WAIT = 1.0
"""Seconds to wait for a stopped worker to be seen stopped (it is, within microseconds,
unless the machine is starved)."""


class RunningCall:
    """The id of the call a worker process runs (0: none yet)."""

    def __init__(self, fd: int | None = None) -> None:
        """A new page (anonymous, shared with children forked afterwards), or the one
        behind ``fd`` (a worker started as a new interpreter)."""
        self.fd: int | None = None
        if fd is None:
            self._page = mmap.mmap(-1, _FORMAT.size)
        else:
            self._page = mmap.mmap(fd, _FORMAT.size)

    @classmethod
    def shareable(cls) -> RunningCall | None:
        """A page with a descriptor (:attr:`fd`) to hand to a new interpreter; the agent
        closes the descriptor once the worker has it. ``None`` where there are no memory
        files (not Linux: a cancel then kills the worker as soon as it was handed the
        call)."""
        if not hasattr(os, "memfd_create"):
            return None
        fd = os.memfd_create("skyward-running-call", os.MFD_CLOEXEC)
        os.ftruncate(fd, _FORMAT.size)
        call = cls(fd)
        call.fd = fd
        return call

    def close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def set(self, task_id: int) -> None:
        """The worker: ``task_id`` starts now."""
        _FORMAT.pack_into(self._page, 0, task_id)

    def get(self) -> int:
        return int(_FORMAT.unpack_from(self._page, 0)[0])

    def stop_if_running(self, pid: int, task_id: int) -> bool:
        """The agent: leave worker ``pid`` stopped and return True when it runs
        ``task_id`` (the caller then kills it); else let it go on and return False."""
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        # Seen stopped, the page is final. Not seen so (the worker is gone, or the machine
        # is starved) the page is still the best answer: killing a call that ended a
        # moment ago is the old risk, leaving a cancelled call running a worse one.
        _stopped(pid)
        if self.get() == task_id:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        return False


def _stopped(pid: int) -> bool:
    """Wait until ``pid`` is stopped (``SIGSTOP`` arrives asynchronously)."""
    deadline = time.monotonic() + _STOP_WAIT
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                # The state follows the command's closing parenthesis.
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in (b"T", b"t"):
            return True
        if state in (b"Z", b"X") or time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
