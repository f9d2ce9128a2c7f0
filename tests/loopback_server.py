"""An HTTP server on ``127.0.0.1:<free port>`` answering from a daemon thread: how every
fake cloud API (moto, the Pricing API, DigitalOcean, Verda) is served to the real SDKs."""

from __future__ import annotations

import socketserver
import threading

__all__ = ["Served"]


class Served:
    """``server`` answering from its own thread until :meth:`close`."""

    def __init__(self, server: socketserver.BaseServer, name: str) -> None:
        self.server = server
        self.port: int = server.socket.getsockname()[1]  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving, free the port, and wait (a while) for the thread to end."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
