"""The live Verda provider: offers, per-pool key and startup script, launches, teardown."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from attrs import evolve, frozen

from skyward.allocation import (
    AllocationStrategy,
    AlwaysSpot,
    Cheapest,
    OnDemandAllocation,
    Percent,
)
from skyward.api_fields import epoch_seconds, hourly_price
from skyward.errors import CapacityError, ConfigurationError, ProvisioningError
from skyward.instance_ssh import connect_launched
from skyward.offers import Offer
from skyward.provider import (
    MANAGED_TAG,
    POOL_TAG,
    Infrastructure,
    Instance,
    InstanceState,
    LaunchRequest,
)
from skyward.spec import ComputeSpec
from skyward.ssh.transport import SSHTransport
from skyward.ssh.user_data import NodeIdentity, user_data_script
from skyward_verda import catalog, naming
from skyward_verda.api import AmbiguousCreateError, VerdaAPI, VerdaError
from skyward_verda.config import Verda
from skyward_verda.lifecycle import create_instance, delete_instances, sweep_pool

__all__ = ["VerdaInfrastructure", "VerdaProvider", "spot_attempts"]

USERNAME = "root"  # Verda's images log in as root
# How long a launch waits for Verda to accept an order (leave ``ordered``) before it
# knows whether the node got capacity.
ACCEPT_TIMEOUT = 120.0
DELETE_TIMEOUT = 900.0
_STATES = {
    "running": InstanceState.RUNNING,
    "offline": InstanceState.STOPPING,  # shut down, still billed: terminate deletes it
    "deleting": InstanceState.STOPPING,
    "discontinued": InstanceState.TERMINATED,
    "notfound": InstanceState.TERMINATED,
    # A failed order is over: core stops waiting, terminate deletes what is left of it.
    "error": InstanceState.TERMINATED,
    "no_capacity": InstanceState.TERMINATED,
}


@frozen
class VerdaInfrastructure(Infrastructure):
    pool_id: str = ""
    key_id: str = ""
    script_id: str = ""
    identity: NodeIdentity | None = None


def spot_attempts(
    allocation: AllocationStrategy, offer: Offer, node: int, count: int
) -> list[bool]:
    """For node ``node`` of ``count``: spot or not, in the order to try."""
    spot_sold = offer.price_spot is not None
    if isinstance(allocation, OnDemandAllocation):
        return [False]
    if isinstance(allocation, AlwaysSpot):
        return [True]
    if isinstance(allocation, Percent):
        return [True] if node < math.ceil(allocation.spot * count) else [False]
    if isinstance(allocation, Cheapest):
        on_demand = offer.price_on_demand
        if not spot_sold or (on_demand is not None and on_demand <= (offer.price_spot or 0)):
            return [False]
        return [True, False]
    return [True, False] if spot_sold else [False]  # spot-if-available: really falls back


def _tags(pool_id: str) -> list[dict[str, str]]:
    return [{"key": "skyward-managed", "value": "true"}, {"key": "skyward-pool", "value": pool_id}]


class VerdaProvider:
    name = "verda"

    def __init__(self, config: Verda, endpoint: str, client_id: str, client_secret: str) -> None:
        self.config = config
        self.api = VerdaAPI(endpoint, client_id, client_secret)
        self._types: dict[str, catalog.InstanceType] = {}
        self._spec: ComputeSpec | None = None
        self._lock = threading.Lock()
        self._send_tags = True  # until an API from before tags refuses them

    # -- offers -----------------------------------------------------------------------

    def _locations(self) -> list[str]:
        known = [str(loc["code"]) for loc in self.api.get("/locations") if loc.get("code")]
        region = self.config.region
        if region is None:
            return known
        if region not in known:
            raise ConfigurationError(
                "region",
                f"{region!r} is not one of Verda's locations ({', '.join(known)})",
                "Use one of those codes, or region=None to pick one with capacity",
            )
        return [region]

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        locations = self._locations()  # first call: bad credentials fail here
        types = catalog.parse_types(self.api.get("/instance-types", currency="usd"))
        candidates = catalog.matching_types(types, spec)
        if not candidates:
            return []
        with self._lock:
            self._types.update({t.name: t for t in candidates})
        on_demand = catalog.availability(self.api.get("/instance-availability", is_spot="false"))
        spot = catalog.availability(self.api.get("/instance-availability", is_spot="true"))
        return catalog.offers(self.name, candidates, locations, on_demand, spot, spec.allocation)

    # -- infrastructure ---------------------------------------------------------------

    def prepare(self, spec: ComputeSpec, pool_id: str) -> Infrastructure:
        self._spec = spec
        identity = NodeIdentity.for_pool(1, pool_id)[0]
        name = naming.resource_name(pool_id)
        key_id = self._create_named("ssh-keys", name, {"key": identity.client.public_line})
        try:
            script = user_data_script(identity, username=USERNAME, ttl_seconds=spec.timeout)
            script_id = self._create_named("scripts", name, {"script": script})
        except BaseException:
            sweep_pool(self.api, pool_id, key_id=key_id)
            raise
        return VerdaInfrastructure(
            region=self.config.region or "auto",
            # The agent powers the node off when its client is gone; on Verda that stops
            # the work but not the bill (an offline instance bills): terminate deletes it.
            on_expire="poweroff",
            pool_id=pool_id,
            key_id=key_id,
            script_id=script_id,
            identity=identity,
        )

    def _create_named(self, kind: str, name: str, fields: dict[str, str]) -> str:
        """Create a key or script once; after an ambiguous failure, find it by name."""
        for _ in range(3):
            try:
                return self.api.create(f"/{kind}", {"name": name, **fields})
            except AmbiguousCreateError:
                # Same name *and* content: an earlier attempt's leftover holds other keys.
                for item in self.api.get(f"/{kind}"):
                    if item.get("name") == name and all(
                        item.get(k) == v for k, v in fields.items()
                    ):
                        return str(item["id"])
            except VerdaError as error:
                raise ProvisioningError(self.name, str(error)) from error
        raise ProvisioningError(self.name, f"could not create the {kind} {name}")

    def teardown(self, infra_: Infrastructure) -> None:
        assert isinstance(infra_, VerdaInfrastructure)
        if infra_.pool_id:
            sweep_pool(self.api, infra_.pool_id, key_id=infra_.key_id, script_id=infra_.script_id)

    # -- instances --------------------------------------------------------------------

    def _image(self, instance_type: str) -> str:
        if self.config.image:
            return self.config.image
        # The API lists only the images valid for the type (older GPUs need older ones).
        images = self.api.get("/images", instance_type=instance_type)
        chosen = next((i for i in images if i.get("is_default")), images[0] if images else None)
        if chosen is None:
            raise ProvisioningError(self.name, f"Verda lists no OS image for {instance_type}")
        return str(chosen["image_type"])

    def _body(
        self, infra_: VerdaInfrastructure, offer: Offer, image: str, node: int, spot: bool
    ) -> dict[str, Any]:
        pool = infra_.pool_id
        os_volume: dict[str, Any] = {
            "name": naming.os_volume_name(pool, node),
            "size": self.config.disk_gb,
        }
        body: dict[str, Any] = {
            "instance_type": offer.instance_type,
            "image": image,
            "hostname": naming.hostname(pool, node),
            "description": naming.description(pool),
            "location_code": offer.region,
            "ssh_key_ids": [infra_.key_id],
            "startup_script_id": infra_.script_id,
            "os_volume": os_volume,
            "is_spot": spot,
        }
        if self._send_tags:
            body["tags"] = _tags(pool)
        if spot:
            body["contract"] = "SPOT"
            # A preempted spot node would otherwise leave its OS volume, detached and billed.
            os_volume["on_spot_discontinue"] = "delete_permanently"
        else:
            body["pricing"] = "FIXED_PRICE"  # the bill matches the listed price
        return body

    def launch(self, infra_: Infrastructure, request: LaunchRequest) -> Sequence[Instance]:
        assert isinstance(infra_, VerdaInfrastructure)
        offer = request.offer
        kind = self._types.get(offer.instance_type)
        image = self._image(offer.instance_type)
        created: list[tuple[str, bool]] = []
        try:
            for node in range(request.count):
                last: CapacityError | None = None
                for spot in spot_attempts(request.spec.allocation, offer, node, request.count):
                    body = self._body(infra_, offer, image, node, spot)
                    try:
                        ident = create_instance(self.api, body, provider=self.name)
                    except CapacityError as error:
                        last = error
                        continue
                    finally:
                        self._send_tags = self._send_tags and "tags" in body
                    created.append((ident, spot))
                    break
                else:
                    assert last is not None
                    raise last
            self._await_accepted([i for i, _ in created])
        except BaseException:
            if created:  # all or nothing: what was made goes, volumes and all
                delete_instances(
                    self.api, [i for i, _ in created], provider=self.name, timeout=DELETE_TIMEOUT
                )
            raise
        spot_price = kind.price_spot if kind is not None else offer.price_spot
        return self.describe(
            [
                Instance(
                    id=ident,
                    provider=self.name,
                    state=InstanceState.PENDING,
                    instance_type=offer.instance_type,
                    spot=spot,
                    region=offer.region,
                    price_on_demand=offer.price_on_demand,
                    price_spot=spot_price,
                    tags=dict(request.tags),
                )
                for ident, spot in created
            ]
        )

    def _await_accepted(self, ids: Sequence[str]) -> None:
        """Wait for Verda to take or refuse each order: ``no_capacity`` is a capacity
        error, ``error`` a provisioning error (both after creation was accepted)."""
        deadline = time.monotonic() + ACCEPT_TIMEOUT
        delay = 0.2
        while True:
            statuses = {str(i["id"]): str(i.get("status")) for i in self.api.get("/instances")}
            failed = {i: statuses[i] for i in ids if statuses.get(i) in ("error", "no_capacity")}
            if any(s == "no_capacity" for s in failed.values()):
                raise CapacityError(self.name, f"Verda has no capacity for {sorted(failed)}")
            if failed:
                raise ProvisioningError(self.name, f"Verda failed to start {sorted(failed)}")
            # Not listed: discontinued already (describe says so), or not listed yet.
            if all(statuses.get(i, "unlisted") not in ("new", "ordered") for i in ids):
                return
            if time.monotonic() > deadline:
                return  # still queued: core's ready timeout decides
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)

    def describe(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        if not instances:
            return []
        listed = {str(i["id"]): i for i in self.api.get("/instances")}
        result = []
        for instance in instances:
            item = listed.get(instance.id)
            if item is None:
                try:
                    item = self.api.get(f"/instances/{instance.id}")
                except VerdaError as error:
                    if error.status in (400, 404):  # "Invalid instance id": gone
                        result.append(evolve(instance, state=InstanceState.TERMINATED))
                        continue
                    raise
            assert item is not None
            status = str(item.get("status"))
            ip = item.get("ip") or None
            state = _STATES.get(status, InstanceState.PENDING)
            if state is InstanceState.RUNNING and not ip:
                state = InstanceState.PENDING  # not reachable before it has an address
            result.append(evolve(instance, state=state, ip=ip, private_ip=ip))
        return result

    def terminate(self, instances: Sequence[Instance]) -> None:
        """Delete the instances with their volumes, wait until gone, then sweep the
        leftovers of every pool that has no live node any more."""
        ids = [i.id for i in instances]
        if not ids:
            return
        delete_instances(self.api, ids, provider=self.name, timeout=DELETE_TIMEOUT)
        pools = {i.tags.get(POOL_TAG) for i in instances} - {None, ""}
        live = {naming.pool_of_instance(i) for i in self.api.get("/instances")}
        for pool in sorted(p for p in pools if p is not None and p not in live):
            sweep_pool(self.api, pool)

    def list_by_tag(self, pool_id: str | None = None) -> Sequence[Instance]:
        found = []
        for item in self.api.get("/instances"):
            pool = naming.pool_of_instance(item)
            if pool is None or (pool_id is not None and pool != pool_id):
                continue
            status = str(item.get("status"))
            price = hourly_price(item.get("price_per_hour"))
            found.append(
                Instance(
                    id=str(item["id"]),
                    provider=self.name,
                    state=_STATES.get(status, InstanceState.PENDING),
                    instance_type=str(item.get("instance_type") or ""),
                    ip=item.get("ip") or None,
                    spot=bool(item.get("is_spot")),
                    region=str(item.get("location") or ""),
                    tags={MANAGED_TAG: "true", POOL_TAG: pool},
                    launched_at=epoch_seconds(item.get("created_at")),
                    # Verda reports the price the instance bills at (spot or not).
                    price_spot=price if item.get("is_spot") else None,
                    price_on_demand=None if item.get("is_spot") else price,
                )
            )
        return found

    # -- leftovers without instances (``skyward down --shared``) -----------------------

    def list_shared(self) -> list[tuple[str, str]]:
        """Per-pool keys, scripts and OS volumes of pools with no live node: what a
        client killed before its first node existed (or after its last) leaves."""
        live = {naming.pool_of_instance(i) for i in self.api.get("/instances")}
        found = []
        for kind in ("ssh-keys", "scripts"):
            for item in self.api.get(f"/{kind}"):
                name = str(item.get("name") or "")
                pool = name.removeprefix("skyward-") if name.startswith("skyward-") else None
                if pool and pool not in live:
                    found.append((kind, pool))
        for path in ("/volumes", "/volumes/trash"):
            for item in self.api.get(path):
                pool = naming.pool_of_volume(item)
                if pool and pool not in live and not item.get("instance_id"):
                    found.append(("volume", pool))
        return sorted(set(found))

    def teardown_shared(self) -> list[tuple[str, str]]:
        for pool in sorted({pool for _, pool in self.list_shared()}):
            sweep_pool(self.api, pool)
        return []

    def connect(self, infra_: Infrastructure, instance: Instance) -> SSHTransport:
        assert isinstance(infra_, VerdaInfrastructure)
        assert infra_.identity is not None
        return connect_launched(
            instance,
            infra_.identity,
            provider=self.name,
            username=USERNAME,
            connect_timeout=self.config.instance_timeout,
            pool_id=infra_.pool_id,
            spec=self._spec,
        )
