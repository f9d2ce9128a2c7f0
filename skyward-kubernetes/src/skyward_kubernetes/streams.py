"""``pods/exec`` and ``pods/portforward``: the only ways the client reaches a pod.

Both are websockets to the apiserver (which relays them to the kubelet), with the
Kubernetes channel sub-protocols: each binary message starts with a channel byte.

- exec (``v5.channel.k8s.io``, falling back to ``v4.channel.k8s.io``): 0 stdin, 1 stdout,
  2 stderr, 3 the exit status (a ``Status`` JSON), 255 "close this channel" (v5 only: the
  one way to close stdin). Without v5, stdin is never closed, so callers that need EOF
  prefix their command with ``head -c <length> |``.
- port-forward (``v4.channel.k8s.io``): for one port, channel 0 carries data and channel 1
  errors (a message there means the kubelet could not dial the port); each channel starts
  with the port number (2 bytes, little-endian).

The port-forward pump is ONE thread per stream over a non-blocking socket: it reads
and writes the websocket as the selector says it can, so it never blocks sending while
data waits to be read (the deadlock the ``kubernetes`` client's ``portforward()`` and a
``websockets.sync`` connection hit on bidirectional bulk traffic), and an ssl socket is
never read and written by two threads at once. The caller gets the other end of a
socketpair: a real socket.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import ssl
import struct
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from skyward_kubernetes.api import KubeClient

__all__ = ["EXEC_PROTOCOLS", "ExecResult", "exec_command", "open_port_forward"]

EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
PORT_FORWARD_PROTOCOLS = ("v4.channel.k8s.io",)
STDIN_CHUNK = 1 << 20
PUMP_CHUNK = 1 << 18
HIGH_WATER = 8 << 20
"""Bytes buffered in one direction before the pump stops reading that side."""
REFUSAL_WINDOW = 0.5
"""Seconds ``open_port_forward`` waits for the kubelet's verdict on dialling the port."""


def connect(client: KubeClient, path: str, protocols: Sequence[str], timeout: float = 30.0) -> Any:
    """A websocket-client connection to the apiserver, authenticated as the kubeconfig
    says at this moment (exec-plugin tokens refreshed)."""
    import websocket

    url = (
        "wss" + client.host[len("https") :]
        if client.host.startswith("https")
        else "ws" + client.host[len("http") :]
    )
    headers = [f"{k}: {v}" for k, v in client.auth_headers().items()]
    options: dict[str, Any] = {
        "header": headers,
        "subprotocols": list(protocols),
        "timeout": timeout,
        "sslopt": {"context": client.ssl_context()},
        "enable_multithread": False,
        "skip_utf8_validation": True,
    }
    proxy = client.configuration.proxy
    if proxy:
        parsed = urllib.parse.urlsplit(proxy)
        options.update(
            http_proxy_host=parsed.hostname, http_proxy_port=parsed.port, proxy_type="http"
        )
    return websocket.create_connection(url + path, **options)


class ExecResult:
    def __init__(self, code: int, output: bytes, protocol: str) -> None:
        self.code = code
        self.output = output
        self.protocol = protocol


def _exit_code(status: dict[str, Any]) -> int:
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", 1))
    return 1


