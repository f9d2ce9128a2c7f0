"""Ports held for a server that binds them later (a framework's rendezvous, say).

Picking a free port by binding to port 0 and closing the socket leaves a window: until the
real server binds the number, the kernel may hand it to anyone (another process's
``bind(port 0)``, or an outgoing connection's source port), and the server then fails
("address already in use"; JAX: "Failed to start RPC server"). A reservation closes the
window by keeping a socket bound to each port, not listening, for as long as it is held.

On Linux a bound socket with ``SO_REUSEADDR`` set that is not listening lets another
``SO_REUSEADDR`` socket bind and listen on the same port, and every server we hand these
ports to sets it (gRPC under JAX and TensorFlow, torch's TCPStore, Python's
``socket.create_server``). Meanwhile the kernel never picks a held port for ``bind(port 0)``
or ``connect()``, and a plain ``bind`` to it is refused. Each socket is bound *without*
``SO_REUSEADDR`` first (so a port someone else holds the same way is not shared) and gets it
only afterwards. Elsewhere (macOS and Windows give ``SO_REUSEADDR`` other meanings) the
ports are only probed and released at once, as before.
"""

from __future__ import annotations

import socket
import sys
from types import TracebackType

__all__ = ["PortReservation", "reserve_ports"]

HOLDS = sys.platform.startswith("linux")
"""Whether a reservation keeps its sockets bound (Linux) or only probes the ports."""


class PortReservation:
    """``count`` consecutive ports, held until :meth:`release` (or the process ends)."""

    def __init__(self, base: int, count: int, sockets: list[socket.socket]) -> None:
        self.base = base
        self.ports = tuple(range(base, base + count))
        self._sockets = sockets
        # The bound sockets, one per port; none where HOLDS is false (only probed).

    def release(self) -> None:
        """Let the ports go (the servers that bound them keep theirs)."""
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()

    @property
    def held(self) -> bool:
        return bool(self._sockets)

    def __enter__(self) -> PortReservation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<PortReservation {self.ports[0]}..{self.ports[-1]} {state}>"


def _bind_exclusively(port: int) -> socket.socket | None:
    # The wildcard address: a port bound on any IPv4 address (or dual-stack IPv6) is taken.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("", port))
    except OSError:
        sock.close()
        return None
    return sock


def reserve_ports(count: int = 1, attempts: int = 50) -> PortReservation:
    """``count`` consecutive free ports, held (see the module's note) until released.

    :raises OSError: no ``count`` consecutive free ports were found in ``attempts`` tries.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    for _ in range(attempts):
        first = _bind_exclusively(0)
        if first is None:
            continue
        base: int = first.getsockname()[1]
        held = [first]
        if base + count <= 65536:
            for port in range(base + 1, base + count):
                sock = _bind_exclusively(port)
                if sock is None:
                    break
                held.append(sock)
        if len(held) == count:
            if not HOLDS:
                for sock in held:
                    sock.close()
                return PortReservation(base, count, [])
            for sock in held:
                # After the bind: this socket did not share the port, but the server that
                # comes for it may (both sockets must say so, and this one never listens).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            return PortReservation(base, count, held)
        for sock in held:
            sock.close()
    raise OSError(f"found no {count} consecutive free ports in {attempts} tries")
