"""``sky.Verda(...)``: the user's Verda settings, validated with no network call."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from attrs import field, frozen

from skyward.errors import ConfigurationError
from skyward.spec import ComputeSpec
from skyward.volumes import Volume

if TYPE_CHECKING:
    from skyward.provider import Provider

__all__ = [
    "CLIENT_ID_ENV",
    "CLIENT_SECRET_ENV",
    "CREDENTIALS_FIX",
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "Verda",
    "endpoint",
]

DEFAULT_ENDPOINT = "https://api.verda.com/v1"
ENDPOINT_ENV = "SKYWARD_VERDA_ENDPOINT"
CLIENT_ID_ENV = "VERDA_CLIENT_ID"
CLIENT_SECRET_ENV = "VERDA_CLIENT_SECRET"
CREDENTIALS_FIX = (
    f"Set {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV} to a Cloud API client id and secret "
    "(Verda console → Keys), or pass sky.Verda(client_id=..., client_secret=...)"
)
# Location codes look like FIN-01; which ones exist comes from the API, never from here.
_LOCATION = re.compile(r"[A-Z]{2,4}-\d{2}")


def _location(_: object, __: object, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _LOCATION.fullmatch(value)):
        raise ConfigurationError(
            "region",
            f"{value!r} is not a Verda location code",
            "Use a code from the Verda API such as 'FIN-01', or leave region=None to pick "
            "a location with capacity",
        )


def _text(field_name: str, example: str) -> Callable[[object, object, str | None], None]:
    def check(_: object, __: object, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigurationError(field_name, f"{value!r} is not valid", f"Use e.g. {example}")

    return check


def _positive(field_name: str, example: str) -> Callable[[object, object, int], None]:
    def check(_: object, __: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigurationError(
                field_name, f"{value!r} is not a positive whole number", f"Use e.g. {example}"
            )

    return check


def endpoint() -> str:
    """The API base URL: ``SKYWARD_VERDA_ENDPOINT`` (tests, proxies) or Verda's own."""
    value = (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
    if not value.startswith(("https://", "http://")):
        raise ConfigurationError(
            ENDPOINT_ENV, f"{value!r} is not an http(s) URL", f"Use e.g. {DEFAULT_ENDPOINT}"
        )
    return value


@frozen
class Verda:
    """Run pools on Verda (formerly DataCrunch).

    :param region: a location code (``"FIN-01"``); ``None`` picks, per offer, a location
        that has capacity for the machine type and allocation. Checked against the API's
        ``/locations`` before anything is created.
    :param client_id: Cloud API client id (default: ``VERDA_CLIENT_ID``).
    :param client_secret: Cloud API client secret (default: ``VERDA_CLIENT_SECRET``).
    :param image: OS image type or id (default: the API's default image for the type).
    :param disk_gb: size of each node's OS volume, in GB.
    :param instance_timeout: seconds a machine may take to boot and answer SSH.
    """

    region: str | None = field(default=None, validator=_location)
    client_id: str | None = field(
        default=None, validator=_text("client_id", "the id from the Verda console")
    )
    client_secret: str | None = field(
        default=None, repr=False, validator=_text("client_secret", "the console's secret")
    )
    image: str | None = field(
        default=None, validator=_text("image", "'ubuntu-24.04-cuda-12.8-open-docker'")
    )
    disk_gb: int = field(default=100, validator=_positive("disk_gb", "100"))
    instance_timeout: int = field(default=600, validator=_positive("instance_timeout", "600"))
    provider_name: ClassVar[str] = "verda"

    def credentials(self) -> tuple[str, str]:
        """(client id, secret) from the arguments or the environment; both or an error."""
        client_id = self.client_id or os.environ.get(CLIENT_ID_ENV, "").strip()
        secret = self.client_secret or os.environ.get(CLIENT_SECRET_ENV, "").strip()
        if not client_id or not secret:
            missing = " and ".join(
                name
                for name, value in ((CLIENT_ID_ENV, client_id), (CLIENT_SECRET_ENV, secret))
                if not value
            )
            raise ConfigurationError(
                "credentials", f"no Verda credentials: {missing} not set", CREDENTIALS_FIX
            )
        return client_id, secret

    def validate(self, spec: ComputeSpec) -> None:
        if spec.volumes:
            kind = "data volumes" if isinstance(spec.volumes[0], Volume) else "S3 volumes"
            raise ConfigurationError(
                "volumes",
                f"the Verda provider does not mount {kind} yet",
                "Drop the volume, or use sky.AWS for EBS and S3 volumes",
            )

    def create(self) -> Provider:
        from skyward_verda.provider import VerdaProvider

        client_id, secret = self.credentials()
        return VerdaProvider(self, endpoint(), client_id, secret)
