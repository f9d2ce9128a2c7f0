"""Launching through EC2 Fleet (``Type="instant"``): one call for N nodes.

The allocation decides the spot / on-demand split. A fleet that comes back short is
topped up with on-demand capacity when the allocation allows it; otherwise whatever it
did launch is terminated and a :class:`~skyward.errors.CapacityError` is raised, so a
pool is never left half-built.
"""

from __future__ import annotations

import math
from typing import Any

from attrs import frozen
from botocore.exceptions import ClientError
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from skyward.allocation import (
    AllocationStrategy,
    AlwaysSpot,
    Cheapest,
    OnDemandAllocation,
    Percent,
    SpotIfAvailable,
)
from skyward.errors import CapacityError
from skyward.offers import Offer

__all__ = ["CAPACITY_ERRORS", "Launched", "launch_fleet", "split"]

CAPACITY_ERRORS = {
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "UnfulfillableCapacity",
    "InstanceLimitExceeded",
}
# A new instance profile takes seconds to become usable by EC2 (IAM is eventually
# consistent): the first fleet after Skyward made one may be refused for that alone.
PROFILE_PROPAGATION_SECONDS = 90.0


@frozen
class Launched:
    instance_id: str
    spot: bool


def split(allocation: AllocationStrategy, count: int, offer: Offer) -> tuple[int, int, bool]:
    """(spot, on-demand, may top up with on-demand) for ``count`` nodes."""
    if isinstance(allocation, OnDemandAllocation) or offer.price_spot is None:
        if isinstance(allocation, AlwaysSpot):
            raise CapacityError("aws", f"{offer.instance_type} is not sold as spot here")
        return 0, count, False
    if isinstance(allocation, AlwaysSpot):
        return count, 0, False
    if isinstance(allocation, Percent):
        spot = math.ceil(allocation.spot * count)
        return spot, count - spot, False
    if isinstance(allocation, Cheapest):
        on_demand = offer.price_on_demand
        if on_demand is not None and on_demand <= offer.price_spot:
            return 0, count, False
        return count, 0, True
    assert isinstance(allocation, SpotIfAvailable)
    return count, 0, True


def _fleet(
    ec2: Any,
    template_id: str,
    overrides: list[dict[str, str]],
    spot: int,
    on_demand: int,
    strategy: str,
    tags: list[dict[str, Any]],
) -> tuple[list[Launched], list[str]]:
    response = ec2.create_fleet(
        Type="instant",
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": template_id,
                    "Version": "$Latest",
                },
                "Overrides": overrides,
            }
        ],
        TargetCapacitySpecification={
            "TotalTargetCapacity": spot + on_demand,
            "SpotTargetCapacity": spot,
            "OnDemandTargetCapacity": on_demand,
            "DefaultTargetCapacityType": "spot" if spot else "on-demand",
        },
        SpotOptions={"AllocationStrategy": strategy},
        OnDemandOptions={"AllocationStrategy": "lowest-price"},
        TagSpecifications=tags,
    )
    launched = [
        Launched(instance_id, group.get("Lifecycle") == "spot")
        for group in response.get("Instances", [])
        for instance_id in group.get("InstanceIds", [])
    ]
    errors = [
        f"{e.get('ErrorCode', '?')}: {e.get('ErrorMessage', '')}".strip()
        for e in response.get("Errors", [])
    ]
    return launched, errors


def _profile_not_visible_yet(result: tuple[list[Launched], list[str]]) -> bool:
    launched, errors = result
    return not launched and any("iaminstanceprofile" in e.lower() for e in errors)


def launch_fleet(
    ec2: Any,
    *,
    template_id: str,
    overrides: list[dict[str, str]],
    count: int,
    allocation: AllocationStrategy,
    offer: Offer,
    strategy: str,
    tags: list[dict[str, Any]],
) -> list[Launched]:
    """``count`` instances or none: tops up, or terminates the partial fleet and raises."""
    spot, on_demand, top_up = split(allocation, count, offer)
    retrying = Retrying(
        stop=stop_after_delay(PROFILE_PROPAGATION_SECONDS),
        wait=wait_exponential(multiplier=0.5, max=8),
        retry=retry_if_result(_profile_not_visible_yet),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else ([], []),
    )
    try:
        launched, errors = retrying(
            _fleet, ec2, template_id, overrides, spot, on_demand, strategy, tags
        )
        missing = count - len(launched)
        if missing > 0 and top_up:
            more, more_errors = _fleet(ec2, template_id, overrides, 0, missing, strategy, tags)
            launched += more
            errors += more_errors
    except ClientError as error:
        code = error.response["Error"]["Code"]
        if code in CAPACITY_ERRORS:
            raise CapacityError("aws", f"{offer.instance_type}: {error}") from error
        raise
    if len(launched) < count:
        if launched:
            ec2.terminate_instances(InstanceIds=[i.instance_id for i in launched])
        detail = "; ".join(errors) or "no reason given"
        raise CapacityError(
            "aws",
            f"only {len(launched)} of {count} {offer.instance_type} instances could be "
            f"launched ({detail}); the partial fleet was terminated",
        )
    if len(launched) > count:  # never keep (or pay for) more than asked
        ec2.terminate_instances(InstanceIds=[i.instance_id for i in launched[count:]])
    return launched[:count]
