"""boto3 sessions and clients with Skyward's retry policy, and the credentials check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from skyward.errors import ConfigurationError

__all__ = ["Clients", "cache_dir"]

# botocore's standard mode retries throttling (RequestLimitExceeded, ThrottlingException)
# and transient errors with exponential backoff and jitter.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8}, user_agent_extra="skyward")


def cache_dir() -> Path:
    root = os.environ.get("SKYWARD_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "skyward") / "aws"


class Clients:
    """One boto3 session per provider; clients made once, on first use."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.session = boto3.Session(region_name=region)
        self._clients: dict[tuple[str, str], Any] = {}

    def check_credentials(self) -> None:
        """Fail before any call when boto3 finds no credentials at all."""
        if self.session.get_credentials() is None:
            raise ConfigurationError(
                "credentials",
                "no AWS credentials were found",
                "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run `aws configure`",
            )

    def __call__(self, service: str, region: str | None = None) -> Any:
        key = (service, region or self.region)
        if key not in self._clients:
            self._clients[key] = self.session.client(  # type: ignore[call-overload]
                service, region_name=key[1], config=RETRY_CONFIG
            )
        return self._clients[key]
