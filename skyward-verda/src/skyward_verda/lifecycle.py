"""Creating and deleting Verda instances without leaving anything that bills.

Create: one ``POST /instances`` per node. A 5xx or a broken connection does not say
whether the instance exists (Verda has answered 500 for resources it did make), so before
any second attempt the node's hostname is looked up; only when it is not there is the
create sent again.

Delete: a shut-down Verda instance still bills, and so does every volume not named at
deletion. ``PUT /instances`` deletes with the OS and data volume ids and
``delete_permanently`` (no 96-hour trash). The API refuses to delete an instance still
``ordered``/``provisioning``: those are waited out and asked again. "Can't discontinue a
discontinued instance" and "Invalid instance id" mean already gone. Deletion is polled
until every instance is ``discontinued``. Then :func:`sweep_pool` removes what a pool
may still hold: detached or trashed OS volumes (a preempted spot node's), its SSH key and
its startup script (which carries a host private key and counts against a quota).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from skyward.errors import CapacityError, ProvisioningError
from skyward_verda import naming
from skyward_verda.api import AmbiguousCreateError, VerdaAPI, VerdaError

__all__ = [
    "GONE",
    "NOT_YET_DELETABLE",
    "create_instance",
    "delete_instances",
    "find_created",
    "sweep_pool",
]

NOT_YET_DELETABLE = {"new", "ordered", "provisioning", "validating", "pending", "deleting"}
GONE = {"discontinued", "notfound"}
# After an ambiguous create, the listing is read this many times (0.25 s, 0.5 s, 1 s, 2 s
# apart): a just-made instance may take a moment to be listed.
_LOOKUP_ATTEMPTS = 4
_CREATE_ATTEMPTS = 3


def find_created(api: VerdaAPI, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The live instance this create body made, if any: same hostname, type, location
    and startup script (a leftover of an earlier attempt has another script)."""
    for item in api.get("/instances"):
        if item.get("status") in (*GONE, "deleting"):
            continue
        if (
            item.get("hostname") == body["hostname"]
            and item.get("instance_type") == body["instance_type"]
            and item.get("location") == body["location_code"]
            and item.get("startup_script_id") == body.get("startup_script_id")
        ):
            return dict(item)
    return None


def create_instance(
    api: VerdaAPI,
    body: dict[str, Any],
    *,
    provider: str,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Create one instance; the id. 503 → :class:`CapacityError`; never a blind retry.

    When the API refuses the body's tags, they are removed from ``body`` (the caller sees
    it and stops sending them) and the create is sent again.
    """
    hostname = str(body["hostname"])
    last: Exception | None = None
    for _ in range(_CREATE_ATTEMPTS):
        try:
            return api.create("/instances", body)
        except VerdaError as error:
            if error.status == 503 or error.code == "no_capacity":
                raise CapacityError(
                    provider, f"{body['instance_type']}: {error.message}"
                ) from error
            if error.status == 400 and "tags" in body and "tag" in error.message.lower():
                # Tags are recent; an API that refuses them refused the whole create
                # (nothing was made). Hostname and description still mark the node.
                del body["tags"]
                continue
            raise ProvisioningError(provider, str(error)) from error
        except AmbiguousCreateError as error:
            last = error
        # It may exist: look before asking again (it can take a moment to be listed).
        for attempt in range(_LOOKUP_ATTEMPTS):
            found = find_created(api, body)
            if found is not None:
                return str(found["id"])
            sleep(0.25 * 2**attempt)
    raise ProvisioningError(provider, f"creating {hostname} kept failing: {last}")


def _volume_ids(item: Mapping[str, Any]) -> list[str]:
    ids = [item.get("os_volume_id"), *(item.get("volume_ids") or [])]
    return list(dict.fromkeys(str(i) for i in ids if i))


def _states(api: VerdaAPI, ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each id's instance (``{}`` when the API no longer knows it)."""
    listed = {str(i["id"]): dict(i) for i in api.get("/instances") if str(i["id"]) in ids}
    for ident in ids:
        if ident not in listed:
            try:
                listed[ident] = dict(api.get(f"/instances/{ident}"))
            except VerdaError as error:
                if not _already_gone(error.message) and error.status != 404:
                    raise
                listed[ident] = {}
    return listed


def _already_gone(message: str) -> bool:
    text = message.lower()
    return "invalid instance id" in text or "discontinued instance" in text


def delete_instances(
    api: VerdaAPI,
    ids: Sequence[str],
    *,
    provider: str,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Delete the instances with all their volumes; return once every one is gone."""
    pending = list(dict.fromkeys(ids))
    deadline = time.monotonic() + timeout
    delay = 0.2
    while pending:
        states = _states(api, pending)
        pending = [i for i in pending if states[i] and states[i].get("status") not in GONE]
        ready = [i for i in pending if states[i].get("status") not in NOT_YET_DELETABLE]
        if ready:
            volumes = [v for i in ready for v in _volume_ids(states[i])]
            try:
                api.request(
                    "PUT",
                    "/instances",
                    json={
                        "action": "delete",
                        "id": ready,
                        "volume_ids": volumes,
                        "delete_permanently": True,
                    },
                )
            except VerdaError as error:
                # The whole request was refused: one of them moved on (gone, or back to a
                # state that cannot be deleted). The next round reads every state again.
                if error.status not in (400, 403, 404, 409):
                    raise
        if not pending:
            return
        if time.monotonic() > deadline:
            left = ", ".join(f"{i} ({states[i].get('status')})" for i in pending)
            raise ProvisioningError(provider, f"instances not deleted after {timeout:g}s: {left}")
        sleep(delay)
        delay = min(5.0, delay * 1.5)


def sweep_pool(api: VerdaAPI, pool_id: str, *, key_id: str = "", script_id: str = "") -> None:
    """Remove a pool's leftovers: its OS volumes (detached or in the trash), key, script."""
    for path in ("/volumes", "/volumes/trash"):
        for volume in api.get(path):
            if naming.pool_of_volume(volume) != pool_id or volume.get("instance_id"):
                continue
            if path == "/volumes" and volume.get("status") in ("attached", "attaching"):
                continue
            with contextlib.suppress(VerdaError):  # gone meanwhile: nothing to do
                api.request("DELETE", f"/volumes/{volume['id']}", json={"is_permanent": True})
    name = naming.resource_name(pool_id)
    for kind in ("ssh-keys", "scripts"):
        wanted = {key_id if kind == "ssh-keys" else script_id} - {""}
        wanted |= {str(i["id"]) for i in api.get(f"/{kind}") if i.get("name") == name}
        for ident in wanted:
            api.request("DELETE", f"/{kind}/{ident}")
