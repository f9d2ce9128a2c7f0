"""DigitalOcean end to end: pools on DigitalOcean-on-fake whose droplets are SSH test hosts.

The fake launches no machines, so the connection hook (``resolve_ssh_host``, the extension
point a user needs for a bastion or private addresses) maps each droplet onto an SSH test
host. Before answering, it plays cloud-init: it runs the user-data the droplet was created
with (what DigitalOcean's metadata service would hand cloud-init) and puts the host key and
authorized key it wrote into the test host, so the pinned host key and the per-pool client
key are checked for real. The same hook serves AWS-on-moto instances for the fallback test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward.provider import Instance
from tests.aws_fakes import AwsEnv, ec2_user_data
from tests.cloud_checks import POWEROFF_HARMLESS, two_node_pool, where
from tests.cloud_init import CloudInit, registered
from tests.conftest import wait_until
from tests.do_fakes import FakeDigitalOcean, do_fake

__all__ = ["do_fake"]

pytestmark = pytest.mark.usefixtures("fresh_plugins")


def _user_data(fake: FakeDigitalOcean) -> Callable[[Instance], str]:
    def read(instance: Instance) -> str:
        if instance.provider == "aws":  # the fallback test lands on AWS-on-moto
            return ec2_user_data(instance)
        return fake.user_data(instance.id)

    return read


@pytest.fixture
def cloud(do_fake: FakeDigitalOcean, ssh_hosts: Any, tmp_path: Path) -> Iterator[CloudInit]:
    hook = CloudInit(ssh_hosts(2), tmp_path / "cloud-init", _user_data(do_fake))
    with registered(hook):
        yield hook


def _do(**options: Any) -> Any:
    options.setdefault("region", "tor1")
    options.setdefault("ssh_cidr", "127.0.0.1/32")
    options.setdefault("instance_timeout", 30)
    return sky.DigitalOcean(**options)  # type: ignore[attr-defined]


def _leftovers(fake: FakeDigitalOcean, pool_id: str) -> dict[str, int]:
    tag = f"skyward:pool:{pool_id}"
    wait_until(lambda: not fake.live(tag), 5)
    return {
        "droplets": len(fake.live(tag)),
        "keys": sum(1 for k in fake.keys.values() if k["name"].endswith(pool_id)),
        "firewalls": len(fake.firewalls_tagged(tag)) + len(fake.firewalls),
        "tags": int(tag in fake.tags),
    }


NOTHING = {"droplets": 0, "keys": 0, "firewalls": 0, "tags": 0}


def test_two_node_pool_runs_and_leaves_nothing(do_fake: FakeDigitalOcean, cloud: CloudInit) -> None:
    pool_id, events = two_node_pool(_do(), cloud, "digitalocean", cpu=2)
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert all(e.instance_type == "s-2vcpu-2gb" for e in provisioned), "cheapest 2-vCPU size"
    assert all(not e.spot and e.price_on_demand == pytest.approx(0.02679) for e in provisioned)
    assert isinstance(events[-1], sky.CostFinal)
    assert [c.operation for c in do_fake.calls].count("droplets_create") == 1
    assert _leftovers(do_fake, pool_id) == NOTHING


def test_a_pool_rides_out_429_storms_lost_answers_and_failing_destroys(
    do_fake: FakeDigitalOcean, cloud: CloudInit
) -> None:
    do_fake.rate_limit_next(5, retry_after=1)
    do_fake.partial_create(made=1, status=500)
    do_fake.fail_next("droplets_create", 503, after=True)
    do_fake.fail_next("droplets_destroy", 500, times=2)
    with sky.ComputePool(
        provider=_do(), nodes=2, cpu=2, env=POWEROFF_HARMLESS, display="quiet"
    ) as pool:
        every = where() @ pool
        pool_id = pool.pool_id
        assert len(do_fake.live()) == 2, "no duplicate droplets"
    assert [e[0] for e in every] == [0, 1]
    statuses = [c.status for c in do_fake.calls]
    assert statuses.count(429) == 5
    creates = [c for c in do_fake.calls if c.operation == "droplets_create"]
    assert [c.status for c in creates] == [500, 503]
    assert [len(c.body["names"]) for c in creates] == [2, 1]
    assert _leftovers(do_fake, pool_id) == NOTHING


SCRIPT = """
import skyward as sky
provider = sky.DigitalOcean(region="tor1", ssh_cidr="127.0.0.1/32")
with sky.ComputePool(provider=provider, nodes=2, cpu=2, display="quiet") as pool:
    pass
