"""Who may SSH into a pool's machines: the CIDR a cloud's firewall opens port 22 to.

The user's ``ssh_cidr`` when given; else this client's public address, asked of a
check-ip service (the one AWS runs answers anyone). Each cloud names its own environment
variable for the service's address, so a proxy or a test stand-in can answer instead.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.request

from skyward.errors import ProvisioningError

__all__ = ["CHECKIP_URL", "client_cidr"]

CHECKIP_URL = "https://checkip.amazonaws.com"


def client_cidr(given: str | None, *, provider: str, variable: str, config: str) -> str:
    """``given``, else this client's public IPv4 address as a ``/32``.

    :param provider: the provider's name, for the error.
    :param variable: the environment variable that may name another check-ip service.
    :param config: the provider's configuration class, named in the error's fix
        (``"AWS"`` → ``AWS(ssh_cidr='<your address>/32')``).
    :raises ProvisioningError: the service could not be reached or answered no address.
    """
    if given is not None:
        return given
    url = os.environ.get(variable, CHECKIP_URL)
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            address = answer.read(64).decode("ascii", "replace").strip()
        ipaddress.IPv4Address(address)
    except (OSError, ValueError) as error:
        raise ProvisioningError(
            provider,
            f"could not learn this client's public address ({error}); pass "
            f"{config}(ssh_cidr='<your address>/32') (or '0.0.0.0/0' to allow everyone)",
        ) from error
    return f"{address}/32"
