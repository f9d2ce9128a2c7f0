"""The pool's cloud firewall: SSH from the client only, the pool's nodes to each other, and
every outbound flow.

DigitalOcean's cloud firewalls deny whatever they do not list, outbound included, and the
API adds no default outbound rules (the control panel does), so they are spelled out or
nodes could not reach the package index. The firewall is applied by the pool's tag, so it
covers the droplets as they are created; the tag must exist first.
"""

from __future__ import annotations

from typing import Any

from skyward import client_address
from skyward.client_address import CHECKIP_URL

__all__ = ["CHECKIP_URL", "client_cidr", "firewall_body"]

CHECKIP_VARIABLE = "SKYWARD_DIGITALOCEAN_CHECKIP_URL"
_EVERYWHERE = {"addresses": ["0.0.0.0/0", "::/0"]}


def client_cidr(given: str | None) -> str:
    """Who may SSH in: what the user said, else this client's public address."""
    return client_address.client_cidr(
        given, provider="digitalocean", variable=CHECKIP_VARIABLE, config="DigitalOcean"
    )


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
