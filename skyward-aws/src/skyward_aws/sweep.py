"""``skyward down`` for AWS: every region, every kind of resource Skyward makes there.

A dead client may have used any region, so the sweep asks EC2 for the account's enabled
regions and scans them all at once (one thread per region, a handful of tag-filtered
``Describe*`` calls each). What it finds, by the ``skyward:managed`` tag:

- instances (terminated by the caller first);
- key pairs and launch templates (one per pool; normally deleted at teardown);
- EBS volumes in the ``available`` state (made by a launch template, left when an
  instance died before attaching them or was stopped, not terminated);
- security groups that no instance uses any more (only in a sweep of every pool).

IAM roles and buckets are global and may hold data: they stay behind ``--shared``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from skyward.provider import MANAGED_TAG, POOL_TAG, Leftover

__all__ = ["UNSCANNED", "find_leftovers", "in_every_region", "remove_leftover"]

UNSCANNED = "unscanned-region"
_LIVE_STATES = ["pending", "running", "stopping", "stopped"]
_MAX_THREADS = 16
# How long removing a security group waits for instances still shutting down to let go.
GROUP_RELEASE_TIMEOUT = 180.0

T = TypeVar("T")


def _filters(pool_id: str | None) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = [{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}]
    if pool_id is not None:
        filters.append({"Name": f"tag:{POOL_TAG}", "Values": [pool_id]})
    return filters


def _pool(tags: Sequence[dict[str, str]] | None) -> str:
    return next((t["Value"] for t in tags or () if t["Key"] == POOL_TAG), "")


def enabled_regions(ec2: Any) -> list[str]:
    """The regions this account may have used (opt-in regions only once enabled)."""
    return sorted(r["RegionName"] for r in ec2.describe_regions()["Regions"])


def in_every_region(
    regions: Sequence[str], scan: Callable[[str], T]
) -> dict[str, T | BaseException]:
    """``scan(region)`` for every region in parallel; a failure is kept, not raised."""

    def safe(region: str) -> T | BaseException:
        try:
            return scan(region)
        except (ClientError, BotoCoreError, OSError) as error:
            return error

    with ThreadPoolExecutor(max_workers=max(1, min(_MAX_THREADS, len(regions)))) as pool:
        return dict(zip(regions, pool.map(safe, regions), strict=True))


def find_leftovers(ec2: Any, region: str, pool_id: str | None) -> list[Leftover]:
    """Key pairs, launch templates, unattached volumes and (sweeping every pool) unused
    security groups that Skyward made in ``region``."""
    found: list[Leftover] = []
    for key in ec2.describe_key_pairs(Filters=_filters(pool_id))["KeyPairs"]:
        found.append(Leftover("key-pair", key["KeyName"], region, _pool(key.get("Tags"))))
    pages = ec2.get_paginator("describe_launch_templates").paginate(Filters=_filters(pool_id))
    for page in pages:
        for template in page["LaunchTemplates"]:
            found.append(
                Leftover(
                    "launch-template",
                    template["LaunchTemplateId"],
                    region,
                    _pool(template.get("Tags")),
                )
            )
    volumes = [*_filters(pool_id), {"Name": "status", "Values": ["available"]}]
    for page in ec2.get_paginator("describe_volumes").paginate(Filters=volumes):
        for volume in page["Volumes"]:
            found.append(Leftover("volume", volume["VolumeId"], region, _pool(volume.get("Tags"))))
    if pool_id is None:
        found += _unused_groups(ec2, region)
    return found


def _unused_groups(ec2: Any, region: str) -> list[Leftover]:
    groups = ec2.describe_security_groups(Filters=_filters(None))["SecurityGroups"]
    if not groups:
        return []
    used: set[str] = set()
    instances = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": "instance.group-id", "Values": [g["GroupId"] for g in groups]},
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped"],
            },
        ]
    )
    for page in instances:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                used |= {g["GroupId"] for g in instance.get("SecurityGroups", [])}
    return [
        Leftover("security-group", g["GroupId"], region) for g in groups if g["GroupId"] not in used
    ]


def remove_leftover(ec2: Any, leftover: Leftover) -> str:
    """Delete one leftover; returns why it could not be ('' when it was, or was gone)."""
    try:
        if leftover.kind == "key-pair":
            ec2.delete_key_pair(KeyName=leftover.id)
        elif leftover.kind == "launch-template":
            ec2.delete_launch_template(LaunchTemplateId=leftover.id)
        elif leftover.kind == "volume":
            ec2.delete_volume(VolumeId=leftover.id)
        elif leftover.kind == "security-group":
            return _delete_group(ec2, leftover.id)
        else:
            return "not something the AWS provider made"
    except ClientError as error:
        code = error.response["Error"]["Code"]
        if code.endswith(".NotFound") or code.endswith("NotFoundException"):
            return ""
        return f"{code}: {error.response['Error'].get('Message', '')}".strip()
    return ""


def _delete_group(ec2: Any, group_id: str) -> str:
    """Instances just terminated keep their network interfaces (and so the group) until
    they are gone: wait for them, within a bound, then delete."""
    deadline = time.monotonic() + GROUP_RELEASE_TIMEOUT
    while True:
        try:
            ec2.delete_security_group(GroupId=group_id)
            return ""
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "InvalidGroup.NotFound":
                return ""
            if code != "DependencyViolation" or time.monotonic() > deadline:
                return f"{code}: {error.response['Error'].get('Message', '')}".strip()
            if not _still_releasing(ec2, group_id):
                return f"in use: {error.response['Error'].get('Message', '')}".strip()
        time.sleep(5)


def _still_releasing(ec2: Any, group_id: str) -> bool:
    instances = ec2.describe_instances(
        Filters=[
            {"Name": "instance.group-id", "Values": [group_id]},
            {"Name": "instance-state-name", "Values": ["shutting-down"]},
        ]
    )["Reservations"]
    return bool(instances)


def live_filters(pool_id: str | None) -> list[dict[str, Any]]:
    """describe_instances filters for the instances a sweep terminates."""
    return [*_filters(pool_id), {"Name": "instance-state-name", "Values": _LIVE_STATES}]
