"""The pool's cloud firewall: SSH from the client only, the pool's nodes to each other, and
every outbound flow.

DigitalOcean's cloud firewalls deny whatever they do not list, outbound included, and the
API adds no default outbound rules (the control panel does), so they are spelled out or
nodes could not reach the package index. The firewall is applied by the pool's tag, so it
covers the droplets as they are created; the tag must exist first.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.request
from typing import Any

from skyward.errors import ProvisioningError

__all__ = ["CHECKIP_URL", "client_cidr", "firewall_body"]

CHECKIP_URL = "https://checkip.amazonaws.com"
CHECKIP_VARIABLE = "SKYWARD_DIGITALOCEAN_CHECKIP_URL"
_EVERYWHERE = {"addresses": ["0.0.0.0/0", "::/0"]}


def client_cidr(given: str | None) -> str:
    """Who may SSH in: what the user said, else this client's public address."""
    if given is not None:
        return given
    # The variable lets a proxy or test stand-in answer in place of the public service.
    url = os.environ.get(CHECKIP_VARIABLE, CHECKIP_URL)
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            address = answer.read(64).decode("ascii", "replace").strip()
        ipaddress.IPv4Address(address)
    except (OSError, ValueError) as error:
        raise ProvisioningError(
            "digitalocean",
            f"could not learn this client's public address ({error}); pass "
            "DigitalOcean(ssh_cidr='<your address>/32') (or '0.0.0.0/0' to allow everyone)",
        ) from error
    return f"{address}/32"


def firewall_body(name: str, pool_tag: str, ssh_cidr: str) -> dict[str, Any]:
    """``POST /v2/firewalls`` for one pool."""
    pool = {"tags": [pool_tag]}
    return {
        "name": name,
        "tags": [pool_tag],
        "inbound_rules": [
            {"protocol": "tcp", "ports": "22", "sources": {"addresses": [ssh_cidr]}},
            # distributed frameworks rendezvous between the pool's own nodes
            {"protocol": "tcp", "ports": "0", "sources": pool},
            {"protocol": "udp", "ports": "0", "sources": pool},
            {"protocol": "icmp", "ports": "0", "sources": pool},
        ],
        "outbound_rules": [
            {"protocol": "tcp", "ports": "0", "destinations": _EVERYWHERE},
            {"protocol": "udp", "ports": "0", "destinations": _EVERYWHERE},
            {"protocol": "icmp", "ports": "0", "destinations": _EVERYWHERE},
        ],
    }
