"""A minimal JSON client of the Kubernetes API for the test harness (not the provider).

The fake kubelet and the tests' assertions speak to the apiserver with plain dicts over
``http.client`` so that the harness does not depend on the client library the provider
uses: a bug in that library's models cannot hide behind the same bug in the harness.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

JSON = dict[str, Any]


class KubeAPIError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class KubeAPI:
    """Bearer-token JSON requests to one apiserver; one connection per thread."""

    def __init__(self, port: int, token: str, ca: Path) -> None:
        self.port = port
        self.token = token
        self.context = ssl.create_default_context(cafile=str(ca))
        self._local = threading.local()

    def _connection(self, timeout: float | None = 30.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=timeout
        )

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._local.connection = self._connection()
            try:
                connection.request(method, url, body=data, headers=headers)
                response = connection.getresponse()
                text = response.read().decode()
                break
            except (http.client.HTTPException, OSError):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise
        if response.status >= 300:
            raise KubeAPIError(response.status, text)
        return json.loads(text) if text else {}

    def get(self, path: str, **query: str) -> JSON:
        return self.request("GET", path, query=query or None)

    def post(self, path: str, body: Mapping[str, Any]) -> JSON:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> JSON:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, body: Mapping[str, Any] | None = None) -> JSON:
        return self.request("DELETE", path, body)

    def watch(self, path: str, **query: str) -> Iterator[JSON]:
        """Events of a watch (``{"type": ..., "object": ...}``) until the server ends it."""
        query = {**query, "watch": "true"}
        connection = self._connection(timeout=None)
        try:
            connection.request(
                "GET",
                path + "?" + urllib.parse.urlencode(query),
                headers={"Authorization": f"Bearer {self.token}"},
            )
            response = connection.getresponse()
            if response.status >= 300:
                raise KubeAPIError(response.status, response.read().decode())
            while True:
                line = response.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            connection.close()
