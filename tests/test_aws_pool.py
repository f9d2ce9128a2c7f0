"""AWS end to end: a pool on AWS-on-moto whose instances are SSH test hosts.

moto launches no machines, so the connection hook (``resolve_ssh_host``, the extension
point a user needs for a bastion or private addresses) maps each instance onto an SSH
test host. Before answering, it plays cloud-init: it reads the instance's user-data from
the EC2 API and runs that script, then puts the host key and authorized key it wrote
into the test host — so the pinned host key and the per-pool client key are checked for
real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import skyward as sky
from tests.aws_fakes import AwsEnv, ec2_user_data
from tests.cloud_checks import POWEROFF_HARMLESS, two_node_pool
from tests.cloud_init import CloudInit, registered

pytestmark = pytest.mark.usefixtures("fresh_plugins")


@pytest.fixture
def cloud(aws_env: AwsEnv, ssh_hosts: Any, tmp_path: Path) -> Iterator[CloudInit]:
    hook = CloudInit(ssh_hosts(2), tmp_path / "cloud-init", ec2_user_data)
    with registered(hook):
        yield hook


@sky.compute
def boom() -> None:
    raise RuntimeError("inside the pool")


def _leftovers(pool_id: str) -> dict[str, list[Any]]:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    tag = [{"Name": "tag:skyward:pool", "Values": [pool_id]}]
    instances = [
        i["InstanceId"]
        for r in ec2.describe_instances(
            Filters=[*tag, {"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )["Reservations"]
        for i in r["Instances"]
    ]
    return {
        "instances": instances,
        "launch_templates": ec2.describe_launch_templates()["LaunchTemplates"],
        "key_pairs": [
            k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].endswith(pool_id)
        ],
        "volumes": ec2.describe_volumes(Filters=tag)["Volumes"],
    }


def _aws() -> Any:
    return sky.AWS(ssh_cidr="127.0.0.1/32", instance_timeout=30)  # type: ignore[attr-defined]


def test_two_node_pool_runs_and_leaves_nothing(aws_env: AwsEnv, cloud: CloudInit) -> None:
    pool_id, events = two_node_pool(_aws(), cloud, "aws", machine="m5.large")
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    expected = aws_env.pricing.prices[("us-east-1", "m5.large")]
    assert all(e.price_on_demand == pytest.approx(expected) for e in provisioned)
    assert all(e.spot and e.price_spot is not None for e in provisioned), "spot when available"
    final = events[-1]
    assert isinstance(final, sky.CostFinal)
    assert final.total_cost > 0
    assert _leftovers(pool_id) == {
        "instances": [],
        "launch_templates": [],
        "key_pairs": [],
        "volumes": [],
    }


def test_exception_in_the_pool_body_tears_everything_down(
    aws_env: AwsEnv, cloud: CloudInit
) -> None:
    pool = sky.ComputePool(provider=_aws(), nodes=2, cpu=2, env=POWEROFF_HARMLESS, display="quiet")
    with pytest.raises(RuntimeError, match="inside the pool"), pool:
        boom() >> pool
    assert _leftovers(pool.pool_id)["instances"] == []
    assert _leftovers(pool.pool_id)["key_pairs"] == []
    for host in cloud.mapped.values():
        assert not [p for p in host.processes() if "skyward.agent" in " ".join(p.cmdline())]
