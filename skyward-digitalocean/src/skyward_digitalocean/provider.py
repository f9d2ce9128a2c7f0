"""The live DigitalOcean provider: offers, per-pool key and firewall, droplets, teardown."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from attrs import define, evolve, field, frozen

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
    Leftover,
)
from skyward.spec import ComputeSpec
from skyward.ssh.transport import SSHTransport
from skyward.ssh.user_data import NodeIdentity, user_data_script
from skyward_digitalocean import catalog, droplets
from skyward_digitalocean.api import Api, RateLimited, UnknownOutcome, expect, gone
from skyward_digitalocean.config import DigitalOcean
from skyward_digitalocean.firewall import client_cidr, firewall_body

__all__ = ["DigitalOceanInfrastructure", "DigitalOceanProvider"]

CANDIDATES = 8
"""How many of the cheapest matching sizes become offers (enough to fall back on)."""
MAX_USER_DATA = 64 * 1024
POLL_INTERVAL = 1.0
"""Fewest seconds between two listings of a pool: DigitalOcean allows 250 requests a
minute per token, and core polls faster than that while it waits."""
REDESTROY_AFTER = 30.0
"""A droplet still listed this long after its destroy gets another one (DigitalOcean has
dropped destroys of ``new`` droplets), never in a tight loop: repeated destroys have
tripped DigitalOcean's abuse monitors."""
TEARDOWN_WAIT = 120.0
"""How long teardown waits for the pool's droplets to be gone before it keeps the tag."""
RESOURCE_PREFIX = "skyward-"
MAX_CREATE_ATTEMPTS = 6
"""Tries of one key or firewall create whose answers were lost or rate limited."""


@frozen
class DigitalOceanInfrastructure(Infrastructure):
    pool_id: str = ""
    key_id: int = 0
    firewall_id: str = ""
    identity: NodeIdentity | None = None


def fingerprint(public_line: str) -> str:
    """DigitalOcean's key fingerprint: MD5 of the key blob, colon-separated."""
    digest = hashlib.md5(base64.b64decode(public_line.split()[1]), usedforsecurity=False)
    hexed = digest.hexdigest()
    return ":".join(hexed[i : i + 2] for i in range(0, len(hexed), 2))


def _image(given: str | None) -> str | int | None:
    """A slug as is; an image id as the integer the API expects (a numeric string would
    be read as a slug)."""
    return int(given) if given is not None and given.isdigit() else given


