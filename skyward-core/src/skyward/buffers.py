"""Memory for large buffers read from a socket, and their hand-off to a worker process.

A 256 MiB argument costs its receiver more in fresh memory than in copies: a
``bytearray(n)`` is zero-filled page by page, one page fault per 4 KiB (about 140 ms per
256 MiB on the benchmark machine, more than the copy out of the socket). So:

- :func:`allocate` gives buffers of 1 MiB and more as mappings that the reader populates
  a few MiB ahead of what it receives (:func:`populate`: the kernel maps those pages in
  one call, about 20% less CPU than faulting them in one by one, and the socket is
  drained all along instead of waiting for the whole buffer's pages first);
- in an agent with process workers (:func:`share_large_buffers`), those buffers are
  memory files (``memfd_create``) instead: the agent forwards a call to its worker as the
  frame's head plus the files' descriptors (``SCM_RIGHTS`` on the local socket pair, see
  :class:`FdSocket`), and the worker maps the same pages, privately: what a call writes
  into its argument is copied on write and stays its own (as is a child it forks), as
  when the argument was its own memory. The argument is no longer copied through the
  socket pair nor received into fresh memory a second time.

A memory file has no name anywhere (nothing in ``/dev/shm``, nothing to clean up): its
pages live while a descriptor or a mapping refers to them, and a process that dies drops
its references with everything else it held. If one cannot be made (out of descriptors,
say), the buffer is private memory and travels through the socket as before.
"""

from __future__ import annotations

import array
import collections
import contextlib
import mmap
import os
import socket
import weakref
from typing import Any

__all__ = [
    "LARGE",
    "MAX_FDS",
    "SHARED",
    "FdBytes",
    "FdSocket",
    "SharedBuffer",
    "allocate",
    "private",
    "share_large_buffers",
]

LARGE = 1024 * 1024
"""Buffers at least this large get memory of their own kind (below: a ``bytearray``)."""
SHARED = 1 << 63
"""Flag in a frame's buffer length: the buffer is the next descriptor the socket passed."""
MAX_FDS = 253
"""``SCM_MAX_FD``: the most descriptors one message can pass on Linux."""
_POPULATE_READ = 22  # MADV_POPULATE_READ (Linux 5.14); older kernels refuse it: EINVAL
_POPULATE_WRITE = 23  # MADV_POPULATE_WRITE (Linux 5.14)
AHEAD = 8 * 1024 * 1024
"""Bytes of a buffer populated at a time, ahead of the receive."""
_shared = False


def share_large_buffers(on: bool = True) -> None:
    """In this process, :func:`allocate` makes large buffers memory files (an agent with
    process workers); ``False`` turns it off (a worker forked from such an agent)."""
    global _shared
    _shared = on and hasattr(os, "memfd_create") and hasattr(socket, "SCM_RIGHTS")


def allocate(size: int) -> bytearray | mmap.mmap:
    """Writable memory for a buffer of ``size`` bytes about to be received."""
    if _shared and size >= LARGE:
        with contextlib.suppress(OSError):
            return SharedBuffer.create(size)
    return private(size)


def private(size: int) -> bytearray | mmap.mmap:
    """:func:`allocate` without memory files (for buffers that stay in this process)."""
    if size < LARGE or not hasattr(mmap, "MAP_ANONYMOUS"):
        return bytearray(size)
    try:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return bytearray(size)


def populate(buffer: Any, start: int, size: int) -> bool:
    """Map ``size`` bytes of ``buffer`` from ``start`` for writing, in one call; ``False``
    when this kernel (or this kind of buffer) cannot, and pages are faulted in as written."""
    if not isinstance(buffer, mmap.mmap):
        return False
    aligned = start - start % mmap.PAGESIZE
    try:
        buffer.madvise(_POPULATE_WRITE, aligned, size + start - aligned)
    except (OSError, ValueError):
        return False
    return True


class SharedBuffer(mmap.mmap):
    """A memory file mapped here; ``fd`` (open while the buffer lives) is what a worker
    process receives to map the same pages."""

    fd: int

    @classmethod
    def create(cls, size: int) -> SharedBuffer:
        fd = os.memfd_create("skyward-buffer", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            buffer = cls(fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        buffer.fd = fd
        weakref.finalize(buffer, os.close, fd)
        return buffer


def mapped(fd: int, size: int) -> mmap.mmap:
    """Map the memory file ``fd`` (received from the agent) copy-on-write, and close
    ``fd``. Its pages are mapped for reading in one call (populating a private mapping
    for writing would copy every page)."""
    try:
        buffer = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError, ValueError):
        buffer.madvise(_POPULATE_READ, 0, size)
    return buffer


class FdBytes(bytes):
    """A frame's head that passes descriptors along with its first byte."""

    fds: tuple[int, ...] = ()


class FdSocket:
    """A Unix socket as a :class:`skyward.provider.Stream` that also passes descriptors:
    :meth:`sendall` of :class:`FdBytes` sends its ``fds`` with it; :meth:`recv_into`
    keeps the descriptors that arrive, in order, for :meth:`take_shared`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fds: collections.deque[int] = collections.deque()
        self._ancillary = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)

    def fileno(self) -> int:
        return self._sock.fileno()

    def sendall(self, data: Any, /) -> None:
        fds = getattr(data, "fds", ())
        if not fds:
            self._sock.sendall(data)
            return
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sent = self._sock.sendmsg([data], rights)
        if sent < len(data):
            self._sock.sendall(memoryview(data)[sent:])

    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int:
        view = buffer[:nbytes] if nbytes else buffer
        size, ancillary, _flags, _address = self._sock.recvmsg_into([view], self._ancillary)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self._fds.extend(fds)
        return size

    def take_shared(self, size: int) -> mmap.mmap:
        """The buffer of ``size`` bytes that the next descriptor received holds."""
        if not self._fds:
            raise ValueError("a frame refers to shared memory the socket did not pass")
        return mapped(self._fds.popleft(), size)

    def close(self) -> None:
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft())
        self._sock.close()