"""


def test_a_client_killed_mid_launch_is_cleaned_by_skyward_down(
    do_fake: FakeDigitalOcean, capsys: pytest.CaptureFixture[str]
) -> None:
    from skyward.cli import main

    do_fake.boot_seconds = 300  # the droplets stay "new": the client is still waiting
    client = subprocess.Popen([sys.executable, "-c", SCRIPT], env=dict(os.environ))
    try:
        assert wait_until(lambda: len(do_fake.live("skyward:managed")) == 2, 60)
    finally:
        client.kill()
        client.wait()
    (pool_tag,) = {t for d in do_fake.live() for t in d.tags if t.startswith("skyward:pool:")}
    assert do_fake.keys
    assert do_fake.firewalls
    assert main(["down", "--provider", "digitalocean", "--dry-run"]) == 0
    assert len(do_fake.live()) == 2
    assert main(["down", "--provider", "digitalocean", "--yes"]) == 0
    out = capsys.readouterr()
    assert "2 instance(s) terminated" in out.err
    assert pool_tag.removeprefix("skyward:pool:") in out.out
    assert wait_until(lambda: not do_fake.live(), 5)
    assert do_fake.keys == {}
    assert do_fake.firewalls == {}
    assert pool_tag not in do_fake.tags


def test_fallback_from_digitalocean_out_of_capacity_to_aws(
    do_fake: FakeDigitalOcean, aws_env: AwsEnv, cloud: CloudInit
) -> None:
    do_fake.sell_out(*[s["slug"] for s in do_fake.sizes])
    events: list[Any] = []
    with sky.ComputePool(
        provider=[_do(), sky.AWS(ssh_cidr="127.0.0.1/32", instance_timeout=30)],  # type: ignore[attr-defined]
        nodes=1,
        cpu=2,
        env=POWEROFF_HARMLESS,
        display="quiet",
        on_event=events.append,
    ) as pool:
        node, _, _ = where() >> pool
        pool_id = pool.pool_id
    assert node == 0
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert [e.provider for e in provisioned] == ["aws"]
    refusals = [e for e in events if isinstance(e, sky.Error) and "digitalocean" in str(e)]
    assert refusals, "DigitalOcean's capacity errors were reported"
    creates = [c for c in do_fake.calls if c.operation == "droplets_create"]
    assert creates
    assert all(c.status == 422 for c in creates)
    assert _leftovers(do_fake, pool_id) == NOTHING
    assert do_fake.keys == {}
    assert not [t for t in do_fake.tags if t.startswith("skyward:pool:")]


@sky.compute
def accelerators() -> tuple[list[str], str]:
    info = sky.instance_info()
    return list(info.accelerators), info.head_addr


def test_a_gpu_pool_runs_and_is_found_even_where_tag_listings_omit_gpus(
    do_fake: FakeDigitalOcean, cloud: CloudInit
) -> None:
    do_fake.gpus_in_tag_listing = False  # the pessimistic reading of the document
    events: list[Any] = []
    with sky.ComputePool(
        provider=_do(),
        accelerator="H100",
        env=POWEROFF_HARMLESS,
        display="quiet",
        on_event=events.append,
    ) as pool:
        names, head = accelerators() >> pool
        pool_id = pool.pool_id
        (droplet,) = do_fake.live()
    assert names == ["H100"]
    assert head == droplet.private_ip, "frameworks rendezvous on the private network"
    (create,) = [c for c in do_fake.calls if c.operation == "droplets_create"]
    assert create.body["size"] == "gpu-h100x1-80gb"
    assert create.body["image"] == "gpu-h100x1-base"
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert [e.price_on_demand for e in provisioned] == [pytest.approx(3.39)]
    assert _leftovers(do_fake, pool_id) == NOTHING


def test_a_provider_that_cannot_serve_the_pool_is_skipped_for_the_next(
    do_fake: FakeDigitalOcean, aws_env: AwsEnv, cloud: CloudInit
) -> None:
    """DigitalOcean has no spot market: an always-spot pool skips it (saying why) and
    lands on AWS-on-moto, without a single DigitalOcean call."""
    events: list[Any] = []
    with sky.ComputePool(
        provider=[_do(), sky.AWS(ssh_cidr="127.0.0.1/32", instance_timeout=30)],  # type: ignore[attr-defined]
        nodes=1,
        cpu=2,
        allocation="always-spot",
        env=POWEROFF_HARMLESS,
        display="quiet",
        on_event=events.append,
    ) as pool:
        node, _, _ = where() >> pool
    assert node == 0
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert [(e.provider, e.spot) for e in provisioned] == [("aws", True)]
    (skipped,) = [e.message for e in events if isinstance(e, sky.Error)]
    assert skipped.startswith("digitalocean: skipped, it cannot serve this pool: allocation:")
    assert "spot" in skipped
    assert do_fake.calls == [], "DigitalOcean was never asked for anything"


def test_when_no_provider_can_serve_the_pool_each_reason_is_named(
    do_fake: FakeDigitalOcean,
) -> None:
    volume = sky.S3Volume(mount_path="/data", bucket="data")
    with pytest.raises(sky.ConfigurationError) as refused:
        sky.ComputePool(provider=[_do(), sky.Verda()], cpu=2, volume=volume)  # type: ignore[attr-defined]
    assert refused.value.field == "volumes", "the field both refused"
    message = str(refused.value)
    assert "digitalocean: volumes: DigitalOcean pools cannot mount volumes" in message
    assert "verda: volumes: the Verda provider does not mount S3 volumes" in message
    with pytest.raises(sky.ConfigurationError) as refused:
        sky.ComputePool(
            provider=[_do(), sky.Verda()], cpu=2, allocation="always-spot", volume=volume
        )  # type: ignore[attr-defined]
    assert refused.value.field == "provider", "different fields: the providers are the problem"
    with pytest.raises(sky.ConfigurationError) as refused:
        sky.ComputePool(provider=[_do()], cpu=2, allocation="always-spot")
    assert refused.value.field == "allocation", "one provider: its own error, as it was"
    assert do_fake.calls == []
