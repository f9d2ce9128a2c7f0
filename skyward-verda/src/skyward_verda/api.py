"""Verda's public API v1 over httpx: OAuth2 client credentials, retries, JSON errors.

Tokens come from ``POST /oauth2/token`` (client credentials); they are refreshed with the
refresh token shortly before they expire, and a refused refresh falls back to a fresh
grant. A call answered 401 (a token the server dropped early) refreshes once and is
sent again. Idempotent calls are retried on 429, 5xx and broken connections with
exponential backoff; ``create`` never is: a create that failed ambiguously may have
created the resource, so the caller looks for it first (see :meth:`VerdaAPI.create`).
The client secret is sent only in the token request body, never logged or put in errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from skyward.errors import ConfigurationError, SkywardError
from skyward_verda.config import CLIENT_ID_ENV, CLIENT_SECRET_ENV, CREDENTIALS_FIX

__all__ = ["AmbiguousCreateError", "VerdaAPI", "VerdaError"]

# Refresh this long before the token's stated expiry (the Go SDK does the same).
REFRESH_MARGIN = 30.0
RETRIES = 5
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


class VerdaError(SkywardError):
    """The API answered an error: its HTTP status and ``{code, message}`` body."""

    def __init__(self, status: int, code: str, message: str, method: str, path: str) -> None:
        super().__init__(f"Verda {method} {path}: {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class AmbiguousCreateError(SkywardError):
    """A create failed in a way that does not say whether the resource was made."""


def _error(response: httpx.Response, method: str, path: str) -> VerdaError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return VerdaError(
        response.status_code,
        str(body.get("code") or ""),
        str(body.get("message") or response.reason_phrase),
        method,
        path,
    )


class VerdaAPI:
    """One authenticated client for one provider object; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            headers={"User-Agent": "skyward-verda", "Accept": "application/json"},
        )
        self._client_id = client_id
        self._secret = client_secret
        self._sleep = sleep
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._expires_at = 0.0
        self.grants = 0
        """Client-credential grants made (tests read it)."""

    def close(self) -> None:
        self._http.close()

    # -- tokens -----------------------------------------------------------------------

    def _token_request(self, body: Mapping[str, str]) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(RETRIES):
            try:
                response = self._http.post("/oauth2/token", json=dict(body))
            except httpx.TransportError as error:
                last = error
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                last = _error(response, "POST", "/oauth2/token")
            self._sleep(min(8.0, 0.5 * 2**attempt))
        assert last is not None
        raise last

    def _store(self, response: httpx.Response) -> None:
        data = response.json()
        self._access = str(data["access_token"])
        self._refresh = data.get("refresh_token")
        self._expires_at = time.monotonic() + float(data.get("expires_in") or 3600)

    def _grant(self) -> None:
        response = self._token_request(
            {
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._secret,
            }
        )
        self.grants += 1
        if response.status_code in (400, 401, 403):
            error = _error(response, "POST", "/oauth2/token")
            raise ConfigurationError(
                "credentials",
                f"Verda refused the client credentials from {CLIENT_ID_ENV} / "
                f"{CLIENT_SECRET_ENV} ({error.status} {error.code or error.message})",
                CREDENTIALS_FIX,
            )
        if response.is_error:
            raise _error(response, "POST", "/oauth2/token")
        self._store(response)

    def _renew(self) -> None:
        """Refresh the token; a refused refresh (400/401) means a fresh grant."""
        if self._refresh:
            response = self._token_request(
                {"grant_type": "refresh_token", "refresh_token": self._refresh}
            )
            if response.is_success:
                self._store(response)
                return
            if response.status_code not in (400, 401):
                raise _error(response, "POST", "/oauth2/token")
        self._grant()

    def _bearer(self, stale: str | None = None) -> str:
        with self._lock:
            if self._access is None:
                self._grant()
            elif self._access == stale or time.monotonic() >= self._expires_at - REFRESH_MARGIN:
                self._renew()
            assert self._access is not None
            return self._access

    # -- calls ------------------------------------------------------------------------

    def _send(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None
    ) -> httpx.Response:
        token = self._bearer()
        response = self._http.request(
            method, path, json=json, params=params, headers={"Authorization": f"Bearer {token}"}
        )
        if response.status_code == 401:  # dropped early: renew once, then send again
            token = self._bearer(stale=token)
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
            )
        return response

    def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """An idempotent call (GET, DELETE, or a PUT that can be repeated), retried."""
        for attempt in range(RETRIES):
            try:
                response = self._send(method, path, json=json, params=params)
            except httpx.TransportError:
                if attempt == RETRIES - 1:
                    raise
            else:
                if response.is_success:
                    return response
                if response.status_code not in RETRY_STATUSES or attempt == RETRIES - 1:
                    raise _error(response, method, path)
                self._wait_after(response, attempt)
                continue
            self._sleep(min(8.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    def _wait_after(self, response: httpx.Response, attempt: int) -> None:
        """Back off before a retry, as long as ``Retry-After`` asks when it says."""
        delay = response.headers.get("Retry-After") or ""
        self._sleep(min(30.0, float(delay)) if delay.isdigit() else min(8.0, 0.5 * 2**attempt))

    def get(self, path: str, **params: str) -> Any:
        return self.request("GET", path, params=params or None).json()

    def create(self, path: str, body: Mapping[str, Any]) -> str:
        """``POST`` a new resource once; returns its id (the API answers it as bare text).

        Raises :class:`VerdaError` for a clear refusal (4xx, and 503: no capacity) and
        :class:`AmbiguousCreateError` when the resource may exist anyway (5xx, a broken
        connection or a timeout): the caller must look for it before creating again.
        """
        for attempt in range(RETRIES):
            try:
                response = self._send("POST", path, json=dict(body))
            except httpx.TransportError as error:
                raise AmbiguousCreateError(f"POST {path}: {error!r}") from error
            if response.status_code != 429 or attempt == RETRIES - 1:
                break
            self._wait_after(response, attempt)  # throttled: not processed, safe to resend
        if response.is_success:
            text = response.text.strip().strip('"')
            if not text:
                raise AmbiguousCreateError(f"POST {path}: answered no id")
            return text
        error_ = _error(response, "POST", path)
        if response.status_code >= 500 and response.status_code != 503:
            raise AmbiguousCreateError(str(error_)) from error_
        raise error_
