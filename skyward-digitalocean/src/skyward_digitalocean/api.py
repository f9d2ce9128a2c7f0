"""pydo, with every answer checked and one retry policy for the whole provider.

pydo (AutoRest on azure-core) has two traps (research note, §1.3-1.4): it *returns*
documented 404/400 bodies instead of raising, and azure-core retries a POST on 5xx, which
for ``droplets.create`` can make duplicate droplets. So the client is built with
azure-core's retries off, and :meth:`Api.call` retries in one place:

- 429: wait as ``retry-after`` says (the burst limit); the hourly limit sends none, so
  with ``ratelimit-remaining: 0`` wait until ``ratelimit-reset`` (or give up with the time,
  past :data:`PATIENCE`), else back off — for any method, as a 429 was not processed;
- the ``ratelimit-*`` headers of every answer are remembered: with none left this hour,
  no request is sent until the reset;
- 5xx, 408 and dropped connections: retried for reads and deletes (idempotent); for a
  create the outcome is unknown, so :class:`UnknownOutcome` is raised and the caller
  reconciles by tag before it tries again;
- 401: the token is wrong — a :class:`~skyward.errors.ConfigurationError` naming both
  environment variables;
- 422: a capacity or quota refusal (droplet limit, size sold out or not sold there) is a
  :class:`~skyward.errors.CapacityError`, so selection moves on; anything else is a
  :class:`~skyward.errors.ProvisioningError` carrying DigitalOcean's message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from skyward.errors import CapacityError, ConfigurationError, ProvisioningError
from skyward_digitalocean.config import TOKEN_VARIABLES

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINT_VARIABLE",
    "Api",
    "RateLimited",
    "UnknownOutcome",
    "endpoint",
]

DEFAULT_ENDPOINT = "https://api.digitalocean.com"
ENDPOINT_VARIABLE = "SKYWARD_DIGITALOCEAN_ENDPOINT"
PAGE_SIZE = 200  # the API's largest page
PATIENCE = 300.0
"""Seconds one call may spend waiting out rate limits and server errors."""
NAME = "digitalocean"
_CAPACITY_HINTS = (
    "capacity",
    "not available",
    "unavailable",
    "invalid size",
    "sold out",
)


def endpoint() -> str:
    """The API's address: ``SKYWARD_DIGITALOCEAN_ENDPOINT`` (tests, proxies) or the real one."""
    return os.environ.get(ENDPOINT_VARIABLE, "").strip().rstrip("/") or DEFAULT_ENDPOINT


class UnknownOutcome(ProvisioningError):
    """A write was sent and no answer says whether it happened (5xx, dropped connection)."""


class RateLimited(ProvisioningError):
    """A write refused with 429: nothing happened; it may be tried again after ``wait``."""

    def __init__(self, message: str, wait: float) -> None:
        super().__init__(NAME, message)
        self.wait = wait


def _error_body(error: Any) -> tuple[str, str]:
    try:
        body = error.response.json()
        return str(body.get("id", "")), str(body.get("message", ""))
    except Exception:
        return "", str(getattr(error, "message", "") or error)


def _header(error: Any, name: str) -> str | None:
    try:
        value = error.response.headers.get(name)
    except Exception:
        return None
    return None if value is None else str(value)


def refusal(operation: str, ident: str, message: str, status: int | None = None) -> Exception:
    """The error to raise for a refusal DigitalOcean explained."""
    text = f"{operation}: {message or ident} ({status or ident})"
    lowered = message.lower()
    if "droplet limit" in lowered:
        return CapacityError(
            NAME,
            f"{text}; ask DigitalOcean to raise the account's droplet limit, or use fewer "
            "nodes or another provider",
        )
    if status == 422 and any(hint in lowered for hint in _CAPACITY_HINTS):
        return CapacityError(NAME, text)
    return ProvisioningError(NAME, text)


