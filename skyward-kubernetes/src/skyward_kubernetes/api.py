"""The Kubernetes API as plain JSON, authenticated the way the user's kubeconfig says.

The ``kubernetes`` package does what is hard to get right — kubeconfig parsing, contexts,
exec-plugin tokens (``aws eks get-token``, ``gke-gcloud-auth-plugin``) refreshed when they
expire, client certificates, the in-cluster service account — and fills a
``Configuration``. Requests themselves are plain dicts over urllib3 (its own HTTP
library): the manifests stay readable, and the provider depends on no generated model
class, whose shapes change between client releases. The same configuration gives the
websockets of exec and port-forward their headers and TLS settings.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skyward.errors import ProvisioningError

__all__ = ["JSON", "KubeAPIError", "KubeClient", "load_client"]

JSON = dict[str, Any]
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_TIMEOUT = 30.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Answers worth another try: throttling (priority and fairness, a proxy in front of the
apiserver) and transient server errors (an apiserver restarting, etcd leader change)."""
NO_ANSWER = 0
"""``KubeAPIError.status`` when no answer came (a timeout, a dropped connection): tried
again like a transient server error; a create retried so finds its own pod (409)."""
RETRY_ATTEMPTS = 6
RETRY_AFTER_CAP = 10.0


class KubeAPIError(Exception):
    """The apiserver answered with an error status (``status``, ``reason``, ``message``)."""

    def __init__(
        self, status: int, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class KubeClient:
    """JSON requests to one cluster, with the credentials of one kubeconfig context."""

    def __init__(self, configuration: Any, namespace: str, context: str) -> None:
        self.configuration = configuration
        self.namespace = namespace
        self.context = context
        self._pool: Any = None
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return str(self.configuration.host).rstrip("/")

    def auth_headers(self) -> dict[str, str]:
        """Authorization header(s) as of now: exec-plugin tokens are refreshed here."""
        headers = {}
        for setting in self.configuration.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = str(setting["value"])
        return headers

    def ssl_context(self) -> ssl.SSLContext:
        """TLS settings of the context: CA, client certificate, verification."""
        config = self.configuration
        context = ssl.create_default_context(cafile=config.ssl_ca_cert or None)
        if not config.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file or None)
        return context

    def _http(self) -> Any:
        import urllib3

        with self._lock:
            if self._pool is None:
                options: dict[str, Any] = {
                    "ssl_context": self.ssl_context(),
                    "maxsize": 8,
                    "retries": False,
                }
                tls_name = getattr(self.configuration, "tls_server_name", None)
                if tls_name:
                    options["server_hostname"] = tls_name
                if not self.configuration.verify_ssl:
                    options["assert_hostname"] = False
                proxy = self.configuration.proxy
                if proxy and not _no_proxy(self.host, self.configuration.no_proxy):
                    self._pool = urllib3.ProxyManager(
                        proxy, proxy_headers=self.configuration.proxy_headers, **options
                    )
                else:
                    self._pool = urllib3.PoolManager(**options)
            return self._pool

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> JSON:
        """One request, tried again on throttling and transient server errors; the decoded
        JSON answer, or :class:`KubeAPIError`.

        A retried create may have been made by the attempt whose answer was an error: the
        caller sees 409 AlreadyExists then and must look at what exists (the provider
        adopts what carries its own launch token), never create blindly.
        """
        for attempt in range(RETRY_ATTEMPTS):
            try:
                return self._request_once(method, path, body, query, content_type, timeout)
            except KubeAPIError as error:
                retry = error.status in RETRY_STATUSES or error.status == NO_ANSWER
                if not retry or attempt == RETRY_ATTEMPTS - 1:
                    raise
                delay = error.retry_after or 0.2 * 2**attempt
                time.sleep(min(delay, RETRY_AFTER_CAP))
        raise AssertionError("unreachable")

    def _request_once(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        query: Mapping[str, str] | None,
        content_type: str,
        timeout: float,
    ) -> JSON:
        headers = {"Accept": "application/json", **self.auth_headers()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        url = self.host + path + ("?" + _encode(query) if query else "")
        import urllib3

        try:
            response = self._http().request(
                method, url, body=data, headers=headers, timeout=timeout, preload_content=True
            )
        except urllib3.exceptions.HTTPError as error:
            # The request may have been carried out (a create whose answer was lost): the
            # caller's retry must look before it creates again, as for a 5xx.
            raise KubeAPIError(
                NO_ANSWER, "NoAnswer", f"no answer from {self.host}: {error}"
            ) from error

        text = response.data.decode("utf-8", "replace")
        if response.status >= 300:
            retry_after = _seconds(response.headers.get("Retry-After"))
            try:
                status = json.loads(text)
            except ValueError:
                raise KubeAPIError(response.status, "", text[:500], retry_after) from None
            raise KubeAPIError(
                response.status, status.get("reason", ""), status.get("message", text), retry_after
            )
        return json.loads(text) if text else {}

    def get(self, path: str, **query: str) -> JSON:
        return self.request("GET", path, query=query or None)

    def create(self, path: str, body: Mapping[str, Any]) -> JSON:
        return self.request("POST", path, body)

    def delete(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> JSON | None:
        """Delete; ``None`` when it was already gone. Options go in the body: with a body,
        the apiserver ignores ``gracePeriodSeconds`` given in the query string."""
        try:
            return self.request("DELETE", path, body, query=query)
        except KubeAPIError as error:
            if error.status == 404:
                return None
            raise

    def ns_path(self, kind: str, name: str | None = None) -> str:
        """``/api/v1/namespaces/<ns>/<kind>[/<name>]`` for core kinds of our namespace."""
        path = f"/api/v1/namespaces/{self.namespace}/{kind}"
        return f"{path}/{name}" if name else path


def _seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the apiserver sends a number; an HTTP date is ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _encode(query: Mapping[str, str]) -> str:
    import urllib.parse

    return urllib.parse.urlencode(query)


def _no_proxy(host: str, no_proxy: str | None) -> bool:
    import urllib.parse

    if not no_proxy:
        return False
    hostname = urllib.parse.urlsplit(host).hostname or ""
    for raw in no_proxy.split(","):
        entry = raw.strip().lstrip(".")
        if entry == "*" or (entry and (hostname == entry or hostname.endswith("." + entry))):
            return True
    return False


def _kubeconfig_path(explicit: str | None) -> str:
    if explicit:
        return os.path.expanduser(explicit)
    env = os.environ.get("KUBECONFIG")
    if env:
        return os.path.expanduser(env.split(os.pathsep)[0])
    return os.path.expanduser("~/.kube/config")


def load_client(context: str | None, kubeconfig: str | None, namespace: str | None) -> KubeClient:
    """A client for the kubeconfig context (or the in-cluster service account).

    Raises :class:`ProvisioningError` naming the file and context when they cannot be used.
    """
    from kubernetes import config as kube_config_module
    from kubernetes.client import Configuration

    kube_config: Any = kube_config_module  # the package's loaders are untyped

    configuration = Configuration()
    path = _kubeconfig_path(kubeconfig)
    in_cluster = (
        kubeconfig is None
        and context is None
        and not os.path.exists(path)
        and "KUBERNETES_SERVICE_HOST" in os.environ
    )
    if in_cluster:
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
        except kube_config.ConfigException as error:
            raise ProvisioningError("kubernetes", f"in-cluster config failed: {error}") from None
        default_ns = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        return KubeClient(configuration, namespace or default_ns or "default", "in-cluster")
    if not os.path.exists(path):
        raise ProvisioningError(
            "kubernetes",
            f"no kubeconfig at {path}; set KUBECONFIG, pass kubeconfig=, or run inside a pod",
        )
    try:
        contexts, current = kube_config.list_kube_config_contexts(config_file=path)
        chosen = context or (current or {}).get("name")
        found = next((c for c in contexts if c.get("name") == chosen), None)
        if found is None:
            names = ", ".join(c.get("name", "?") for c in contexts) or "none"
            raise ProvisioningError(
                "kubernetes", f"no context {chosen!r} in {path} (contexts: {names})"
            )
        kube_config.load_kube_config(
            config_file=path, context=chosen, client_configuration=configuration,
            persist_config=False,
        )  # fmt: skip
    except kube_config.ConfigException as error:
        raise ProvisioningError("kubernetes", f"kubeconfig {path}: {error}") from None
    default_ns = (found.get("context") or {}).get("namespace") or "default"
    return KubeClient(configuration, namespace or default_ns, str(chosen))
