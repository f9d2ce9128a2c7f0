"""The live AWS provider: offers, infrastructure, EC2 Fleet launches, teardown."""

from __future__ import annotations

import base64
import contextlib
import functools
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from attrs import define, evolve, field, frozen
from botocore.exceptions import ClientError

from skyward.errors import ProvisioningError
from skyward.instance_ssh import connect_launched
from skyward.offers import Offer
from skyward.provider import (
    MANAGED_TAG,
    POOL_TAG,
    AccessCheck,
    Infrastructure,
    Instance,
    InstanceState,
    LaunchRequest,
    Leftover,
)
from skyward.spec import ComputeSpec
from skyward.ssh.hosts import SSHHost
from skyward.ssh.transport import SSHTransport
from skyward.ssh.user_data import NodeIdentity, user_data_script
from skyward.volumes import S3Volume, Volume
from skyward_aws import amis, catalog, infra, pricing, sweep
from skyward_aws.config import AWS
from skyward_aws.fleet import launch_fleet
from skyward_aws.session import Clients, cache_dir
from skyward_aws.ssm import open_tunnel

__all__ = ["AWSInfrastructure", "AWSProvider"]

# How many of the smallest matching types get priced: enough to find a cheap one and
# to fall back on capacity errors, few enough to keep pricing at one call.
CANDIDATES = 8
_STATES = {
    "pending": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "stopping": InstanceState.STOPPING,
    "stopped": InstanceState.STOPPING,
    "shutting-down": InstanceState.STOPPING,
    "terminated": InstanceState.TERMINATED,
}


@frozen
class AWSInfrastructure(Infrastructure):
    subnets: tuple[tuple[str, str], ...] = ()
    """(subnet, availability zone) pairs to launch in."""
    security_group_id: str = ""
    key_name: str = ""
    identity: NodeIdentity | None = None
    instance_profile_arn: str | None = None
    username: str = "ubuntu"