class Api:
    """One pydo client (token never logged) and the policy above."""

    def __init__(self, token: str, url: str | None = None, *, patience: float = PATIENCE) -> None:
        import pydo
        from azure.core.credentials import AzureKeyCredential
        from azure.core.pipeline.policies import AzureKeyCredentialPolicy

        self.url = url or endpoint()
        self.patience = patience
        # The key policy sends ``Authorization: Bearer <token>`` to any URL; pydo's
        # default bearer policy refuses plain-HTTP endpoints (a test fake, a local proxy).
        self.client: Any = pydo.Client(
            token,
            endpoint=self.url,
            authentication_policy=AzureKeyCredentialPolicy(
                AzureKeyCredential(token), "Authorization", prefix="Bearer"
            ),
            retry_total=0,
            user_agent="skyward",
            raw_response_hook=self._note_limits,
        )
        self._remaining: int | None = None
        self._reset: int | None = None

    def _note_limits(self, response: Any) -> None:
        """Remember the ``ratelimit-*`` headers every answer carries."""
        headers = response.http_response.headers
        remaining, reset = headers.get("ratelimit-remaining"), headers.get("ratelimit-reset")
        if remaining is not None and str(remaining).isdigit():
            self._remaining = int(remaining)
        if reset is not None and str(reset).isdigit():
            self._reset = int(reset)

    def _spend(self, operation: str, deadline: float) -> None:
        """With no request left this hour, wait until the oldest one stops counting rather
        than send one that can only be refused — or say when that is, past the patience."""
        if self._remaining != 0 or self._reset is None:
            return
        wait = self._reset - time.time()
        if wait <= 0:
            return
        if time.monotonic() + wait > deadline:
            raise ProvisioningError(NAME, _limit_text(operation, str(self._reset)))
        time.sleep(wait)
        self._remaining = None

    def call(
        self, operation: str, fn: Callable[..., Any], *args: Any, write: bool = False, **kw: Any
    ) -> Any:
        """``fn(*args, **kw)`` under the retry policy. ``write=True`` marks a call that is
        not safe to repeat blindly (a create): it raises :class:`UnknownOutcome` or
        :class:`RateLimited` instead of retrying."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        deadline = time.monotonic() + self.patience
        backoff = 0.5
        while True:
            self._spend(operation, deadline)
            try:
                return fn(*args, **kw)
            except ClientAuthenticationError as error:
                raise token_refused(operation, error) from None
            except HttpResponseError as error:
                status = error.status_code or 0
                ident, message = _error_body(error)
                if status == 401:
                    raise token_refused(operation, error) from None
                if status == 403:
                    raise token_scope(operation, message) from None
                if status == 429:
                    wait = _rate_limit_wait(error, backoff)
                    backoff = min(backoff * 2, 60.0)
                    if time.monotonic() + wait > deadline:
                        raise _exhausted(operation, error) from None
                    if write:
                        raise RateLimited(f"{operation}: rate limited", wait) from None
                    time.sleep(wait)
                    continue
                if status >= 500 or status == 408:
                    if write:
                        raise UnknownOutcome(
                            NAME, f"{operation}: {message or 'server error'} ({status})"
                        ) from None
                    if time.monotonic() + backoff > deadline:
                        raise ProvisioningError(
                            NAME, f"{operation}: {message or 'server error'} ({status})"
                        ) from None
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                raise refusal(operation, ident, message, status) from None
            except ServiceRequestError as error:
                # Not sent (connection refused, DNS): safe to repeat, writes included.
                if time.monotonic() + backoff > deadline:
                    raise ProvisioningError(
                        NAME, f"{operation}: cannot reach {self.url}: {error}"
                    ) from None
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except ServiceResponseError as error:
                if write or time.monotonic() + backoff > deadline:
                    raise UnknownOutcome(NAME, f"{operation}: no answer ({error})") from None
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def pages(
        self, operation: str, fn: Callable[..., Any], key: str, **kw: Any
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paged list (pydo does not follow pages; the default page of 20
        silently truncates)."""
        page = 1
        while True:
            document = self.call(operation, fn, per_page=PAGE_SIZE, page=page, **kw)
            if key not in document:
                ident, message = str(document.get("id", "")), str(document.get("message", ""))
                raise refusal(operation, ident, message)
            yield from document[key]
            if not ((document.get("links") or {}).get("pages") or {}).get("next"):
                return
            page += 1


def expect(operation: str, document: Any, key: str) -> Any:
    """``document[key]``, or the error DigitalOcean answered with instead (pydo returns
    documented 400/404 bodies rather than raising)."""
    if isinstance(document, dict) and key in document:
        return document[key]
    body = document if isinstance(document, dict) else {}
    raise refusal(operation, str(body.get("id", "")), str(body.get("message", "")))


def gone(document: Any) -> bool:
    """A delete's answer: ``None`` (204) or a ``not_found`` body both mean gone."""
    if document is None:
        return True
    if isinstance(document, dict) and document.get("id") == "not_found":
        return True
    raise refusal("delete", str(document.get("id", "")), str(document.get("message", "")))


def _rate_limit_wait(error: Any, backoff: float) -> float:
    """How long a 429 says to wait: ``retry-after`` (the burst limit); with none and no
    request left this hour, until ``ratelimit-reset`` (the oldest request expires);
    otherwise the backoff."""
    after = _header(error, "retry-after")
    if after is not None:
        try:
            return max(0.0, float(after))
        except ValueError:
            return backoff
    remaining = _header(error, "ratelimit-remaining")
    reset = _header(error, "ratelimit-reset")
    if remaining == "0" and reset is not None and reset.isdigit():
        return max(backoff, int(reset) - time.time())
    return backoff


def token_refused(operation: str, error: Any) -> ConfigurationError:
    return ConfigurationError(
        "token",
        f"DigitalOcean refused the API token ({operation}: 401 Unauthorized)",
        f"Check {TOKEN_VARIABLES[0]} / {TOKEN_VARIABLES[1]} (or DigitalOcean(token=...)): "
        "the token must exist, be unexpired and have read and write scope",
    )


def token_scope(operation: str, message: str) -> ConfigurationError:
    return ConfigurationError(
        "token",
        f"the API token may not {operation} ({message or '403 Forbidden'})",
        "Use a token with read and write scope (or custom scopes covering droplet, "
        "ssh_key, firewall, tag, regions, sizes and account)",
    )


def _exhausted(operation: str, error: Any) -> ProvisioningError:
    return ProvisioningError(NAME, _limit_text(operation, _header(error, "ratelimit-reset")))


def _limit_text(operation: str, reset: str | None) -> str:
    when = ""
    if reset and reset.isdigit():
        when = " until " + time.strftime("%H:%M:%S UTC", time.gmtime(int(reset)))
    return (
        f"{operation}: DigitalOcean's API rate limit (5,000/hour, 250/minute) is used "
        f"up{when}; wait, or close other clients using this token"
    )
