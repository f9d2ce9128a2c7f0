"""``skyward down`` for AWS: every enabled region, scanned in parallel, and every kind of
resource Skyward makes (instances, key pairs, launch templates, unattached volumes, unused
security groups); anything that cannot be removed makes it exit 1 and say what.

Resources are seeded straight into moto's server, tagged as a killed client's pools would
have left them, in three regions; untagged look-alikes of the user's must survive.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from skyward.cli import main
from tests.aws_fakes import AwsEnv

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
AMI = "ami-12c6146b"  # one of moto's built-in images


def _tags(kind: str, pool: str | None) -> list[dict[str, Any]]:
    tags = [{"Key": "skyward:managed", "Value": "true"}]
    if pool is not None:
        tags.append({"Key": "skyward:pool", "Value": pool})
    return [{"ResourceType": kind, "Tags": tags}]


def seed(region: str, pool: str) -> dict[str, str]:
    """What a killed client's pool leaves in ``region``; returns the ids."""
    ec2 = boto3.client("ec2", region_name=region)
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(
        GroupName=f"skyward-sg-{pool}", Description="x", VpcId=vpc,
        TagSpecifications=_tags("security-group", None),
    )["GroupId"]  # fmt: skip
    instance = ec2.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro",
        TagSpecifications=_tags("instance", pool), SecurityGroupIds=[group],
    )["Instances"][0]["InstanceId"]  # fmt: skip
    ec2.create_key_pair(KeyName=f"skyward-{pool}", TagSpecifications=_tags("key-pair", pool))
    template = ec2.create_launch_template(
        LaunchTemplateName=f"skyward-{pool}",
        LaunchTemplateData={"ImageId": AMI},
        TagSpecifications=_tags("launch-template", pool),
    )["LaunchTemplate"]["LaunchTemplateId"]
    volume = ec2.create_volume(
        AvailabilityZone=zone, Size=10, TagSpecifications=_tags("volume", pool)
    )["VolumeId"]
    return {"group": group, "instance": instance, "template": template, "volume": volume}


def users_own(region: str) -> dict[str, str]:
    """Untagged resources of the user's, which no sweep may touch."""
    ec2 = boto3.client("ec2", region_name=region)
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    ec2.create_key_pair(KeyName="my-own-key")
    volume = ec2.create_volume(AvailabilityZone=zone, Size=5)["VolumeId"]
    instance = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]
    return {"volume": volume, "instance": instance["InstanceId"]}


def left(region: str, pool: str | None = None) -> dict[str, list[str]]:
    ec2 = boto3.client("ec2", region_name=region)
    managed = [{"Name": "tag:skyward:managed", "Values": ["true"]}]
    if pool:
        managed.append({"Name": "tag:skyward:pool", "Values": [pool]})
    live = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}]
    return {
        "instances": [
            i["InstanceId"]
            for r in ec2.describe_instances(Filters=managed + live)["Reservations"]
            for i in r["Instances"]
        ],
        "keys": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=managed)["KeyPairs"]],
        "templates": [
            t["LaunchTemplateId"]
            for t in ec2.describe_launch_templates(Filters=managed)["LaunchTemplates"]
        ],
        "volumes": [v["VolumeId"] for v in ec2.describe_volumes(Filters=managed)["Volumes"]],
        "groups": [
            g["GroupId"] for g in ec2.describe_security_groups(Filters=managed)["SecurityGroups"]
        ]
        if pool is None
        else [],
    }


def nothing_left(region: str, pool: str | None = None) -> bool:
    return not any(left(region, pool).values())


def test_down_sweeps_every_region_and_every_kind(
    aws_env: AwsEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    seeded = {region: seed(region, f"sky-{region}") for region in REGIONS}
    mine = users_own("eu-west-1")

    assert main(["down", "--provider", "aws", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    for region, ids in seeded.items():
        assert ids["instance"] in listed
        for kind in ("template", "volume"):
            assert f"{ids[kind]}\t{region}" in listed
        assert f"skyward-sky-{region}\t{region}" in listed
        assert not nothing_left(region), "--dry-run removes nothing"
    assert "security-group" not in listed, "a group is in use until its instance is gone"

    aws_env.moto.reset_calls()
    assert main(["down", "--provider", "aws", "--yes"]) == 0
    for region in REGIONS:
        assert nothing_left(region), (region, left(region))
    scanned = {c.region for c in aws_env.moto.calls if c.action == "DescribeKeyPairs"}
    assert set(REGIONS) <= scanned
    assert len(scanned) > len(REGIONS), "every enabled region is scanned"

    ec2 = boto3.client("ec2", region_name="eu-west-1")
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["my-own-key"]
    assert ec2.describe_volumes(VolumeIds=[mine["volume"]])["Volumes"]
    state = ec2.describe_instances(InstanceIds=[mine["instance"]])["Reservations"][0]
    assert state["Instances"][0]["State"]["Name"] == "running"


def test_down_for_one_pool_leaves_the_others(aws_env: AwsEnv) -> None:
    seed("us-west-2", "sky-gone")
    seed("us-west-2", "sky-alive")
    assert main(["down", "--provider", "aws", "--pool", "sky-gone", "--yes"]) == 0
    assert nothing_left("us-west-2", "sky-gone")
    still = left("us-west-2", "sky-alive")
    assert still["instances"]
    assert still["keys"]
    assert still["volumes"]


def test_a_group_a_user_instance_still_uses_is_kept(aws_env: AwsEnv) -> None:
    ids = seed("us-west-2", "sky-shared-group")
    ec2 = boto3.client("ec2", region_name="us-west-2")
    ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, SecurityGroupIds=[ids["group"]])
    assert main(["down", "--provider", "aws", "--yes"]) == 0
    groups = left("us-west-2")["groups"]
    assert groups == [ids["group"]]


def test_what_cannot_be_removed_fails_the_command_and_is_named(
    aws_env: AwsEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    seed("us-west-2", "sky-stuck")
    aws_env.moto.throttle_next(
        "ec2", "DeleteKeyPair", times=50, code="UnauthorizedOperation", status=403
    )
    assert main(["down", "--provider", "aws", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "key-pair skyward-sky-stuck in us-west-2" in err
    assert "UnauthorizedOperation" in err
    remaining = left("us-west-2")
    assert remaining["keys"] == ["skyward-sky-stuck"]
    assert not remaining["instances"]
    assert not remaining["volumes"]
