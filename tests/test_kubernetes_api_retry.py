"""The apiserver client tries again when no answer comes (a timeout, a dropped
connection), as for a transient server error; a create so retried finds its own pod."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
from kubernetes.client import Configuration

from skyward_kubernetes import api
from skyward_kubernetes.api import KubeAPIError, KubeClient


@pytest.fixture
def silent_then_answering() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback HTTP server: the first request gets no answer at all, the next ones
    a JSON object. Yields its URL and the request lines it saw."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    seen: list[bytes] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            request = conn.recv(65536)
            seen.append(request.split(b"\r\n", 1)[0])
            if len(seen) == 1:
                held.append(conn)  # never answered
                continue
            body = json.dumps({"kind": "Pod", "metadata": {"name": "p"}}).encode()
            conn.sendall(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    listener.close()
    for conn in held:
        conn.close()


def _client(url: str) -> KubeClient:
    configuration = Configuration()
    configuration.host = url
    return KubeClient(configuration, "default", "test")


def test_a_request_without_an_answer_is_tried_again(
    silent_then_answering: tuple[str, list[bytes]],
) -> None:
    url, seen = silent_then_answering
    answer = _client(url).request(
        "POST", "/api/v1/namespaces/default/pods", {"kind": "Pod"}, timeout=0.5
    )
    assert answer["metadata"]["name"] == "p"
    assert seen == [b"POST /api/v1/namespaces/default/pods HTTP/1.1"] * 2


def test_no_answer_at_all_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there
    monkeypatch.setattr(api, "RETRY_ATTEMPTS", 2)
    with pytest.raises(KubeAPIError, match=r"no answer from http://127\.0\.0\.1") as caught:
        _client(f"http://127.0.0.1:{port}").request("GET", "/version", timeout=0.5)
    assert caught.value.status == api.NO_ANSWER
