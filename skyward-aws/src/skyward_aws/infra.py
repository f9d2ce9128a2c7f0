"""Shared infrastructure: subnets, security groups, the nodes' IAM role, the S3 bucket.

Everything here is created only when needed, tagged ``skyward:managed``, and reused by
later pools; what the user passes (``subnet_id``, ``security_group_id``,
``instance_profile_arn``) is used as given and never modified or deleted.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from skyward import client_address
from skyward.errors import ProvisioningError
from skyward.provider import MANAGED_TAG

__all__ = [
    "ROLE_NAME",
    "SECURITY_GROUP_NAME",
    "client_cidr",
    "ensure_bucket",
    "ensure_instance_profile",
    "ensure_security_group",
    "public_subnets",
    "tag_specification",
]

SECURITY_GROUP_NAME = "skyward-sg"
SSM_SECURITY_GROUP_NAME = "skyward-ssm-sg"
SSM_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
S3_POLICY_NAME = "skyward-s3-volumes"
ROLE_NAME = "skyward-role"
PROFILE_NAME = "skyward-instance-profile"


def tag_specification(resource: str, tags: dict[str, str]) -> dict[str, Any]:
    return {"ResourceType": resource, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def public_subnets(ec2: Any, subnet_id: str | None) -> list[tuple[str, str, str]]:
    """(subnet, AZ, VPC) to launch in: the given one, else every public-IP subnet."""
    if subnet_id is not None:
        found = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
    else:
        found = [
            s
            for page in ec2.get_paginator("describe_subnets").paginate(
                Filters=[{"Name": "map-public-ip-on-launch", "Values": ["true"]}]
            )
            for s in page["Subnets"]
        ]
    if not found:
        raise ProvisioningError(
            "aws",
            "no subnet assigns public IPs in this region; pass AWS(subnet_id=...) "
            "or enable auto-assign public IPv4 on a subnet",
        )
    vpc = found[0]["VpcId"]
    return [(s["SubnetId"], s["AvailabilityZone"], s["VpcId"]) for s in found if s["VpcId"] == vpc]


def client_cidr(given: str | None) -> str:
    """Who may SSH in: what the user said, else this client's public address."""
    return client_address.client_cidr(
        given, provider="aws", variable="SKYWARD_AWS_CHECKIP_URL", config="AWS"
    )


def ensure_security_group(ec2: Any, vpc_id: str, ssh_cidr: str | None) -> str:
    """The VPC's shared group: everything within it, and SSH from ``ssh_cidr``.

    ``ssh_cidr=None`` (Session Manager) is a separate group, ``skyward-ssm-sg``, with no
    ingress from outside at all, so SSM pools never share an open port 22.
    """
    name = SECURITY_GROUP_NAME if ssh_cidr is not None else SSM_SECURITY_GROUP_NAME
    existing = ec2.describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": [name]},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ]
    )["SecurityGroups"]
    if existing:
        group_id = str(existing[0]["GroupId"])
        allowed = {
            r.get("CidrIp")
            for p in existing[0].get("IpPermissions", [])
            if p.get("FromPort") == 22
            for r in p.get("IpRanges", [])
        }
    else:
        group_id = str(
            ec2.create_security_group(
                GroupName=name,
                Description=(
                    "Skyward pools: SSH from the client, all traffic between nodes"
                    if ssh_cidr is not None
                    else "Skyward pools over Session Manager: all traffic between nodes only"
                ),
                VpcId=vpc_id,
                TagSpecifications=[tag_specification("security-group", {MANAGED_TAG: "true"})],
            )["GroupId"]
        )
        ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}],
        )
        allowed = set()
    if ssh_cidr is not None and ssh_cidr not in allowed:
        _authorize_ssh(ec2, group_id, ssh_cidr)
    return group_id


def _authorize_ssh(ec2: Any, group_id: str, cidr: str) -> None:
    try:
        ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": cidr, "Description": "skyward client"}],
                }
            ],
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "InvalidPermission.Duplicate":
            raise


def ensure_instance_profile(iam: Any, bucket_names: list[str], *, ssm: bool = False) -> str:
    """``skyward-instance-profile`` (made once): S3 access to the volumes' buckets, and
    ``AmazonSSMManagedInstanceCore`` when nodes are reached through Session Manager.

    Access only grows: buckets granted to earlier pools stay, since one of them may still
    be running on this role.
    """
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    try:
        iam.get_role(RoleName=ROLE_NAME)
    except ClientError:
        iam.create_role(
            RoleName=ROLE_NAME,
            AssumeRolePolicyDocument=json.dumps(trust),
            Tags=[{"Key": MANAGED_TAG, "Value": "true"}],
        )
    if bucket_names:
        _grant_buckets(iam, bucket_names)
    if ssm:
        iam.attach_role_policy(RoleName=ROLE_NAME, PolicyArn=SSM_POLICY_ARN)
    try:
        profile = iam.get_instance_profile(InstanceProfileName=PROFILE_NAME)["InstanceProfile"]
    except ClientError:
        profile = iam.create_instance_profile(
            InstanceProfileName=PROFILE_NAME, Tags=[{"Key": MANAGED_TAG, "Value": "true"}]
        )["InstanceProfile"]
    if not any(r["RoleName"] == ROLE_NAME for r in profile.get("Roles", [])):
        iam.add_role_to_instance_profile(InstanceProfileName=PROFILE_NAME, RoleName=ROLE_NAME)
    return str(profile["Arn"])


def _grant_buckets(iam: Any, bucket_names: list[str]) -> None:
    resources = {f"arn:aws:s3:::{b}" for b in bucket_names} | {
        f"arn:aws:s3:::{b}/*" for b in bucket_names
    }
    try:
        current = iam.get_role_policy(RoleName=ROLE_NAME, PolicyName=S3_POLICY_NAME)
        document = current["PolicyDocument"]
        if isinstance(document, str):
            document = json.loads(document)
        for statement in document.get("Statement", []):
            granted = statement.get("Resource", [])
            resources |= {granted} if isinstance(granted, str) else set(granted)
    except ClientError:
        pass  # no S3 policy yet
    iam.put_role_policy(
        RoleName=ROLE_NAME,
        PolicyName=S3_POLICY_NAME,
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": ["s3:*"], "Resource": sorted(resources)}
                ],
            }
        ),
    )


def ensure_bucket(s3: Any, sts: Any, region: str) -> str:
    """The per-region ``skyward-<account>-<region>`` bucket (made once, tagged)."""
    account = sts.get_caller_identity()["Account"]
    name = f"skyward-{account}-{region}"
    try:
        s3.head_bucket(Bucket=name)
    except ClientError:
        options = (
            {}
            if region == "us-east-1"
            else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        )
        s3.create_bucket(Bucket=name, **options)
        s3.put_bucket_tagging(
            Bucket=name, Tagging={"TagSet": [{"Key": MANAGED_TAG, "Value": "true"}]}
        )
    return name