@define
class AWSProvider:
    config: AWS
    name: str = "aws"
    clients: Clients = field(init=False)
    _types: dict[str, catalog.InstanceType] = field(factory=dict)
    _zones: dict[str, set[str]] = field(factory=dict)
    _usernames: dict[str, str] = field(factory=dict)
    _spec: ComputeSpec | None = None
    _lock: threading.Lock = field(factory=threading.Lock)
    _unscanned: dict[str, str] = field(factory=dict)
    """Regions a sweep could not scan, with why (reported as leftovers)."""

    def __attrs_post_init__(self) -> None:
        self.clients = Clients(self.config.region)
        self.clients.check_credentials()

    # -- offers -----------------------------------------------------------------------

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        ec2 = self.clients("ec2")
        every = catalog.load_instance_types(ec2, self.config.region, cache_dir())
        candidates = catalog.matching_types(every, spec)[: CANDIDATES * 4]
        if not candidates:
            return []
        zones = catalog.load_offerings(ec2, [t.name for t in candidates])
        if self.config.subnet_id is None:
            candidates = [t for t in candidates if zones.get(t.name)][:CANDIDATES]
        else:
            candidates = candidates[:CANDIDATES]
        if not candidates:
            return []
        names = [t.name for t in candidates]
        on_demand = pricing.on_demand_prices(
            self.clients("pricing", pricing.PRICING_REGION), self.config.region, names, cache_dir()
        )
        spot = pricing.spot_prices(ec2, self.config.region, [t.name for t in candidates if t.spot])
        with self._lock:
            self._types.update({t.name: t for t in candidates})
            self._zones.update(zones)
        return [
            Offer(
                provider=self.name,
                instance_type=t.name,
                vcpus=t.vcpus,
                memory_gb=t.memory_gb,
                accelerator=t.accelerator,
                accelerator_count=t.accelerator_count,
                accelerator_memory_gb=t.accelerator_memory_gb,
                region=self.config.region,
                architecture=t.architecture,
                price_on_demand=on_demand.get(t.name),
                price_spot=spot.get(t.name),
            )
            for t in candidates
        ]

    # -- infrastructure ---------------------------------------------------------------

    def prepare(self, spec: ComputeSpec, pool_id: str) -> Infrastructure:
        self._spec = spec
        ec2 = self.clients("ec2")
        subnets = infra.public_subnets(ec2, self.config.subnet_id)
        ssm = self.config.use_ssm
        group = self.config.security_group_id or infra.ensure_security_group(
            ec2, subnets[0][2], None if ssm else infra.client_cidr(self.config.ssh_cidr)
        )
        profile = self.config.instance_profile_arn
        buckets = [v.bucket for v in spec.volumes if isinstance(v, S3Volume)]
        if profile is None and (buckets or ssm):
            profile = infra.ensure_instance_profile(self.clients("iam"), buckets, ssm=ssm)
            if buckets:
                infra.ensure_bucket(self.clients("s3"), self.clients("sts"), self.config.region)
        identity = NodeIdentity.for_pool(1, pool_id)[0]
        key_name = f"skyward-{pool_id}"
        tags = {MANAGED_TAG: "true", POOL_TAG: pool_id}
        ec2.import_key_pair(
            KeyName=key_name,
            PublicKeyMaterial=identity.client.public_line.encode(),
            TagSpecifications=[infra.tag_specification("key-pair", tags)],
        )
        return AWSInfrastructure(
            region=self.config.region,
            on_expire="poweroff",  # instance-initiated shutdown terminates the instance
            subnets=tuple((s, z) for s, z, _ in subnets),
            security_group_id=group,
            key_name=key_name,
            identity=identity,
            instance_profile_arn=profile,
        )

    def teardown(self, infra_: Infrastructure) -> None:
        assert isinstance(infra_, AWSInfrastructure)
        ec2 = self.clients("ec2")
        if infra_.key_name:
            ec2.delete_key_pair(KeyName=infra_.key_name)
        pool_id = infra_.key_name.removeprefix("skyward-")
        leftovers = ec2.describe_volumes(
            Filters=[{"Name": f"tag:{POOL_TAG}", "Values": [pool_id]}]
        )["Volumes"]
        for volume in leftovers:
            if volume.get("State") == "available":
                ec2.delete_volume(VolumeId=volume["VolumeId"])

    # -- instances --------------------------------------------------------------------

    def launch(self, infra_: Infrastructure, request: LaunchRequest) -> Sequence[Instance]:
        assert isinstance(infra_, AWSInfrastructure)
        assert infra_.identity is not None
        ec2 = self.clients("ec2")
        offer = request.offer
        kind = self._types.get(offer.instance_type)
        architecture = kind.architecture if kind else offer.architecture
        ami, username = amis.resolve_ami(
            self.clients("ssm"),
            ec2,
            self.config.ami,
            architecture,
            gpu=offer.accelerator is not None
            and (kind is None or kind.accelerator_vendor != "AWS"),
        )
        username = self.config.username or username
        tags = dict(request.tags)
        zones = self._zones.get(offer.instance_type)
        overrides = [
            {"InstanceType": offer.instance_type, "SubnetId": subnet}
            for subnet, zone in infra_.subnets
            if zones is None or zone in zones
        ]
        if not overrides:
            raise ProvisioningError(
                self.name, f"{offer.instance_type} is not sold in any subnet's AZ"
            )
        data = launch_template_data(infra_, request.spec, ami, username, tags)
        template = ec2.create_launch_template(
            LaunchTemplateName=f"skyward-{request.pool_id}",
            LaunchTemplateData=data,
            TagSpecifications=[infra.tag_specification("launch-template", tags)],
        )["LaunchTemplate"]["LaunchTemplateId"]
        try:
            launched = launch_fleet(
                ec2,
                template_id=template,
                overrides=overrides,
                count=request.count,
                allocation=request.spec.allocation,
                offer=offer,
                strategy=self.config.allocation_strategy,
                tags=[infra.tag_specification("instance", tags)],
            )
        finally:
            ec2.delete_launch_template(LaunchTemplateId=template)
        with self._lock:
            for item in launched:
                self._usernames[item.instance_id] = username
        return self.describe(
            [
                Instance(
                    id=i.instance_id,
                    provider=self.name,
                    state=InstanceState.PENDING,
                    instance_type=offer.instance_type,
                    spot=i.spot,
                    region=self.config.region,
                    price_on_demand=offer.price_on_demand,
                    price_spot=offer.price_spot,
                    tags=tags,
                )
                for i in launched
            ]
        )

    def describe(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        if not instances:
            return []
        found: dict[str, dict[str, Any]] = {}
        ids = [i.id for i in instances]
        pages = self.clients("ec2").get_paginator("describe_instances").paginate(InstanceIds=ids)
        for page in pages:
            for reservation in page["Reservations"]:
                for item in reservation["Instances"]:
                    found[item["InstanceId"]] = item
        result = []
        for instance in instances:
            item = found.get(instance.id)
            if item is None:
                result.append(evolve(instance, state=InstanceState.TERMINATED))
                continue
            result.append(
                evolve(
                    instance,
                    state=_STATES.get(item["State"]["Name"], InstanceState.PENDING),
                    instance_type=item.get("InstanceType", instance.instance_type),
                    ip=item.get("PublicIpAddress") or item.get("PrivateIpAddress"),
                    private_ip=item.get("PrivateIpAddress"),
                    zone=(item.get("Placement") or {}).get("AvailabilityZone"),
                )
            )
        return result

    def terminate(self, instances: Sequence[Instance]) -> None:
        by_region: dict[str, list[str]] = {}
        for instance in instances:
            by_region.setdefault(instance.region or self.config.region, []).append(instance.id)
        for region, ids in by_region.items():
            try:
                self.clients("ec2", region).terminate_instances(InstanceIds=ids)
            except ClientError as error:
                if error.response["Error"]["Code"] != "InvalidInstanceID.NotFound":
                    raise

    # -- skyward doctor ---------------------------------------------------------------

    def check_access(self) -> list[AccessCheck]:
        """The identity, and a dry run of each call a pool makes (see :mod:`.doctor`)."""
        from skyward_aws.doctor import check_access

        return check_access(self.clients, self.config.region)

    # -- skyward down: every region, every kind of resource -------------------------------

    def _region_clients(self) -> dict[str, Any]:
        # boto3 makes clients thread-unsafely: make them here, use them in parallel.
        regions = sweep.enabled_regions(self.clients("ec2"))
        return {region: self.clients("ec2", region) for region in regions}

    def list_by_tag(self, pool_id: str | None = None) -> Sequence[Instance]:
        """Skyward's instances (of one pool, or any) in every enabled region, scanned in
        parallel. A region that cannot be scanned is reported by :meth:`list_leftovers`."""
        clients = self._region_clients()

        def scan(region: str) -> list[Instance]:
            pages = (
                clients[region]
                .get_paginator("describe_instances")
                .paginate(Filters=sweep.live_filters(pool_id))
            )
            return [
                Instance(
                    id=item["InstanceId"],
                    provider=self.name,
                    state=_STATES.get(item["State"]["Name"], InstanceState.PENDING),
                    instance_type=item.get("InstanceType", ""),
                    ip=item.get("PublicIpAddress") or item.get("PrivateIpAddress"),
                    region=region,
                    tags={t["Key"]: t["Value"] for t in item.get("Tags", [])},
                    spot=item.get("InstanceLifecycle") == "spot",
                    launched_at=_epoch(item.get("LaunchTime")),
                )
                for page in pages
                for reservation in page["Reservations"]
                for item in reservation["Instances"]
            ]

        found: list[Instance] = []
        for region, result in sweep.in_every_region(sorted(clients), scan).items():
            if isinstance(result, BaseException):
                self._unscanned[region] = str(result)
            else:
                found += self._priced(clients[region], region, result)
        return found

    def _priced(self, ec2: Any, region: str, instances: list[Instance]) -> list[Instance]:
        """The instances with what they bill per hour (``skyward ls`` shows cost so far).
        Best effort: a price that cannot be read leaves the instance unpriced, never fails
        the listing (``skyward down`` relies on it)."""
        if not instances:
            return instances
        types = sorted({i.instance_type for i in instances if i.instance_type})
        try:
            pricing_client = self.clients("pricing", pricing.PRICING_REGION)
            on_demand = pricing.on_demand_prices(pricing_client, region, types, cache_dir())
        except Exception:
            on_demand = {}
        spot_types = [i.instance_type for i in instances if i.spot]
        try:
            spot = pricing.spot_prices(ec2, region, spot_types) if spot_types else {}
        except Exception:
            spot = {}
        return [
            evolve(
                i,
                price_on_demand=on_demand.get(i.instance_type),
                price_spot=spot.get(i.instance_type),
            )
            for i in instances
        ]

    def list_leftovers(self, pool_id: str | None = None) -> list[Leftover]:
        """Key pairs, launch templates, unattached volumes and unused security groups
        Skyward made, in every enabled region (see :mod:`skyward_aws.sweep`)."""
        clients = self._region_clients()
        found: list[Leftover] = []
        results = sweep.in_every_region(
            sorted(clients), lambda region: sweep.find_leftovers(clients[region], region, pool_id)
        )
        for region, result in results.items():
            if isinstance(result, BaseException):
                self._unscanned[region] = str(result)
            else:
                found += result
        found += [Leftover(sweep.UNSCANNED, region, region) for region in sorted(self._unscanned)]
        return found

    def remove_leftovers(self, leftovers: Sequence[Leftover]) -> list[tuple[Leftover, str]]:
        failed: list[tuple[Leftover, str]] = []
        by_region: dict[str, list[Leftover]] = {}
        for leftover in leftovers:
            if leftover.kind == sweep.UNSCANNED:
                reason = self._unscanned.get(leftover.id, "the region could not be scanned")
                failed.append((leftover, f"not scanned: {reason}"))
            else:
                by_region.setdefault(leftover.where or self.config.region, []).append(leftover)
        clients = {region: self.clients("ec2", region) for region in by_region}
        # Groups last: a template or volume may still name one.
        order = {"launch-template": 0, "key-pair": 1, "volume": 2, "security-group": 3}

        def remove(region: str) -> list[tuple[Leftover, str]]:
            problems = []
            for item in sorted(by_region[region], key=lambda i: order.get(i.kind, 9)):
                reason = sweep.remove_leftover(clients[region], item)
                if reason:
                    problems.append((item, reason))
            return problems

        for region, result in sweep.in_every_region(sorted(by_region), remove).items():
            if isinstance(result, BaseException):
                failed += [(item, str(result)) for item in by_region[region]]
            else:
                failed += result
        return failed

    # -- shared infrastructure (``skyward down --shared``) -----------------------------

    def list_shared(self) -> list[tuple[str, str]]:
        """Shared resources Skyward made here: (kind, id), found by tag or name."""
        found = [
            ("security-group", g["GroupId"])
            for g in self.clients("ec2").describe_security_groups(
                Filters=[{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}]
            )["SecurityGroups"]
        ]
        iam = self.clients("iam")
        with contextlib.suppress(ClientError):
            iam.get_instance_profile(InstanceProfileName=infra.PROFILE_NAME)
            found.append(("instance-profile", infra.PROFILE_NAME))
        with contextlib.suppress(ClientError):
            iam.get_role(RoleName=infra.ROLE_NAME)
            found.append(("iam-role", infra.ROLE_NAME))
        prefix = "skyward-"
        suffix = f"-{self.config.region}"
        found += [
            ("s3-bucket", b["Name"])
            for b in self.clients("s3").list_buckets().get("Buckets", [])
            if b["Name"].startswith(prefix) and b["Name"].endswith(suffix)
        ]
        return found

    def teardown_shared(self) -> list[tuple[str, str]]:
        """Delete the shared resources; a bucket only when empty. Returns what was kept."""
        kept = []
        iam = self.clients("iam")
        for kind, ident in self.list_shared():
            try:
                if kind == "security-group":
                    self.clients("ec2").delete_security_group(GroupId=ident)
                elif kind == "instance-profile":
                    with contextlib.suppress(ClientError):
                        iam.remove_role_from_instance_profile(
                            InstanceProfileName=ident, RoleName=infra.ROLE_NAME
                        )
                    iam.delete_instance_profile(InstanceProfileName=ident)
                elif kind == "iam-role":
                    for policy in iam.list_role_policies(RoleName=ident)["PolicyNames"]:
                        iam.delete_role_policy(RoleName=ident, PolicyName=policy)
                    attached = iam.list_attached_role_policies(RoleName=ident)
                    for managed in attached["AttachedPolicies"]:
                        iam.detach_role_policy(RoleName=ident, PolicyArn=managed["PolicyArn"])
                    iam.delete_role(RoleName=ident)
                elif kind == "s3-bucket":
                    s3 = self.clients("s3")
                    if s3.list_objects_v2(Bucket=ident, MaxKeys=1).get("KeyCount", 0):
                        kept.append((kind, ident))  # never delete a user's data
                        continue
                    s3.delete_bucket(Bucket=ident)
            except ClientError:
                kept.append((kind, ident))  # still in use (a running pool's group, ...)
        return kept

    def connect(self, infra_: Infrastructure, instance: Instance) -> SSHTransport:
        assert isinstance(infra_, AWSInfrastructure)
        assert infra_.identity is not None
        username = self._usernames.get(instance.id, self.config.username or "ubuntu")
        ssm = self.config.use_ssm

        def tunnel(host: SSHHost) -> Callable[[], socket.socket]:
            return functools.partial(
                open_tunnel,
                self.clients("ssm"),
                instance.id,
                host.port or 22,
                timeout=min(60.0, float(self.config.instance_timeout)),
            )

        return connect_launched(
            instance,
            infra_.identity,
            provider=self.name,
            username=username,
            connect_timeout=self.config.instance_timeout,
            pool_id=instance.tags.get(POOL_TAG, ""),
            spec=self._spec,
            address=instance.id if ssm else None,
            opener=tunnel if ssm else None,
        )


def launch_template_data(
    infra_: AWSInfrastructure, spec: ComputeSpec, ami: str, username: str, tags: dict[str, str]
) -> dict[str, Any]:
    """What every node of a pool is launched with.

    IMDSv2 only; a shutdown from inside (the watchdog, the pool's lifetime) terminates the
    instance; user-data carries the pinned host key, the pool's client key and the timer.
    """
    assert infra_.identity is not None
    script = user_data_script(infra_.identity, username=username, ttl_seconds=spec.timeout)
    data: dict[str, Any] = {
        "ImageId": ami,
        "KeyName": infra_.key_name,
        "SecurityGroupIds": [infra_.security_group_id],
        "UserData": base64.b64encode(script.encode()).decode(),
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "InstanceInitiatedShutdownBehavior": "terminate",
        "BlockDeviceMappings": _block_devices(spec),
        "TagSpecifications": [
            infra.tag_specification("instance", tags),
            infra.tag_specification("volume", tags),
        ],
    }
    if infra_.instance_profile_arn:
        data["IamInstanceProfile"] = {"Arn": infra_.instance_profile_arn}
    return data


def _block_devices(spec: ComputeSpec) -> list[dict[str, Any]]:
    """One EBS volume per ``Volume``, in the instance's AZ, deleted with the instance."""
    devices = []
    letters = "fghijklmnop"
    for index, volume in enumerate(v for v in spec.volumes if isinstance(v, Volume)):
        devices.append(
            {
                "DeviceName": f"/dev/sd{letters[index]}",
                "Ebs": {
                    "VolumeSize": volume.size_gb,
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                },
            }
        )
    return devices


def _epoch(when: object) -> float | None:
    """boto3 parses ``LaunchTime`` into a timezone-aware datetime."""
    timestamp = getattr(when, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else None