def exec_command(
    client: KubeClient,
    pod: str,
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    on_output: Callable[[bytes], None] | None = None,
    timeout: float | None = None,
    protocols: Sequence[str] = EXEC_PROTOCOLS,
    until: Callable[[bytes], bool] | None = None,
) -> ExecResult:
    """Run ``argv`` in the pod's container; stdout and stderr merged in ``output``.

    ``stdin`` is sent whole, then closed (v5; with v4 the command must not wait for EOF).
    ``until`` ends the call early (the process keeps running) once the output so far
    satisfies it; the result's code is then -1.
    """
    query = [("command", a) for a in argv] + [
        ("container", "node"), ("stdout", "true"), ("stderr", "true"),
        ("stdin", "true" if stdin is not None else "false"),
    ]  # fmt: skip
    path = f"{client.ns_path('pods', pod)}/exec?{urllib.parse.urlencode(query)}"
    ws = connect(client, path, protocols, timeout=timeout or 60.0)
    protocol = ws.getsubprotocol() or ""
    output = bytearray()
    try:
        if stdin is not None:
            view = memoryview(stdin)
            for start in range(0, len(view), STDIN_CHUNK):
                ws.send_binary(b"\x00" + view[start : start + STDIN_CHUNK].tobytes())
            if protocol.startswith("v5"):
                ws.send_binary(b"\xff\x00")
        status: dict[str, Any] = {}
        while True:
            try:
                data = ws.recv()
            except Exception:
                break
            if not data:
                break
            if isinstance(data, str):
                data = data.encode()
            channel = data[0]
            if channel in (1, 2):
                output.extend(data[1:])
                if on_output is not None:
                    on_output(data[1:])
                if until is not None and until(bytes(output)):
                    return ExecResult(-1, bytes(output), protocol)
            elif channel == 3:
                status = json.loads(data[1:] or b"{}")
        return ExecResult(_exit_code(status) if status else 1, bytes(output), protocol)
    finally:
        with contextlib.suppress(Exception):
            ws.close()


# -- port-forward ---------------------------------------------------------------------


def _client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    from websocket import ABNF

    frame: bytes = ABNF.create_frame(payload, opcode).format()
    return frame


def _parse_frames(buffer: bytearray) -> list[tuple[bool, int, bytes]]:
    """Complete server frames (fin, opcode, payload) at the start of ``buffer``, removed
    from it."""
    frames = []
    while len(buffer) >= 2:
        b0, b1 = buffer[0], buffer[1]
        length = b1 & 0x7F
        offset = 2
        if length == 126:
            if len(buffer) < 4:
                break
            length = struct.unpack_from("!H", buffer, 2)[0]
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                break
            length = struct.unpack_from("!Q", buffer, 2)[0]
            offset = 10
        mask = b""
        if b1 & 0x80:
            mask = bytes(buffer[offset : offset + 4])
            offset += 4
        if len(buffer) < offset + length:
            break
        payload = bytes(buffer[offset : offset + length])
        if mask:
            from websocket import ABNF

            payload = ABNF.mask(mask, payload)
        del buffer[: offset + length]
        frames.append((bool(b0 & 0x80), b0 & 0x0F, payload))
    return frames


