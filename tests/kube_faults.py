"""A fault-injecting TLS proxy in front of the test apiserver (127.0.0.1 only).

Clients given its address (``server`` in a kubeconfig) reach the real apiserver through
it: it terminates TLS with the apiserver's own certificate (SAN 127.0.0.1, signed by the
test CA, so clients verify it as they would the apiserver), reads each request's head and
either answers an armed fault itself (429 ``TooManyRequests`` with ``Retry-After``, or a
5xx ``Status``, as the apiserver's priority-and-fairness filter or a load balancer in
front of it would) or relays the connection to the apiserver byte for byte (websocket
upgrades for exec and port-forward included). Relayed plain requests are rewritten to
``Connection: close`` so every request on a kept-alive client connection passes here.

An answered fault never reaches the apiserver: nothing is made by it.
"""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Armed", "FaultProxy"]

_REASONS = {
    429: ("Too Many Requests", "TooManyRequests", "too many requests, please try again later"),
    500: ("Internal Server Error", "InternalError", "an error on the server has prevented the "
          "request from succeeding"),
    503: ("Service Unavailable", "ServiceUnavailable", "the server is currently unable to "
          "handle the request"),
}  # fmt: skip


@dataclass
class Armed:
    """Answer the next ``times`` requests matching ``method`` and ``path`` with ``status``."""

    method: str
    path: str
    """A regular expression matched against the request path (without the query)."""
    status: int
    times: int = 1
    answered: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.answered < self.times
            and method == self.method
            and re.fullmatch(self.path, path) is not None
        )


@dataclass
class FaultProxy:
    upstream_port: int
    cert: tuple[Path, Path]
    ca: Path
    port: int = 0
    armed: list[Armed] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    """Every request: (method, path, status answered here, or 0 when relayed)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listener: socket.socket | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_context.load_cert_chain(*self.cert)
        self._client_context = ssl.create_default_context(cafile=str(self.ca))
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        threading.Thread(target=self._accept, name="kube-fault-proxy", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()

    def arm(self, method: str, path: str, status: int, times: int = 1) -> Armed:
        armed = Armed(method, path, status, times)
        with self._lock:
            self.armed.append(armed)
        return armed

    def disarm(self) -> None:
        with self._lock:
            self.armed.clear()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            client = self._server_context.wrap_socket(raw, server_side=True)
            with client:
                self._handle(client)

    def _handle(self, client: ssl.SSLSocket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        path = target.split("?", 1)[0]
        headers = [line.split(":", 1) for line in header_lines if ":" in line]
        names = {k.strip().lower(): v.strip() for k, v in headers}
        with self._lock:
            armed = next((a for a in self.armed if a.matches(method, path)), None)
            if armed is not None:
                armed.answered += 1
            self.seen.append((method, path, armed.status if armed else 0))
        if armed is not None:
            length = int(names.get("content-length", "0"))
            while len(rest) < length:
                chunk = client.recv(65536)
                if not chunk:
                    break
                rest += chunk
            self._answer(client, armed.status)
            return
        upgrade = "upgrade" in names.get("connection", "").lower()
        if not upgrade:
            header_lines = [
                line for line in header_lines if not line.lower().startswith("connection:")
            ] + ["Connection: close"]
        rebuilt = "\r\n".join([request_line, *header_lines]).encode("latin-1") + b"\r\n\r\n"
        upstream_raw = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
        upstream = self._client_context.wrap_socket(upstream_raw, server_hostname="127.0.0.1")
        with upstream:
            upstream.sendall(rebuilt + rest)
            _relay(client, upstream)

    @staticmethod
    def _answer(client: ssl.SSLSocket, status: int) -> None:
        title, reason, message = _REASONS[status]
        body = json.dumps({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": status,
        }).encode()  # fmt: skip
        extra = "Retry-After: 1\r\n" if status == 429 else ""
        client.sendall(
            f"HTTP/1.1 {status} {title}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )


def _relay(a: ssl.SSLSocket, b: ssl.SSLSocket) -> None:
    """Bytes both ways until either side closes; one thread, so neither TLS socket is
    used by two threads at once. Blocking sends: fine for the small traffic of the tests
    that use this proxy (bulk transfers go straight to the apiserver)."""
    a.settimeout(None)
    b.settimeout(None)
    peers = {a: b, b: a}
    with selectors.DefaultSelector() as selector:
        selector.register(a, selectors.EVENT_READ)
        selector.register(b, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                source = key.fileobj
                assert isinstance(source, ssl.SSLSocket)
                while True:
                    try:
                        chunk = source.recv(262144)
                    except (OSError, ValueError):
                        chunk = b""
                    if not chunk:
                        return
                    try:
                        peers[source].sendall(chunk)
                    except (OSError, ValueError):
                        return
                    if not source.pending():
                        break
