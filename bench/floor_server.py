"""The floor: the least a remote Python call can cost, served from another process.

Self-contained (stdlib, plus cloudpickle in ``call`` mode) so it can be copied to an SSH
test host and run there as the host's user.

``call`` mode: each request is ``u32 length | cloudpickle((fn, args, kwargs))``; the server
unpickles it, calls it and answers ``u32 length | cloudpickle(result)``. No ids, no
envelopes, no futures, no threads between the socket and the call: what Skyward does
beyond this is its overhead. Requests may be pipelined; answers come back in order.

``sink`` mode (bulk transfer): each request is ``u64 length | bytes``; the server receives
the bytes into a fresh buffer of that size (as a receiver that keeps the data must) and
answers with the ``u64`` count.

Prints ``FLOOR-READY <port>`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import pickle
import socket
import struct
import sys
import threading
from typing import Any

HEAD = struct.Struct("!I")
SIZE = struct.Struct("!Q")
CHUNK = 256 * 1024
READY = "FLOOR-READY"


class Reader:
    """Buffered reads of exact sizes from anything with ``recv_into``."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = bytearray(CHUNK)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def take(self, n: int) -> bytes:
        if self.end - self.start < n:
            self._fill(n)
        data = bytes(self.view[self.start : self.start + n])
        self.start += n
        return data

    def _fill(self, n: int) -> None:
        size = self.end - self.start
        if n > len(self.buf):
            grown = bytearray(n)
            grown[:size] = self.view[self.start : self.end]
            self.buf, self.view = grown, memoryview(grown)
        else:
            self.view[:size] = self.view[self.start : self.end]
        self.start, self.end = 0, size
        while self.end < n:
            got = self.stream.recv_into(self.view[self.end :], len(self.buf) - self.end)
            if got == 0:
                raise EOFError("connection closed")
            self.end += got

    def read_into(self, out: memoryview) -> None:
        """Fill ``out`` exactly: buffered bytes first, then straight from the stream."""
        have = min(len(out), self.end - self.start)
        out[:have] = self.view[self.start : self.start + have]
        self.start += have
        while have < len(out):
            got = self.stream.recv_into(out[have:], len(out) - have)
            if got == 0:
                raise EOFError("connection closed")
            have += got


def serve_calls(conn: socket.socket) -> None:
    import cloudpickle

    reader = Reader(conn)
    while True:
        (size,) = HEAD.unpack(reader.take(HEAD.size))
        fn, args, kwargs = pickle.loads(reader.take(size))
        out = cloudpickle.dumps(fn(*args, **kwargs), protocol=5)
        conn.sendall(HEAD.pack(len(out)) + out)


def serve_sink(conn: socket.socket) -> None:
    reader = Reader(conn)
    while True:
        (size,) = SIZE.unpack(reader.take(SIZE.size))
        buffer = bytearray(size)
        reader.read_into(memoryview(buffer))
        conn.sendall(SIZE.pack(len(buffer)))
        del buffer


def _connection(conn: socket.socket, mode: str) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        (serve_calls if mode == "call" else serve_sink)(conn)
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["call", "sink"])
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args(argv)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((options.bind, options.port))
    listener.listen(16)
    print(READY, listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_connection, args=(conn, options.mode), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
