"""``sky.DigitalOcean(...)``: the user's DigitalOcean settings, validated with no network call."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from attrs import field, frozen

from skyward.allocation import AlwaysSpot
from skyward.errors import ConfigurationError
from skyward.spec import ComputeSpec

if TYPE_CHECKING:
    from skyward.provider import Provider

__all__ = ["KNOWN_REGIONS", "TOKEN_VARIABLES", "DigitalOcean", "resolve_token"]

TOKEN_VARIABLES = ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")
"""Where the token is read from, in order (the second is what ``doctl`` reads)."""

KNOWN_REGIONS = (
    "nyc1",
    "nyc2",
    "nyc3",
    "sfo1",
    "sfo2",
    "sfo3",
    "ams2",
    "ams3",
    "sgp1",
    "lon1",
    "fra1",
    "tor1",
    "blr1",
    "syd1",
    "atl1",
    "ric1",
)
"""Region slugs as of 2026; a new one that looks like a slug is accepted offline and
checked against ``/v2/regions`` once the provider is online."""

MAX_TIMEOUT = 24 * 3600
_REGION = re.compile(r"[a-z]{3}[0-9]")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]|[0-9]+")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _region(_: object, __: object, value: str) -> None:
    if isinstance(value, str) and (value in KNOWN_REGIONS or _REGION.fullmatch(value)):
        return  # a slug not listed yet is checked against /v2/regions once online
    close = difflib.get_close_matches(str(value), KNOWN_REGIONS, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise ConfigurationError(
        "region",
        f"{value!r} is not a DigitalOcean region",
        f"{hint}Use one of {', '.join(KNOWN_REGIONS)}",
    )


def _pattern(
    name: str, regex: re.Pattern[str], example: str
) -> Callable[[object, object, str | None], None]:
    def check(_: object, __: object, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not regex.fullmatch(value)):
            raise ConfigurationError(name, f"{value!r} is not valid", f"Use e.g. {example}")

    return check


def _token(_: object, __: object, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigurationError(
            "token",
            "is empty or not a string",
            f"Pass the API token as a string, or set {TOKEN_VARIABLES[0]}",
        )


def _cidr(_: object, __: object, value: str | None) -> None:
    if value is None:
        return
    try:
        if not isinstance(value, str) or "/" not in value:
            raise ValueError(value)
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigurationError(
            "ssh_cidr",
            f"{value!r} is not an address range",
            "Use e.g. '203.0.113.7/32' (or '0.0.0.0/0' to allow everyone)",
        ) from None


def _positive(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TIMEOUT:
        raise ConfigurationError(
            "instance_timeout",
            f"{value!r} is not a number of seconds from 1 to {MAX_TIMEOUT} (a day)",
            "Use e.g. 300",
        )


def resolve_token(given: str | None) -> str:
    """The API token: the one given, else ``DIGITALOCEAN_TOKEN``, else
    ``DIGITALOCEAN_ACCESS_TOKEN``."""
    if given:
        return given
    for name in TOKEN_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise ConfigurationError(
        "token",
        "no DigitalOcean API token was found",
        f"Set {TOKEN_VARIABLES[0]} (or {TOKEN_VARIABLES[1]}, as doctl reads it), or pass "
        "DigitalOcean(token=...); create one at https://cloud.digitalocean.com/account/api/tokens",
    )


@frozen
class DigitalOcean:
    """Run pools on DigitalOcean droplets (CPU sizes, and GPU droplets where the account
    has them).

    :param region: region slug.
    :param token: API token (default: ``DIGITALOCEAN_TOKEN``, then
        ``DIGITALOCEAN_ACCESS_TOKEN``). Never shown in a repr, a log or an event.
    :param image: droplet image slug or id (default: Ubuntu 24.04 for CPU sizes,
        DigitalOcean's AI/ML-ready image for GPU sizes).
    :param vpc_uuid: launch into this VPC (default: the region's default VPC).
    :param ssh_cidr: who may reach port 22 (default: the client's public address;
        ``"0.0.0.0/0"`` only when you ask for it).
    :param username: SSH user (default: ``root``, as DigitalOcean's images log in).
    :param instance_timeout: seconds a droplet may take to boot and answer SSH.
    """

    region: str = field(default="nyc1", validator=_region)
    token: str | None = field(default=None, validator=_token, repr=False)
    image: str | None = field(
        default=None, validator=_pattern("image", _IMAGE, "'ubuntu-24-04-x64'")
    )
    vpc_uuid: str | None = field(
        default=None,
        validator=_pattern("vpc_uuid", _UUID, "'760e09ef-dc84-11e8-981e-3cfdfeaae000'"),
    )
    ssh_cidr: str | None = field(default=None, validator=_cidr)
    username: str | None = field(default=None, validator=_pattern("username", _USER, "'root'"))
    instance_timeout: int = field(default=300, validator=_positive)
    provider_name: ClassVar[str] = "digitalocean"

    def validate(self, spec: ComputeSpec) -> None:
        if isinstance(spec.allocation, AlwaysSpot):
            raise ConfigurationError(
                "allocation",
                "DigitalOcean sells no spot droplets, so 'always-spot' cannot be met",
                "Use 'on-demand' or 'spot-if-available' (which runs on-demand here), "
                "or drop sky.DigitalOcean() from the providers",
            )
        if spec.volumes:
            raise ConfigurationError(
                "volumes",
                "DigitalOcean pools cannot mount volumes yet (block storage and Spaces are "
                "not supported)",
                "Drop volume=/volumes=, or use sky.AWS() for EBS and S3 volumes",
            )
        resolve_token(self.token)

    def create(self) -> Provider:
        from skyward_digitalocean.provider import DigitalOceanProvider

        return DigitalOceanProvider(self, token=resolve_token(self.token))
