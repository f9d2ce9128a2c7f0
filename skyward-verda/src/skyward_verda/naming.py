"""How Skyward names what it makes on Verda, and reads a pool back from those names.

``GET /instances`` has no server-side tag filter (tags are new and not in every SDK), so a
node is recognised by its hostname ``skyward-<pool>-<n>`` *and* its description
``skyward pool=<pool>``; its OS volume is ``skyward-<pool>-<n>-os``; the pool's SSH key
and startup script are both ``skyward-<pool>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "description",
    "hostname",
    "os_volume_name",
    "pool_of_instance",
    "pool_of_volume",
    "resource_name",
]

_HOSTNAME = re.compile(r"^skyward-(?P<pool>[A-Za-z0-9-]+)-(?P<node>\d+)$")
_VOLUME = re.compile(r"^skyward-(?P<pool>[A-Za-z0-9-]+)-\d+-os$")
_DESCRIPTION = re.compile(r"^skyward pool=(?P<pool>[A-Za-z0-9-]+)(?:\s|$)")


def hostname(pool_id: str, node: int) -> str:
    return f"skyward-{pool_id}-{node}"


def description(pool_id: str) -> str:
    return f"skyward pool={pool_id}"


def os_volume_name(pool_id: str, node: int) -> str:
    return f"skyward-{pool_id}-{node}-os"


def resource_name(pool_id: str) -> str:
    """The pool's SSH key and startup script."""
    return f"skyward-{pool_id}"


def pool_of_instance(item: Mapping[str, Any]) -> str | None:
    """The pool an instance belongs to, when both its hostname and description say so."""
    by_name = _HOSTNAME.match(str(item.get("hostname") or ""))
    by_description = _DESCRIPTION.match(str(item.get("description") or ""))
    if by_name is None or by_description is None:
        return None
    pool = by_description["pool"]
    return pool if by_name["pool"] == pool else None


def pool_of_volume(item: Mapping[str, Any]) -> str | None:
    found = _VOLUME.match(str(item.get("name") or ""))
    return found["pool"] if found else None