class PortForwardPump:
    """One port-forward websocket relayed to a local socketpair by one thread."""

    def __init__(self, ws: Any, port: int) -> None:
        self.port = port
        self.ws = ws
        self.sock: ssl.SSLSocket | socket.socket = ws.sock
        self.local, self.user = socket.socketpair()
        self.error = ""
        self._inbound = bytearray()  # raw websocket bytes not yet parsed
        self._to_local = bytearray()
        self._to_ws = bytearray()
        self._prelude = {0: 2, 1: 2}  # bytes of port number still to skip per channel
        self._partial: list[bytes] = []
        self._first = threading.Event()  # the kubelet's verdict: data, an error, or close
        self._closing = False
        self.received = False
        """Whether any byte came from the pod."""
        self.thread = threading.Thread(target=self._run, name=f"portforward-{port}", daemon=True)

    def start(self) -> None:
        self.sock.setblocking(False)
        self.local.setblocking(False)
        self.thread.start()

    def wait_verdict(self, timeout: float) -> None:
        self._first.wait(timeout)

    @property
    def closed_at_once(self) -> bool:
        """The stream ended before the pod sent anything: the kubelet would not forward
        (the pod is not running, or streams are refused)."""
        return self._closing and not self.received and not self.error

    def _payload(self, payload: bytes) -> None:
        if not payload:
            return
        channel, data = payload[0], payload[1:]
        skip = self._prelude.get(channel, 0)
        if skip:
            self._prelude[channel] = max(0, skip - len(data))
            data = data[skip:]
        if not data:
            return
        if channel == 0:
            self._to_local.extend(data)
            self.received = True
            self._first.set()
        elif channel == 1:
            self.error += data.decode(errors="replace")
            self._first.set()
            self._closing = True

    def _on_frames(self) -> None:
        for fin, opcode, payload in _parse_frames(self._inbound):
            if opcode in (0x0, 0x1, 0x2):  # a message, maybe in fragments
                self._partial.append(payload)
                if fin:
                    message, self._partial = b"".join(self._partial), []
                    self._payload(message)
            elif opcode == 0x8:  # close
                self._closing = True
                self._first.set()
            elif opcode == 0x9:  # ping
                self._to_ws.extend(_client_frame(payload, 0xA))

    def _read_ws(self) -> bool:
        while True:
            try:
                data = self.sock.recv(PUMP_CHUNK)
            except (ssl.SSLWantReadError, BlockingIOError):
                return True
            except ssl.SSLWantWriteError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self._inbound.extend(data)
            self._on_frames()
            pending = getattr(self.sock, "pending", None)
            if not (pending and pending()):
                return True

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            while True:
                ws_events = (selectors.EVENT_READ if len(self._to_local) < HIGH_WATER else 0) | (
                    selectors.EVENT_WRITE if self._to_ws else 0
                )
                local_events = (
                    selectors.EVENT_READ
                    if len(self._to_ws) < HIGH_WATER and not self._closing
                    else 0
                ) | (selectors.EVENT_WRITE if self._to_local else 0)
                if ws_events:
                    selector.register(self.sock, ws_events)
                if local_events:
                    selector.register(self.local, local_events)
                try:
                    ready = selector.select(timeout=1.0)
                finally:
                    for key in list(selector.get_map().values()):
                        selector.unregister(key.fileobj)
                for key, events in ready:
                    if key.fileobj is self.sock:
                        if events & selectors.EVENT_READ and not self._read_ws():
                            self._closing = True
                            self._first.set()
                        if events & selectors.EVENT_WRITE and self._to_ws:
                            try:
                                sent = self.sock.send(self._to_ws[:PUMP_CHUNK])
                                del self._to_ws[:sent]
                            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                                pass
                    else:
                        if events & selectors.EVENT_WRITE and self._to_local:
                            try:
                                sent = self.local.send(self._to_local[:PUMP_CHUNK])
                                del self._to_local[:sent]
                            except BlockingIOError:
                                pass
                            except OSError:
                                return
                        if events & selectors.EVENT_READ:
                            try:
                                data = self.local.recv(PUMP_CHUNK)
                            except BlockingIOError:
                                data = None
                            except OSError:
                                data = b""
                            if data == b"":
                                return  # the user closed their end
                            if data:
                                self._to_ws.extend(_client_frame(b"\x00" + data))
                if self._closing and not self._to_local:
                    return
        finally:
            selector.close()
            self._first.set()
            with contextlib.suppress(OSError):
                self.local.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.local.close()
            with contextlib.suppress(Exception):
                self.sock.setblocking(True)
                self.ws.close(timeout=1)


def open_port_forward(
    client: KubeClient, pod: str, port: int, timeout: float = 30.0
) -> socket.socket:
    """A socket connected to ``127.0.0.1:port`` inside the pod, through the apiserver.

    Raises ``ConnectionRefusedError`` when the kubelet reports it could not dial the port
    (nothing listens there: the agent is gone).
    """
    path = f"{client.ns_path('pods', pod)}/portforward?{urllib.parse.urlencode({'ports': port})}"
    ws = connect(client, path, PORT_FORWARD_PROTOCOLS, timeout=timeout)
    pump = PortForwardPump(ws, port)
    pump.start()
    pump.wait_verdict(REFUSAL_WINDOW)
    if pump.error:
        pump.user.close()
        raise ConnectionRefusedError(f"port-forward to {pod}:{port}: {pump.error.strip()}")
    if pump.closed_at_once:
        pump.user.close()
        raise ConnectionError(f"port-forward to {pod}:{port} was closed before any data")
    return pump.user
