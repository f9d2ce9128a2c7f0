"""Creating a pool's droplets without ever making one twice, and reading them back.

Up to 10 droplets are created per request (``names``), so N nodes cost ceil(N/10)
creates. A create is never repeated blindly: when its answer is lost (5xx, a dropped
connection) or refused for the rate limit, the pool's tag is listed first and only the
names not found are asked for again; a name found twice (a retry that did happen twice)
keeps its oldest droplet and the others are destroyed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from skyward.errors import ProvisioningError
from skyward.provider import MANAGED_TAG, POOL_TAG, InstanceState
from skyward_digitalocean.api import Api, RateLimited, UnknownOutcome, expect, gone

__all__ = [
    "MANAGED",
    "MAX_PER_CREATE",
    "SETTLE_SECONDS",
    "create_droplets",
    "droplet_state",
    "instance_tags",
    "pool_tag",
    "private_ip",
    "public_ip",
    "tagged",
]

MAX_PER_CREATE = 10
"""DigitalOcean's limit on ``names`` in one create (stated in prose, not the schema)."""
MAX_LOST_ANSWERS = 5
"""Creates of one batch whose answer may be lost before the launch gives up."""
SETTLE_SECONDS = 5.0
"""How long after a create with a lost answer its droplets are looked for once more."""
MANAGED = MANAGED_TAG
"""``skyward:managed`` is a valid DigitalOcean tag as it is."""
_POOL_PREFIX = f"{POOL_TAG}:"


def pool_tag(pool_id: str) -> str:
    """``skyward:pool:<id>`` (DigitalOcean tags are flat strings, ``[A-Za-z0-9_:-]``)."""
    return f"{_POOL_PREFIX}{pool_id}"


def instance_tags(tags: Iterable[str]) -> dict[str, str]:
    """DigitalOcean tags back into Skyward's key/value tags."""
    result: dict[str, str] = {}
    for tag in tags:
        if tag == MANAGED:
            result[MANAGED_TAG] = "true"
        elif tag.startswith(_POOL_PREFIX):
            result[POOL_TAG] = tag.removeprefix(_POOL_PREFIX)
    return result


def _address(droplet: Mapping[str, Any], kind: str) -> str | None:
    for network in (droplet.get("networks") or {}).get("v4") or []:
        if network.get("type") == kind and network.get("ip_address"):
            return str(network["ip_address"])
    return None


def public_ip(droplet: Mapping[str, Any]) -> str | None:
    return _address(droplet, "public")


def private_ip(droplet: Mapping[str, Any]) -> str | None:
    return _address(droplet, "private")


def droplet_state(droplet: Mapping[str, Any]) -> InstanceState:
    """``active`` counts as running only once the public address exists (DigitalOcean
    reports ``active`` first); ``off`` still bills, so it is on its way out, not stopped."""
    status = droplet.get("status")
    if status == "active":
        return InstanceState.RUNNING if public_ip(droplet) else InstanceState.PENDING
    if status == "off":
        return InstanceState.STOPPING
    if status == "archive":
        return InstanceState.TERMINATED
    return InstanceState.PENDING


def tagged(api: Api, tag: str, *, gpus: bool = True) -> list[dict[str, Any]]:
    """Every droplet with ``tag``. Plain listings omit GPU droplets and ``type=gpus``
    cannot be combined with ``tag_name``, so GPU droplets are also listed on their own and
    filtered here — a sweep must never miss a droplet that bills by the hour."""
    client = api.client
    found = {
        d["id"]: d
        for d in api.pages("droplets.list", client.droplets.list, "droplets", tag_name=tag)
    }
    if gpus:
        for droplet in api.pages("droplets.list", client.droplets.list, "droplets", type="gpus"):
            if tag in (droplet.get("tags") or []):
                found.setdefault(droplet["id"], droplet)
    return list(found.values())


def destroy(api: Api, droplet_id: int) -> None:
    gone(api.call("droplets.destroy", api.client.droplets.destroy, droplet_id))


def create_droplets(
    api: Api,
    base: Mapping[str, Any],
    names: Sequence[str],
    tag: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    settle: float = SETTLE_SECONDS,
) -> list[dict[str, Any]]:
    """Create one droplet per name (``base`` is the rest of the body); returns them in
    ``names`` order. Raises what DigitalOcean refused with (capacity, limit, bad input).

    After any lost answer, the pool's tag is listed once more ``settle`` seconds after the
    last create, in case a lost create's droplets showed up late and were asked for again:
    a name found twice keeps one droplet. (Teardown destroys everything with the pool's
    tag, so a duplicate that shows up later still does not outlive the pool.)"""
    made: dict[str, dict[str, Any]] = {}
    any_lost = False
    for start in range(0, len(names), MAX_PER_CREATE):
        batch = list(names[start : start + MAX_PER_CREATE])
        missing = batch
        lost = 0
        deadline = time.monotonic() + api.patience
        while missing:
            if time.monotonic() > deadline:
                raise ProvisioningError(
                    "digitalocean", f"droplets.create: still refused after {api.patience:g}s"
                )
            try:
                answer = api.call(
                    "droplets.create",
                    api.client.droplets.create,
                    {**base, "names": missing},
                    write=True,
                )
                for droplet in expect("droplets.create", answer, "droplets"):
                    made[droplet["name"]] = droplet
                missing = [n for n in batch if n not in made]
                if not missing:
                    break
            except RateLimited as limited:
                sleep(limited.wait)
            except UnknownOutcome:
                lost += 1
                any_lost = True
                if lost > MAX_LOST_ANSWERS:
                    raise
                sleep(min(0.5 * 2**lost, 10.0))
            # Whatever happened, look before asking again.
            existing = _by_name(api, tag, set(batch))
            made.update(existing)
            missing = [n for n in batch if n not in made]
    if any_lost:
        sleep(settle)
        made.update(_by_name(api, tag, set(names)))
    missing = [n for n in names if n not in made]
    if missing:
        raise ProvisioningError("digitalocean", f"droplets not created: {', '.join(missing)}")
    return [made[n] for n in names]


def _by_name(api: Api, tag: str, names: set[str]) -> dict[str, dict[str, Any]]:
    """The pool's droplets with these names; duplicates beyond the oldest are destroyed."""
    keep: dict[str, dict[str, Any]] = {}
    for droplet in sorted(tagged(api, tag), key=lambda d: int(d["id"])):
        name = droplet.get("name")
        if name not in names or droplet.get("status") == "archive":
            continue
        if name in keep:
            destroy(api, int(droplet["id"]))
            continue
        keep[str(name)] = droplet
    return keep