@define
class DigitalOceanProvider:
    config: DigitalOcean
    token: str = field(repr=False)
    name: str = "digitalocean"
    api: Api = field(init=False)
    poll_interval: float = POLL_INTERVAL
    redestroy_after: float = REDESTROY_AFTER
    teardown_wait: float = TEARDOWN_WAIT
    settle_seconds: float = droplets.SETTLE_SECONDS
    _sizes: dict[str, catalog.Size] = field(factory=dict)
    _spec: ComputeSpec | None = None
    _region_checked: bool = False
    _last_listing: dict[str, float] = field(factory=dict)
    _destroyed: dict[str, float] = field(factory=dict)
    _lock: threading.Lock = field(factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        self.api = Api(self.token)

    @property
    def _client(self) -> Any:
        return self.api.client

    # -- offers -----------------------------------------------------------------------

    def _check_region(self) -> None:
        """The region exists and takes new droplets (the first call: a bad token fails
        here, before anything is made)."""
        if self._region_checked:
            return
        regions = {
            r["slug"]: r
            for r in self.api.pages("regions.list", self._client.regions.list, "regions")
        }
        region = regions.get(self.config.region)
        if region is None or not region.get("available", True):
            open_ = sorted(slug for slug, r in regions.items() if r.get("available", True))
            problem = "does not exist" if region is None else "takes no new droplets now"
            raise ConfigurationError(
                "region",
                f"DigitalOcean region {self.config.region!r} {problem}",
                f"Use one of {', '.join(open_)}",
            )
        self._region_checked = True

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        self._check_region()
        sizes = [
            catalog.parse_size(item)
            for item in self.api.pages("sizes.list", self._client.sizes.list, "sizes")
        ]
        matching = catalog.matching_sizes(sizes, spec, self.config.region)[:CANDIDATES]
        with self._lock:
            self._sizes.update({s.slug: s for s in matching})
        return [
            Offer(
                provider=self.name,
                instance_type=s.slug,
                vcpus=s.vcpus,
                memory_gb=s.memory_gb,
                accelerator=s.accelerator,
                accelerator_count=s.accelerator_count,
                accelerator_memory_gb=s.accelerator_memory_gb,
                region=self.config.region,
                price_on_demand=s.price_hourly,
                price_spot=None,  # DigitalOcean has no spot market
                available=s.available,
                extra={"description": s.description, "disk_gb": f"{s.disk_gb:g}"},
            )
            for s in matching
        ]

    # -- infrastructure ---------------------------------------------------------------

    def prepare(self, spec: ComputeSpec, pool_id: str) -> Infrastructure:
        self._spec = spec
        self._check_region()
        cidr = client_cidr(self.config.ssh_cidr)
        identity = NodeIdentity.for_pool(1, pool_id)[0]
        tag = droplets.pool_tag(pool_id)
        name = f"{RESOURCE_PREFIX}{pool_id}"
        infra = DigitalOceanInfrastructure(
            region=self.config.region, on_expire="poweroff", pool_id=pool_id, identity=identity
        )
        try:
            # The firewall names the pool's tag, which must exist before it.
            self.api.call("tags.create", self._client.tags.create, {"name": tag})
            expect("tags.get", self.api.call("tags.get", self._client.tags.get, tag), "tag")
            key_id = self._create_key(name, identity.client.public_line)
            infra = evolve(infra, key_id=key_id)
            firewall_id = self._create_firewall(firewall_body(name, tag, cidr))
            return evolve(infra, firewall_id=firewall_id)
        except BaseException:
            with contextlib.suppress(Exception):
                self.teardown(infra)
            raise

    def _create_once(
        self,
        operation: str,
        create: Callable[..., Any],
        body: dict[str, Any],
        find: Callable[[], dict[str, Any] | None],
    ) -> dict[str, Any]:
        """``create(body)``, never twice: after a lost answer or a 429, ``find`` looks for
        what the first try may have made before another is sent."""
        for attempt in range(MAX_CREATE_ATTEMPTS):
            try:
                answer: dict[str, Any] = self.api.call(operation, create, body, write=True)
                return answer
            except RateLimited as limited:
                time.sleep(limited.wait)
            except UnknownOutcome:
                if attempt == MAX_CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(min(0.5 * 2**attempt, 10.0))
            found = find()
            if found is not None:
                return found
        raise ProvisioningError(self.name, f"{operation}: gave up after {attempt + 1} tries")

    def _create_key(self, name: str, public_line: str) -> int:
        client = self._client

        def find() -> dict[str, Any] | None:
            # By fingerprint, not by listing: key listing allows 10 a minute.
            key = cast(Any, fingerprint(public_line))
            found = self.api.call("ssh_keys.get", client.ssh_keys.get, key)
            return found if "ssh_key" in found else None

        body = {"name": name, "public_key": public_line}
        answer = self._create_once("ssh_keys.create", client.ssh_keys.create, body, find)
        return int(expect("ssh_keys.create", answer, "ssh_key")["id"])

    def _create_firewall(self, body: dict[str, Any]) -> str:
        client = self._client

        def find() -> dict[str, Any] | None:
            for firewall in self.api.pages("firewalls.list", client.firewalls.list, "firewalls"):
                if firewall.get("name") == body["name"]:
                    return {"firewall": firewall}
            return None

        answer = self._create_once("firewalls.create", client.firewalls.create, body, find)
        return str(expect("firewalls.create", answer, "firewall")["id"])

    def teardown(self, infra_: Infrastructure) -> None:
        """Delete the pool's firewall, key and tag, and check they are gone. Droplets the
        pool still has are destroyed again; while any remain, the tag and firewall stay,
        so ``skyward down`` can still find (and the firewall still guards) them."""
        assert isinstance(infra_, DigitalOceanInfrastructure)
        tag = droplets.pool_tag(infra_.pool_id)
        remaining = self._wait_gone(tag, self.teardown_wait)
        client = self._client
        leftovers = []
        if infra_.key_id:
            gone(self.api.call("ssh_keys.delete", client.ssh_keys.delete, cast(Any, infra_.key_id)))
            check = self.api.call("ssh_keys.get", client.ssh_keys.get, cast(Any, infra_.key_id))
            if "ssh_key" in check:
                leftovers.append(f"ssh key {infra_.key_id}")
        if remaining:
            raise ProvisioningError(
                self.name,
                f"{len(remaining)} droplet(s) of {infra_.pool_id} still exist; their tag {tag} "
                "and firewall were kept; run `skyward down --provider digitalocean`",
            )
        if infra_.firewall_id:
            fid = infra_.firewall_id
            gone(self.api.call("firewalls.delete", client.firewalls.delete, fid))
            if "firewall" in self.api.call("firewalls.get", client.firewalls.get, fid):
                leftovers.append(f"firewall {fid}")
        gone(self.api.call("tags.delete", client.tags.delete, tag))
        if leftovers:
            raise ProvisioningError(self.name, f"still present after teardown: {leftovers}")

    # -- droplets ---------------------------------------------------------------------

    def _wait_gone(self, tag: str, timeout: float) -> list[dict[str, Any]]:
        """Destroy what still carries the pool's tag and wait for it to go; what remains."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = [d for d in droplets.tagged(self.api, tag) if d.get("status") != "archive"]
            if not remaining or time.monotonic() > deadline:
                return remaining
            for droplet in remaining:
                self._destroy(str(droplet["id"]))
                self._redestroy_if_stuck(str(droplet["id"]))
            time.sleep(self.poll_interval)

    def _check_limit(self, count: int) -> None:
        """Refuse before creating anything when the account's droplet limit would be hit."""
        account = expect(
            "account.get", self.api.call("account.get", self._client.account.get), "account"
        )
        limit = account.get("droplet_limit")
        if not isinstance(limit, int):
            return
        client = self._client
        ids = {d["id"] for d in self.api.pages("droplets.list", client.droplets.list, "droplets")}
        ids |= {
            d["id"]
            for d in self.api.pages("droplets.list", client.droplets.list, "droplets", type="gpus")
        }
        if len(ids) + count > limit:
            raise CapacityError(
                self.name,
                f"{count} droplet(s) would exceed the account's droplet limit ({len(ids)} of "
                f"{limit} in use); ask DigitalOcean to raise it, or use fewer nodes",
            )

    def launch(self, infra_: Infrastructure, request: LaunchRequest) -> Sequence[Instance]:
        assert isinstance(infra_, DigitalOceanInfrastructure)
        assert infra_.identity is not None
        offer = request.offer
        size = self._sizes.get(offer.instance_type)
        username = self.config.username or "root"
        script = user_data_script(
            infra_.identity, username=username, ttl_seconds=request.spec.timeout
        )
        if len(script.encode()) > MAX_USER_DATA:
            raise ProvisioningError(self.name, "user-data is over DigitalOcean's 64 KiB limit")
        tag = droplets.pool_tag(request.pool_id)
        body: dict[str, Any] = {
            "size": offer.instance_type,
            "image": _image(self.config.image) or catalog.base_image(size),
            "region": self.config.region,
            "ssh_keys": [infra_.key_id],  # without one, DigitalOcean mails a root password
            "tags": [droplets.MANAGED, tag],
            "user_data": script,
            "monitoring": False,
            "backups": False,
            "ipv6": False,
        }
        if self.config.vpc_uuid:
            body["vpc_uuid"] = self.config.vpc_uuid
        names = [f"{request.pool_id}-{n}" for n in range(request.count)]
        self._check_limit(request.count)
        try:
            made = droplets.create_droplets(self.api, body, names, tag, settle=self.settle_seconds)
        except BaseException:
            # All or nothing: whatever a failed launch made goes, found by its tag.
            with contextlib.suppress(Exception):
                for droplet in droplets.tagged(self.api, tag):
                    self._destroy(str(droplet["id"]), force=True)
            raise
        tags = dict(request.tags)
        return self.describe(
            [
                Instance(
                    id=str(d["id"]),
                    provider=self.name,
                    state=InstanceState.PENDING,
                    instance_type=offer.instance_type,
                    region=self.config.region,
                    price_on_demand=offer.price_on_demand,
                    tags=tags,
                )
                for d in made
            ]
        )

    def _pace(self, tag: str) -> None:
        with self._lock:
            last = self._last_listing.get(tag, 0.0)
        wait = last + self.poll_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self._lock:
            self._last_listing[tag] = time.monotonic()

    def describe(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        if not instances:
            return []
        found: dict[str, dict[str, Any]] = {}
        for pool in {i.tags.get(POOL_TAG, "") for i in instances if i.tags.get(POOL_TAG)}:
            tag = droplets.pool_tag(pool)
            self._pace(tag)
            found.update({str(d["id"]): d for d in droplets.tagged(self.api, tag, gpus=False)})
        for instance in instances:
            if instance.id not in found:  # untagged since, or a GPU droplet: ask for it
                answer = self.api.call("droplets.get", self._client.droplets.get, int(instance.id))
                if "droplet" in answer:
                    found[instance.id] = answer["droplet"]
        result = []
        for instance in instances:
            item = found.get(instance.id)
            if item is None or item.get("status") == "archive":
                result.append(evolve(instance, state=InstanceState.TERMINATED))
                continue
            self._redestroy_if_stuck(instance.id)
            result.append(
                evolve(
                    instance,
                    state=droplets.droplet_state(item),
                    instance_type=str(item.get("size_slug") or instance.instance_type),
                    ip=droplets.public_ip(item),
                    private_ip=droplets.private_ip(item),
                )
            )
        return result

    def _redestroy_if_stuck(self, droplet_id: str) -> None:
        with self._lock:
            when = self._destroyed.get(droplet_id)
        if when is not None and time.monotonic() - when >= self.redestroy_after:
            self._destroy(droplet_id, force=True)

    def _destroy(self, droplet_id: str, *, force: bool = False) -> None:
        with self._lock:
            if not force and droplet_id in self._destroyed:
                return
            self._destroyed[droplet_id] = time.monotonic()
        droplets.destroy(self.api, int(droplet_id))

    def terminate(self, instances: Sequence[Instance]) -> None:
        """Destroy each droplet (a powered-off droplet still bills, so power-off is never
        enough); one already gone is fine."""
        errors: list[Exception] = []
        for instance in instances:
            try:
                self._destroy(instance.id, force=True)
            except Exception as error:  # keep going: every other droplet still goes
                errors.append(error)
        if errors:
            raise errors[0]

    def list_by_tag(self, pool_id: str | None = None) -> Sequence[Instance]:
        tag = droplets.MANAGED if pool_id is None else droplets.pool_tag(pool_id)
        return [
            Instance(
                id=str(d["id"]),
                provider=self.name,
                state=droplets.droplet_state(d),
                instance_type=str(d.get("size_slug", "")),
                ip=droplets.public_ip(d),
                private_ip=droplets.private_ip(d),
                region=str((d.get("region") or {}).get("slug", "")),
                tags=droplets.instance_tags(d.get("tags") or []),
                launched_at=epoch_seconds(d.get("created_at")),
                price_on_demand=hourly_price((d.get("size") or {}).get("price_hourly")),
            )
            for d in droplets.tagged(self.api, tag)
            if d.get("status") in ("new", "active", "off")
        ]

    # -- what dead clients leave (``skyward down``) -------------------------------------

    def _leftovers(self) -> list[tuple[str, str, str]]:
        """(kind, id, pool id) of every per-pool key, firewall and tag Skyward made, found by
        name (``skyward-sky-…``) and tag (``skyward:pool:…``); one listing of each (keys
        may be listed only 10 times a minute)."""
        client = self._client
        prefix = f"{RESOURCE_PREFIX}sky-"
        found = [
            ("ssh-key", str(k["id"]), str(k["name"]).removeprefix(RESOURCE_PREFIX))
            for k in self.api.pages("ssh_keys.list", client.ssh_keys.list, "ssh_keys")
            if str(k.get("name", "")).startswith(prefix)
        ]
        found += [
            ("firewall", str(f["id"]), str(f["name"]).removeprefix(RESOURCE_PREFIX))
            for f in self.api.pages("firewalls.list", client.firewalls.list, "firewalls")
            if str(f.get("name", "")).startswith(prefix)
        ]
        pool_prefix = droplets.pool_tag("")
        found += [
            ("tag", str(t["name"]), str(t["name"]).removeprefix(pool_prefix))
            for t in self.api.pages("tags.list", client.tags.list, "tags")
            if str(t.get("name", "")).startswith(pool_prefix)
        ]
        return found

    def list_leftovers(self, pool_id: str | None = None) -> list[Leftover]:
        """Per-pool keys, firewalls and tags left behind (of one pool, or of any)."""
        return [
            Leftover(kind, ident, "", pool)
            for kind, ident, pool in self._leftovers()
            if pool_id is None or pool == pool_id
        ]

    def remove_leftovers(self, leftovers: Sequence[Leftover]) -> list[tuple[Leftover, str]]:
        """Remove them (firewalls first, tags last: a firewall names its tag), except what
        belongs to a pool that still has droplets this sweep did not destroy."""
        with self._lock:
            destroyed = set(self._destroyed)  # by ``skyward down`` just before: going
        live = {
            i.tags.get(POOL_TAG, "")
            for i in self.list_by_tag()
            if i.tags.get(MANAGED_TAG) and i.id not in destroyed
        }
        client = self._client
        order = {"firewall": 0, "ssh-key": 1, "tag": 2}
        failed: list[tuple[Leftover, str]] = []
        for item in sorted(leftovers, key=lambda i: order.get(i.kind, 9)):
            if item.pool in live:
                failed.append((item, "its pool still has droplets"))
                continue
            try:
                if item.kind == "ssh-key":
                    key = cast(Any, int(item.id))
                    gone(self.api.call("ssh_keys.delete", client.ssh_keys.delete, key))
                elif item.kind == "firewall":
                    gone(self.api.call("firewalls.delete", client.firewalls.delete, item.id))
                elif item.kind == "tag":
                    gone(self.api.call("tags.delete", client.tags.delete, item.id))
                else:
                    failed.append((item, "not something Skyward makes on DigitalOcean"))
            except ProvisioningError as error:
                failed.append((item, str(error)))
        return failed

    def connect(self, infra_: Infrastructure, instance: Instance) -> SSHTransport:
        assert isinstance(infra_, DigitalOceanInfrastructure)
        assert infra_.identity is not None
        return connect_launched(
            instance,
            infra_.identity,
            provider=self.name,
            username=self.config.username or "root",
            connect_timeout=self.config.instance_timeout,
            pool_id=instance.tags.get(POOL_TAG, ""),
            spec=self._spec,
        )
