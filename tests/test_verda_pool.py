"""Verda end to end: pools on Verda-on-fake whose instances are SSH test hosts.

The fake launches no machines, so the connection hook (``resolve_ssh_host``) maps each
Verda instance onto an SSH test host. Before answering it plays Verda's boot: it reads the
instance's startup script from the API's state and runs it, then puts the host key and
authorized key it wrote into the test host, so the pinned host key and the pool's client
key are checked for real (``tests/cloud_init.py``, as for every cloud).
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
from skyward import cli, selection
from skyward.provider import Instance
from skyward.spec import build_spec
from tests.aws_fakes import AwsEnv, ec2_user_data
from tests.cloud_checks import POWEROFF_HARMLESS, two_node_pool, where
from tests.cloud_init import CloudInit, registered
from tests.conftest import wait_until
from tests.verda_fakes import VerdaFake, nothing_left, verda_env, verda_fake

__all__ = ["verda_env", "verda_fake"]

pytestmark = pytest.mark.usefixtures("fresh_plugins")


def _startup_script(fake: VerdaFake) -> Callable[[Instance], str]:
    def read(instance: Instance) -> str:
        with fake.lock:
            script_id = fake.instances[instance.id].data["startup_script_id"]
            script: str = fake.scripts[script_id]["script"]
            return script

    return read


@pytest.fixture
def boot(verda_env: VerdaFake, ssh_hosts: Any, tmp_path: Path) -> Iterator[CloudInit]:
    hook = CloudInit(
        ssh_hosts(2), tmp_path / "verda-boot", _startup_script(verda_env), provider="verda"
    )
    with registered(hook):
        yield hook


def test_two_node_pool_runs_and_leaves_nothing(verda_env: VerdaFake, boot: CloudInit) -> None:
    _, events = two_node_pool(
        sky.Verda(instance_timeout=30),  # type: ignore[attr-defined]
        boot,
        "verda",
        cpu=4,
        # the server drops every token (refresh ones too) mid-pool: teardown re-authenticates
        during=lambda: verda_env.expire_tokens(refresh_too=True),
    )
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert all(e.spot and e.price_spot == 0.03 for e in provisioned), "spot when available"
    assert all(e.price_on_demand == 0.07 for e in provisioned)
    final = events[-1]
    assert isinstance(final, sky.CostFinal)
    assert final.total_cost > 0
    grants = [c.body["grant_type"] for c in verda_env.calls if c.path == "/oauth2/token"]
    assert grants[-1] == "client_credentials"
    nothing_left(verda_env)


def test_pool_survives_spot_503_a_5xx_create_and_delete_refusals(
    verda_env: VerdaFake, boot: CloudInit
) -> None:
    verda_env.capacity[("FIN-01", "CPU.4V.16G", True)] = 0  # spot: 503 Not enough resources
    made_anyway = verda_env.inject("POST", "/instances", 500, "Internal server error", after=True)
    refusals = verda_env.inject(
        "PUT", "/instances", 403, "Can't discontinue a provisioning instance", times=2
    )
    events: list[Any] = []
    with sky.ComputePool(
        provider=sky.Verda(region="FIN-01", instance_timeout=30),  # type: ignore[attr-defined]
        nodes=2,
        cpu=4,
        env=POWEROFF_HARMLESS,
        display="quiet",
        on_event=events.append,
    ) as pool:
        assert [e[0] for e in where() @ pool] == [0, 1]
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert [e.spot for e in provisioned] == [False, False], "fell back to on-demand"
    assert made_anyway.hits == 1
    assert (
        len(
            {
                c.body["hostname"]
                for c in verda_env.calls
                if c.path == "/instances" and c.method == "POST" and c.status in (201, 500)
            }
        )
        == 2
    )
    assert refusals.hits == 2
    nothing_left(verda_env)


def test_client_killed_mid_launch_then_skyward_down(
    verda_env: VerdaFake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    verda_env.ordered_seconds = 3600.0  # the orders sit there: the client waits on them
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import skyward as sky\n"
            "with sky.ComputePool(provider=sky.Verda(), nodes=2, cpu=4, display='quiet'):\n"
            "    pass\n",
        ],
        env={**os.environ, "SKYWARD_CACHE_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: len(verda_env.live_instances()) == 2, 60)
    finally:
        client.kill()
        client.wait()
    assert len(verda_env.keys) == len(verda_env.scripts) == 1
    verda_env.ordered_seconds = 0.2  # Verda gets on with them; deletes were refused until now
    assert cli.main(["down", "--provider", "verda", "--yes"]) == 0
    assert "2 instance(s) terminated" in capsys.readouterr().err
    nothing_left(verda_env)


@pytest.fixture
def aws_boot(
    aws_env: AwsEnv, verda_env: VerdaFake, ssh_hosts: Any, tmp_path: Path
) -> Iterator[Any]:
    """Both clouds' hooks, each passing the other's instances on."""
    verda = CloudInit(
        ssh_hosts(2), tmp_path / "verda-boot", _startup_script(verda_env), provider="verda"
    )
    aws = CloudInit(ssh_hosts(2), tmp_path / "cloud-init", ec2_user_data, provider="aws")
    with registered(aws, verda):
        yield aws


def test_cheapest_of_aws_and_verda_and_fallback(
    verda_env: VerdaFake, aws_env: AwsEnv, aws_boot: Any
) -> None:
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    # every 4-vCPU EC2 type at 0.17/h, so AWS's best offer has a price whichever it is
    fours = [
        name
        for name, info in INSTANCE_TYPES.items()
        if info.get("VCpuInfo", {}).get("DefaultVCpus") == 4
    ]
    aws_env.pricing.set_prices({("us-east-1", name): 0.17 for name in fours})
    spec = build_spec(cpu=4, allocation="on-demand")
    aws = sky.AWS(ssh_cidr="127.0.0.1/32", instance_timeout=30)  # type: ignore[attr-defined]
    verda = sky.Verda(instance_timeout=30)  # type: ignore[attr-defined]
    both = (aws.create(), verda.create())
    assert selection.select_cheapest(both, spec).name == "verda"  # 0.07 < 0.17
    for kind in verda_env.types:
        kind["price_per_hour"] = "0.34"
    assert selection.select_cheapest(both, spec).name == "aws", "live prices, not a table"
    for kind in verda_env.types:
        kind["price_per_hour"] = 0.05

    def cheapest_pool(*, call: bool) -> list[Any]:
        """The events of an on-demand pool on the cheaper of the two (``call``: run
        :func:`where` on it)."""
        events: list[Any] = []
        with sky.ComputePool(
            provider=[aws, verda],
            selection="cheapest",
            cpu=4,
            allocation="on-demand",
            env=POWEROFF_HARMLESS,
            display="quiet",
            on_event=events.append,
        ) as pool:
            if call:
                assert where() >> pool
        return events

    events = cheapest_pool(call=True)
    assert {e.provider for e in events if isinstance(e, sky.InstanceProvisioned)} == {"verda"}
    nothing_left(verda_env)
    # Verda is still the cheapest and lists capacity, but every create is refused (503):
    # the pool falls back to AWS
    for location in ("FIN-01", "FIN-02", "FIN-03"):
        for kind in verda_env.types:
            for spot in (False, True):
                verda_env.capacity[(location, kind["instance_type"], spot)] = 0
    events = cheapest_pool(call=False)
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert [e.provider for e in provisioned] == ["aws"]
    capacity = [e for e in events if isinstance(e, sky.Error) and "no capacity" in e.message]
    assert capacity
    assert all(e.message.startswith("verda:") for e in capacity)
    nothing_left(verda_env)
