"""``sky.AWS(...)``: the user's AWS settings, validated with no network call."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from attrs import field, frozen

from skyward.errors import ConfigurationError
from skyward.spec import ComputeSpec

if TYPE_CHECKING:
    from skyward.provider import Provider

__all__ = ["ALLOCATION_STRATEGIES", "AWS"]

ALLOCATION_STRATEGIES = (
    "price-capacity-optimized",
    "capacity-optimized",
    "capacity-optimized-prioritized",
    "lowest-price",
    "diversified",
)


def _pattern(
    field_name: str, pattern: str, example: str
) -> Callable[[object, object, str | None], None]:
    regex = re.compile(pattern)

    def check(_: object, __: object, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not regex.fullmatch(value)):
            raise ConfigurationError(field_name, f"{value!r} is not valid", f"Use e.g. {example}")

    return check


@functools.cache
def _known_regions() -> tuple[str, ...]:
    import boto3  # botocore's bundled endpoint data: no network call, but slow to load

    return tuple(boto3.Session().get_available_regions("ec2"))


def _region(_: object, __: object, value: str) -> None:
    known = _known_regions()
    if not isinstance(value, str):
        raise ConfigurationError(
            "region", f"{value!r} is not a region name", "Use e.g. 'us-east-1'"
        )
    if value not in known:
        import difflib

        close = difflib.get_close_matches(value, known, n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise ConfigurationError(
            "region", f"{value!r} is not an AWS region", f"{hint}Use e.g. 'us-east-1'"
        )


MAX_INSTANCE_TIMEOUT = 86_400  # a day: no boot takes longer, a typo (ms for s) does


def _positive(_: object, __: object, value: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 < value <= MAX_INSTANCE_TIMEOUT
    ):
        raise ConfigurationError(
            "instance_timeout",
            f"{value!r} is not a number of seconds in 1..{MAX_INSTANCE_TIMEOUT}",
            "Use e.g. 300",
        )


def _boolean(field_name: str) -> Callable[[object, object, bool], None]:
    def check(_: object, __: object, value: bool) -> None:
        if not isinstance(value, bool):
            raise ConfigurationError(field_name, f"{value!r} is not True or False", "Use True")

    return check


def _strategy(_: object, __: object, value: str) -> None:
    if value not in ALLOCATION_STRATEGIES:
        raise ConfigurationError(
            "allocation_strategy",
            f"{value!r} is not an EC2 Fleet allocation strategy",
            f"Use one of {', '.join(ALLOCATION_STRATEGIES)}",
        )


@frozen
class AWS:
    """Run pools on EC2.

    :param region: AWS region.
    :param ami: a custom AMI (default: the Deep Learning AMI for GPU types, Ubuntu 22.04
        otherwise, from AWS's public SSM parameters, for the type's architecture).
    :param subnet_id: launch here (default: the region's public subnets, every AZ).
    :param security_group_id: use this group as is (default: the shared ``skyward-sg``).
    :param instance_profile_arn: attach this profile (default: one is made only when S3
        volumes need it).
    :param username: SSH user (default: follows the AMI).
    :param instance_timeout: seconds a machine may take to boot and answer SSH.
    :param allocation_strategy: EC2 Fleet spot allocation strategy.
    :param use_ssm: reach nodes through Session Manager: SSH travels inside an SSM port
        session, so no inbound port is opened (the group is ``skyward-ssm-sg``, with no
        ingress from outside) and the nodes get a role with ``AmazonSSMManagedInstanceCore``
        (made once, unless ``instance_profile_arn`` is given). The AMI must run the SSM
        agent (AWS's Ubuntu and Deep Learning AMIs do).
    :param ssh_cidr: who may reach port 22 of ``skyward-sg`` (default: the client's
        public address; ``"0.0.0.0/0"`` only when you ask for it). Not used with
        ``use_ssm``.
    """

    region: str = field(default="us-east-1", validator=_region)
    ami: str | None = field(
        default=None,
        validator=_pattern("ami", r"ami-[0-9a-f]{8}(?:[0-9a-f]{9})?", "'ami-0abc1234def567890'"),
    )
    subnet_id: str | None = field(
        default=None, validator=_pattern("subnet_id", r"subnet-[0-9a-f]{8,17}", "'subnet-0abc1234'")
    )
    security_group_id: str | None = field(
        default=None, validator=_pattern("security_group_id", r"sg-[0-9a-f]{8,17}", "'sg-0abc1234'")
    )
    instance_profile_arn: str | None = field(
        default=None,
        validator=_pattern(
            "instance_profile_arn",
            r"arn:aws[a-z-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]+",
            "'arn:aws:iam::123456789012:instance-profile/my-profile'",
        ),
    )
    username: str | None = field(
        default=None, validator=_pattern("username", r"[a-z_][a-z0-9_-]{0,31}", "'ubuntu'")
    )
    instance_timeout: int = field(default=300, validator=_positive)
    allocation_strategy: str = field(default="price-capacity-optimized", validator=_strategy)
    use_ssm: bool = field(default=False, validator=_boolean("use_ssm"))
    ssh_cidr: str | None = field(
        default=None,
        validator=_pattern("ssh_cidr", r"\d{1,3}(?:\.\d{1,3}){3}/\d{1,2}", "'203.0.113.7/32'"),
    )
    provider_name: ClassVar[str] = "aws"

    def validate(self, spec: ComputeSpec) -> None:
        if self.use_ssm and self.ssh_cidr is not None:
            raise ConfigurationError(
                "ssh_cidr",
                "opens port 22, but use_ssm=True reaches nodes with no inbound port",
                "Drop ssh_cidr, or set use_ssm=False to connect over the network",
            )

    def create(self) -> Provider:
        from skyward_aws.provider import AWSProvider

        return AWSProvider(self)
