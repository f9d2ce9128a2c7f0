"""``skyward doctor`` for AWS: who the credentials are (STS), and whether they are allowed
to make each call a pool makes, asked with ``DryRun=True`` so nothing is created.

EC2 answers a dry run with ``DryRunOperation`` when the call would be allowed and
``UnauthorizedOperation`` when not; describe calls and reads that have no dry run are made
for real (they change nothing). The list follows the IAM policy in the AWS provider's
documentation, plus the calls the provider makes that it omits (key pairs, launch
templates, pricing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from skyward.provider import AccessCheck
from skyward_aws import amis
from skyward_aws.session import Clients

__all__ = ["check_access"]

_ALLOWED = ("DryRunOperation",)
_DENIED = ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException")
_BAD_CREDENTIALS = (
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "ExpiredToken",
    "UnrecognizedClientException",
)
_POLICY_FIX = (
    "Attach the IAM policy from the AWS provider page (docs: Providers → AWS → Permissions) "
    "to this user or role"
)
# Ids that cannot exist: a dry run is checked for permission, not for the resource.
_NO_INSTANCE = "i-00000000000000000"
_NO_GROUP = "sg-00000000000000000"


def _try(name: str, call: Callable[[], Any], *, required: bool = True) -> AccessCheck:
    try:
        call()
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _ALLOWED:
            return AccessCheck(name, True, "allowed (dry run)", required=required)
        if code in _DENIED:
            return AccessCheck(name, False, f"denied: {code}", _POLICY_FIX, required)
        if code in _BAD_CREDENTIALS:
            fix = "Renew or replace the credentials (aws configure, aws sso login)"
            return AccessCheck(name, False, f"credentials rejected: {code}", fix, required)
        # Anything else (a missing resource, a parameter check) got past the permission check.
        return AccessCheck(name, True, f"allowed (answered {code})", required=required)
    except BotoCoreError as error:
        fix = "Check the network and AWS_ENDPOINT_URL / region settings"
        return AccessCheck(name, False, f"no answer: {error}", fix, required)
    return AccessCheck(name, True, "allowed", required=required)


def check_access(clients: Clients, region: str) -> list[AccessCheck]:
    sts = clients("sts")
    try:
        who = sts.get_caller_identity()
    except (ClientError, BotoCoreError) as error:
        return [
            AccessCheck(
                "identity",
                False,
                f"the credentials were not accepted: {error}",
                "Set valid AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or run `aws configure` "
                "(or `aws sso login` for SSO profiles)",
            )
        ]
    checks = [AccessCheck("identity", True, f"{who.get('Arn')} (account {who.get('Account')})")]
    ssm = clients("ssm")
    image: dict[str, str] = {}

    def get_parameter() -> None:
        path = amis._UBUNTU.format(arch="amd64")
        image["id"] = ssm.get_parameter(Name=path)["Parameter"]["Value"]

    checks.append(_try("ssm:GetParameter", get_parameter))
    ec2 = clients("ec2")
    ami = image.get("id", "ami-00000000000000000")
    dry: list[tuple[str, Callable[[], Any]]] = [
        ("ec2:DescribeInstances", lambda: ec2.describe_instances(DryRun=True, MaxResults=5)),
        ("ec2:DescribeInstanceTypes", lambda: ec2.describe_instance_types(DryRun=True)),
        ("ec2:DescribeImages", lambda: ec2.describe_images(DryRun=True, ImageIds=[ami])),
        ("ec2:DescribeSubnets", lambda: ec2.describe_subnets(DryRun=True)),
        ("ec2:DescribeSecurityGroups", lambda: ec2.describe_security_groups(DryRun=True)),
        (
            "ec2:RunInstances",
            lambda: ec2.run_instances(
                DryRun=True, ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1
            ),
        ),
        (
            "ec2:CreateLaunchTemplate",
            lambda: ec2.create_launch_template(
                DryRun=True,
                LaunchTemplateName="skyward-doctor",
                LaunchTemplateData={"ImageId": ami},
            ),
        ),
        (
            "ec2:CreateFleet",
            lambda: ec2.create_fleet(
                DryRun=True,
                Type="instant",
                LaunchTemplateConfigs=[
                    {
                        "LaunchTemplateSpecification": {
                            "LaunchTemplateName": "skyward-doctor",
                            "Version": "$Latest",
                        }
                    }
                ],
                TargetCapacitySpecification={
                    "TotalTargetCapacity": 1,
                    "DefaultTargetCapacityType": "on-demand",
                },
            ),
        ),
        (
            "ec2:CreateSecurityGroup",
            lambda: ec2.create_security_group(
                DryRun=True, GroupName="skyward-doctor", Description="skyward doctor dry run"
            ),
        ),
        (
            "ec2:AuthorizeSecurityGroupIngress",
            lambda: ec2.authorize_security_group_ingress(
                DryRun=True,
                GroupId=_NO_GROUP,
                IpProtocol="tcp",
                FromPort=22,
                ToPort=22,
                CidrIp="127.0.0.1/32",
            ),
        ),
        (
            "ec2:ImportKeyPair",
            lambda: ec2.import_key_pair(
                DryRun=True,
                KeyName="skyward-doctor",
                PublicKeyMaterial=_SAMPLE_KEY,
            ),
        ),
        (
            "ec2:CreateTags",
            lambda: ec2.create_tags(
                DryRun=True, Resources=[_NO_INSTANCE], Tags=[{"Key": "k", "Value": "v"}]
            ),
        ),
        (
            "ec2:TerminateInstances",
            lambda: ec2.terminate_instances(DryRun=True, InstanceIds=[_NO_INSTANCE]),
        ),
    ]
    checks += [_try(name, call) for name, call in dry]
    iam = clients("iam")
    checks.append(
        _try("iam:GetRole", lambda: iam.get_role(RoleName="skyward-doctor-absent"), required=False)
    )
    pricing = clients("pricing", "us-east-1")
    checks.append(
        _try(
            "pricing:GetProducts",
            lambda: pricing.get_products(ServiceCode="AmazonEC2", MaxResults=1),
            required=False,
        )
    )
    return checks


_SAMPLE_KEY = (
    b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEn0/8o+S3ePEqWp4kDpS0t3ceUNqYD3NP2Vp6GeZyKq doctor"
)
