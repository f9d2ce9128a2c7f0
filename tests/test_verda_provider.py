"""The Verda provider against the fake Verda API (``tests/verda_fakes.py``), without SSH:
configuration, credentials and tokens, offers, launches with their faults, teardown."""

from __future__ import annotations

from typing import Any

import pytest

import skyward as sky
from skyward import cli
from skyward.errors import CapacityError, ConfigurationError, ProvisioningError
from skyward.provider import POOL_TAG, Infrastructure, Instance, InstanceState, LaunchRequest
from skyward.spec import ComputeSpec, build_spec
from skyward_verda import Verda
from skyward_verda.config import DEFAULT_ENDPOINT, endpoint
from skyward_verda.provider import VerdaInfrastructure, VerdaProvider
from tests.cloud_checks import launch
from tests.verda_fakes import CLIENT_SECRET, VerdaFake, nothing_left, verda_env, verda_fake

__all__ = ["verda_env", "verda_fake"]


def _provider(**options: Any) -> VerdaProvider:
    provider = Verda(**options).create()
    assert isinstance(provider, VerdaProvider)
    return provider


def _launch(
    provider: VerdaProvider, spec: ComputeSpec, pool_id: str = "sky-test0001", **match: Any
) -> tuple[Infrastructure, list[Instance]]:
    offers = [o for o in provider.offers(spec) if all(getattr(o, k) == v for k, v in match.items())]
    offer = sorted(offers, key=lambda o: (not o.available, o.cheapest_price or 0))[0]
    return launch(provider, spec, pool_id, offer)


def _creates(fake: VerdaFake) -> list[dict[str, Any]]:
    return [c.body for c in fake.calls if c.method == "POST" and c.path == "/instances"]


# -- configuration and credentials ------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"region": "us-east"}, "region"),
        ({"region": 3}, "region"),
        ({"disk_gb": 0}, "disk_gb"),
        ({"instance_timeout": -1}, "instance_timeout"),
        ({"client_id": ""}, "client_id"),
        ({"image": " "}, "image"),
    ],
)
def test_bad_settings_fail_at_construction(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        Verda(**options)


def test_volumes_are_refused_by_validate(verda_env: VerdaFake) -> None:
    spec = build_spec(cpu=2, volumes=[sky.Volume(size_gb=10, mount_path="/data")])
    with pytest.raises(ConfigurationError, match="volumes"):
        Verda().validate(spec)
    assert verda_env.calls == []


def test_missing_credentials_name_both_variables(
    verda_env: VerdaFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERDA_CLIENT_SECRET")
    with pytest.raises(ConfigurationError) as missing:
        Verda().create()
    assert "VERDA_CLIENT_ID" in str(missing.value)
    assert "VERDA_CLIENT_SECRET" in str(missing.value)
    assert verda_env.calls == [], "no network call"
    assert "s3cr3t" not in repr(Verda(client_id="x", client_secret="s3cr3t"))


def test_rejected_credentials_fail_before_anything_is_created(verda_env: VerdaFake) -> None:
    provider = _provider(client_secret="wrong")
    with pytest.raises(ConfigurationError) as refused:
        provider.offers(build_spec(cpu=2))
    assert "VERDA_CLIENT_ID" in str(refused.value)
    assert "VERDA_CLIENT_SECRET" in str(refused.value)
    assert "wrong" not in str(refused.value)
    with (
        pytest.raises(ConfigurationError),
        sky.ComputePool(provider=Verda(client_secret="wrong"), cpu=2, display="quiet"),
    ):
        pass
    assert [
        c.path for c in verda_env.calls if c.method != "POST" or c.path != "/oauth2/token"
    ] == []


def test_endpoint_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKYWARD_VERDA_ENDPOINT", raising=False)
    assert endpoint() == DEFAULT_ENDPOINT == "https://api.verda.com/v1"
    monkeypatch.setenv("SKYWARD_VERDA_ENDPOINT", "ftp://x")
    with pytest.raises(ConfigurationError, match="SKYWARD_VERDA_ENDPOINT"):
        endpoint()


def test_a_token_is_refreshed_before_it_expires(verda_env: VerdaFake) -> None:
    import time

    verda_env.token_lifetime = 31  # the provider renews 30 s early: after 1 s here
    provider = _provider()
    spec = build_spec(cpu=2)
    assert provider.offers(spec)
    time.sleep(1.1)
    assert provider.offers(spec)
    grants = [c.body["grant_type"] for c in verda_env.calls if c.path == "/oauth2/token"]
    assert grants == ["client_credentials", "refresh_token"]
    assert 401 not in {c.status for c in verda_env.calls}, "renewed before, not after"


def test_tokens_refresh_and_fall_back_to_a_fresh_grant(verda_env: VerdaFake) -> None:
    provider = _provider()
    spec = build_spec(cpu=2)
    assert provider.offers(spec)
    assert provider.api.grants == 1
    verda_env.expire_tokens()  # the server drops the token early: 401, refresh, resend
    assert provider.offers(spec)
    verda_env.expire_tokens(refresh_too=True)  # refresh refused too: a fresh grant
    assert provider.offers(spec)
    grants = [c.body["grant_type"] for c in verda_env.calls if c.path == "/oauth2/token"]
    assert grants == ["client_credentials", "refresh_token", "refresh_token", "client_credentials"]
    assert provider.api.grants == 2
    for call in verda_env.calls:
        if call.path != "/oauth2/token":
            assert CLIENT_SECRET not in str(call.body)


# -- offers -----------------------------------------------------------------------------


def test_offers_from_types_availability_and_locations(verda_env: VerdaFake) -> None:
    verda_env.set_available("1H100.80S.30V", location="FIN-02", spot=True, available=False)
    verda_env.set_available("1H100.80S.30V", location="FIN-03", available=False)
    offers = _provider().offers(build_spec(accelerator="H100"))
    by_location = {o.region: o for o in offers if o.instance_type == "1H100.80S.30V"}
    assert sorted(by_location) == ["FIN-01", "FIN-02", "FIN-03"]
    first = by_location["FIN-01"]
    assert (first.accelerator, first.accelerator_count, first.accelerator_memory_gb) == (
        "H100",
        1,
        80.0,
    )
    assert (first.vcpus, first.memory_gb) == (30, 120.0)
    assert (first.price_on_demand, first.price_spot) == (3.95, 1.70)
    assert by_location["FIN-02"].price_spot is None, "no spot capacity there now"
    assert by_location["FIN-02"].available
    assert not by_location["FIN-03"].available
    eight = next(o for o in offers if o.instance_type == "8H100.80S.176V")
    assert eight.price_spot == 13.6, "numbers are prices too"
    assert eight.accelerator_memory_gb == 80.0
    pinned = _provider(region="FIN-02").offers(build_spec(accelerator="H100"))
    assert {o.region for o in pinned} == {"FIN-02"}


def test_unknown_region_is_checked_against_locations(verda_env: VerdaFake) -> None:
    with pytest.raises(ConfigurationError, match="FIN-01, FIN-02, FIN-03"):
        _provider(region="ICE-01").offers(build_spec(cpu=2))


@pytest.mark.parametrize(
    ("accelerator", "types"),
    [
        ("A100", {"1A100.22V", "1A100.40S.22V"}),
        ("A100-40GB", {"1A100.40S.22V"}),
        (sky.AcceleratorSpec.NVIDIA.A100(mig="3g.40gb"), {"1A100.22V"}),
        ("V100", {"1V100.6V"}),
        ("B200", {"1B200.30V"}),
        ("H200", {"1H200.141S.44V"}),
        ("L40S", {"1L40S.20V"}),
        ("8xH100", {"8H100.80S.176V"}),
    ],
)
def test_accelerators_are_read_from_the_catalog(
    verda_env: VerdaFake, accelerator: object, types: set[str]
) -> None:
    offers = _provider(region="FIN-01").offers(build_spec(accelerator=accelerator))
    assert {o.instance_type for o in offers} == types


def test_cpu_pools_get_cpu_types(verda_env: VerdaFake) -> None:
    offers = _provider(region="FIN-01").offers(build_spec(cpu=8))
    assert {o.instance_type for o in offers} == {"CPU.8V.32G"}
    assert all(o.accelerator is None for o in offers)


# -- launch and teardown ----------------------------------------------------------------


def _wait_running(provider: VerdaProvider, instances: list[Instance]) -> list[Instance]:
    import time

    deadline = time.monotonic() + 10
    while not all(i.state is InstanceState.RUNNING for i in instances):
        assert time.monotonic() < deadline
        time.sleep(0.1)
        instances = list(provider.describe(instances))
    return instances


def test_launch_describe_terminate_leaves_nothing(verda_env: VerdaFake) -> None:
    provider = _provider()
    spec = build_spec(nodes=2, cpu=4, allocation="on-demand", timeout=600)
    infra, instances = _launch(provider, spec, region="FIN-01")
    assert isinstance(infra, VerdaInfrastructure)
    assert infra.on_expire == "poweroff"
    (script,) = verda_env.scripts.values()
    assert infra.identity is not None
    assert infra.identity.host.private_openssh.splitlines()[1] in script["script"]
    assert "ttl=600" in script["script"]
    assert CLIENT_SECRET not in script["script"]
    (key,) = verda_env.keys.values()
    assert key["key"] == infra.identity.client.public_line
    bodies = _creates(verda_env)
    assert [b["hostname"] for b in bodies] == ["skyward-sky-test0001-0", "skyward-sky-test0001-1"]
    assert {b["description"] for b in bodies} == {"skyward pool=sky-test0001"}
    assert {b["location_code"] for b in bodies} == {"FIN-01"}
    assert {b["pricing"] for b in bodies} == {"FIXED_PRICE"}
    assert all(not b["is_spot"] and "on_spot_discontinue" not in b["os_volume"] for b in bodies)
    assert {b["startup_script_id"] for b in bodies} == {infra.script_id}
    assert {b["image"] for b in bodies} == {"ubuntu-24.04"}, "the image the API lists for CPUs"
    assert {"key": "skyward-pool", "value": "sky-test0001"} in bodies[0]["tags"]
    assert all(i.price_on_demand == 0.07 and not i.spot for i in instances)
    instances = _wait_running(provider, instances)
    assert all(i.ip for i in instances)
    assert len(verda_env.live_volumes()) == 2
    provider.terminate(instances)
    assert {i.state for i in provider.describe(instances)} == {InstanceState.TERMINATED}
    provider.teardown(infra)
    nothing_left(verda_env)


def test_spot_sets_on_spot_discontinue_and_falls_back_on_503(verda_env: VerdaFake) -> None:
    provider = _provider(region="FIN-01")
    spec = build_spec(nodes=2, machine="1H100.80S.30V", allocation="spot-if-available")
    offer = provider.offers(spec)[0]
    assert offer.price_spot == 1.70
    infra = provider.prepare(spec, "sky-spot0001")
    assert isinstance(infra, VerdaInfrastructure)
    verda_env.capacity[("FIN-01", "1H100.80S.30V", True)] = 1  # one spot node, then 503
    tags = {POOL_TAG: "sky-spot0001"}
    request = LaunchRequest(pool_id="sky-spot0001", offer=offer, count=2, spec=spec, tags=tags)
    instances = list(provider.launch(infra, request))
    assert [i.spot for i in instances] == [True, False]
    assert [i.hourly_price for i in instances] == [1.70, 3.95]
    bodies = _creates(verda_env)
    assert [b["is_spot"] for b in bodies] == [True, True, False]
    assert bodies[0]["os_volume"]["on_spot_discontinue"] == "delete_permanently"
    assert bodies[0]["contract"] == "SPOT"
    assert bodies[2]["pricing"] == "FIXED_PRICE"
    assert {b["image"] for b in bodies} == {"ubuntu-24.04-cuda-12.8-open-docker"}
    assert [c.status for c in verda_env.calls if c.path == "/instances" and c.method == "POST"] == [
        201,
        503,
        201,
    ]
    instances = _wait_running(provider, instances)
    verda_env.preempt(instances[0].id)  # spot taken back: its OS volume goes with it
    assert provider.describe(instances)[0].state is InstanceState.TERMINATED
    provider.terminate(instances)
    provider.teardown(infra)
    nothing_left(verda_env)


def test_always_spot_does_not_fall_back(verda_env: VerdaFake) -> None:
    provider = _provider(region="FIN-01")
    spec = build_spec(nodes=2, machine="1H100.80S.30V", allocation="always-spot")
    verda_env.capacity[("FIN-01", "1H100.80S.30V", True)] = 1
    with pytest.raises(CapacityError, match="Not enough resources"):
        _launch(provider, spec)
    nothing_left(verda_env)  # the first node was deleted (after it left provisioning)


def test_capacity_refusal_is_a_capacity_error(verda_env: VerdaFake) -> None:
    provider = _provider(region="FIN-01")
    spec = build_spec(machine="1H100.80S.30V", allocation="on-demand")
    offers = provider.offers(spec)
    verda_env.set_available("1H100.80S.30V", available=False)
    infra = provider.prepare(spec, "sky-full0001")
    request = LaunchRequest(pool_id="sky-full0001", offer=offers[0], count=1, spec=spec, tags={})
    with pytest.raises(CapacityError, match="Not enough resources to deploy"):
        provider.launch(infra, request)
    provider.teardown(infra)
    nothing_left(verda_env)


@pytest.mark.parametrize(
    ("status", "error"), [("no_capacity", CapacityError), ("error", ProvisioningError)]
)
def test_an_order_that_fails_after_creation_is_cleaned_up(
    verda_env: VerdaFake, status: str, error: type[Exception]
) -> None:
    verda_env.next_status += ["ordered", status]
    with pytest.raises(error) as raised:
        _launch(_provider(), build_spec(nodes=2, cpu=4, allocation="on-demand"), region="FIN-01")
    assert type(raised.value) is error
    nothing_left(verda_env)


def test_a_refused_second_create_removes_the_first_node(verda_env: VerdaFake) -> None:
    verda_env.inject("POST", "/instances", 400, "Instance limit exceeded", skip=1)
    with pytest.raises(ProvisioningError, match="Instance limit exceeded"):
        _launch(_provider(), build_spec(nodes=2, cpu=4), region="FIN-01")
    nothing_left(verda_env)


@pytest.mark.parametrize("after", [True, False], ids=["made-then-500", "500-before"])
def test_5xx_on_create_looks_up_the_hostname_before_retrying(
    verda_env: VerdaFake, after: bool
) -> None:
    verda_env.inject("POST", "/instances", 500, "Internal server error", after=after)
    provider = _provider()
    infra, instances = _launch(provider, build_spec(nodes=2, cpu=4), region="FIN-02")
    hostnames = sorted(i["hostname"] for i in verda_env.live_instances())
    assert hostnames == ["skyward-sky-test0001-0", "skyward-sky-test0001-1"], "no duplicate"
    assert len({i.id for i in instances}) == 2
    assert len(_creates(verda_env)) == (2 if after else 3)
    provider.terminate(instances)
    provider.teardown(infra)
    nothing_left(verda_env)


def test_terminate_waits_out_provisioning_and_refusals(verda_env: VerdaFake) -> None:
    verda_env.ordered_seconds = verda_env.provisioning_seconds = 0.5
    provider = _provider()
    infra, instances = _launch(provider, build_spec(nodes=2, cpu=4), region="FIN-01")
    refusal = verda_env.inject(
        "PUT", "/instances", 403, "Can't discontinue a provisioning instance", times=2
    )
    provider.terminate(instances)  # still provisioning: waited out, refusals retried
    assert refusal.hits == 2
    provider.terminate(instances)  # already discontinued: nothing to do, no error
    gone = Instance(
        id="00000000-0000-0000-0000-000000000000", provider="verda", state=InstanceState.RUNNING
    )
    provider.terminate([gone])  # "Invalid instance id": gone
    deletes = [c.body for c in verda_env.calls if c.method == "PUT" and c.status == 202]
    assert all(
        b["delete_permanently"] is True and len(b["volume_ids"]) == len(b["id"]) for b in deletes
    )
    provider.teardown(infra)
    nothing_left(verda_env)


def test_a_delete_answered_already_discontinued_counts_as_gone(verda_env: VerdaFake) -> None:
    """The delete goes through but its answer says the instance is discontinued already
    (another client, or a retry's first try, got there first): not an error, and the
    instance, its volume, the key and the script are gone."""
    provider = _provider()
    infra, instances = _launch(provider, build_spec(cpu=4, allocation="on-demand"), region="FIN-01")
    instances = _wait_running(provider, instances)
    already = verda_env.inject(
        "PUT", "/instances", 403, "Can't discontinue a discontinued instance", after=True
    )
    provider.terminate(instances)
    assert already.hits == 1
    assert {i.state for i in provider.describe(instances)} == {InstanceState.TERMINATED}
    provider.teardown(infra)
    nothing_left(verda_env)


def test_offline_instances_are_found_and_deleted_by_skyward_down(
    verda_env: VerdaFake, fresh_plugins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    provider = _provider()
    _, instances = _launch(provider, build_spec(nodes=2, cpu=4), pool_id="sky-dead0001")
    _wait_running(provider, instances)
    verda_env.instances[instances[0].id].status_override = "offline"  # shut down: still bills
    _launch(_provider(), build_spec(cpu=4), pool_id="sky-other001")
    found = _provider().list_by_tag("sky-dead0001")
    assert sorted(i.id for i in found) == sorted(i.id for i in instances)
    assert {i.tags[POOL_TAG] for i in found} == {"sky-dead0001"}
    assert len(_provider().list_by_tag()) == 3
    assert cli.main(["down", "--provider", "verda", "--pool", "sky-dead0001", "--yes"]) == 0
    assert "2 instance(s) terminated" in capsys.readouterr().err
    left = verda_env.live_instances()
    assert [i["hostname"] for i in left] == ["skyward-sky-other001-0"]
    assert [v["name"] for v in verda_env.live_volumes()] == ["skyward-sky-other001-0-os"]
    assert [k["name"] for k in verda_env.keys.values()] == ["skyward-sky-other001"]
    assert [s["name"] for s in verda_env.scripts.values()] == ["skyward-sky-other001"]


def test_leftovers_without_instances_go_with_down_shared(
    verda_env: VerdaFake, fresh_plugins: None
) -> None:
    provider = _provider()
    provider.prepare(build_spec(cpu=2), "sky-early001")  # killed before any node existed
    assert provider.list_shared() == [("scripts", "sky-early001"), ("ssh-keys", "sky-early001")]
    assert cli.main(["down", "--provider", "verda", "--shared", "--yes"]) == 0
    nothing_left(verda_env)


def test_script_quota_error_is_clear_and_cleans_the_key(verda_env: VerdaFake) -> None:
    verda_env.script_quota = 0
    with pytest.raises(ProvisioningError, match="limit"):
        _provider().prepare(build_spec(cpu=2), "sky-quota001")
    nothing_left(verda_env)


def test_throttling_and_server_errors_are_retried(verda_env: VerdaFake) -> None:
    slept: list[float] = []
    provider = _provider(region="FIN-01")
    provider.api._sleep = slept.append  # no real waiting in the test
    verda_env.inject("GET", "/instance-types", 429, "Too many requests", retry_after=3)
    verda_env.inject("GET", "/instance-availability", 502, "Bad gateway", times=2)
    assert provider.offers(build_spec(cpu=2))
    assert 3.0 in slept, "Retry-After is honoured"
    spec = build_spec(cpu=4, allocation="on-demand")
    verda_env.inject("POST", "/instances", 429, "Too many requests")  # not processed: resent
    infra, instances = _launch(provider, spec)
    assert len(_creates(verda_env)) == 2
    provider.terminate(instances)
    provider.teardown(infra)
    nothing_left(verda_env)


def test_list_by_tag_needs_both_hostname_and_description(verda_env: VerdaFake) -> None:
    provider = _provider(region="FIN-01")
    _, instances = _launch(provider, build_spec(cpu=4), pool_id="sky-mine0001")
    key = next(iter(verda_env.keys))
    with verda_env.lock:  # someone else's machine that merely looks like ours
        verda_env._create(
            {
                "instance_type": "CPU.4V.16G",
                "image": "ubuntu-24.04",
                "location_code": "FIN-01",
                "hostname": "skyward-sky-mine0001-7",
                "description": "my own box",
                "ssh_key_ids": [key],
            }
        )
    assert [i.id for i in provider.list_by_tag()] == [i.id for i in instances]
    provider.terminate(instances)
    assert [i["description"] for i in verda_env.live_instances()] == ["my own box"]


def test_availability_follows_the_allocation(verda_env: VerdaFake) -> None:
    verda_env.set_available("1H100.80S.30V", location="FIN-01", spot=False, available=False)
    provider = _provider(region="FIN-01")

    def available(allocation: str) -> bool:
        spec = build_spec(machine="1H100.80S.30V", allocation=allocation)
        (offer,) = provider.offers(spec)
        return offer.available

    assert not available("on-demand")
    assert available("always-spot")
    assert available("spot-if-available")


def test_a_spot_node_taken_back_during_launch_is_reported_gone(verda_env: VerdaFake) -> None:
    import time

    verda_env.next_status.append("preempted")
    provider = _provider(region="FIN-01")
    start = time.monotonic()
    infra, instances = _launch(provider, build_spec(cpu=4, allocation="always-spot"))
    assert time.monotonic() - start < 10, "no wait for an order that is already over"
    assert [i.state for i in instances] == [InstanceState.TERMINATED]
    provider.terminate(instances)
    provider.teardown(infra)
    nothing_left(verda_env)


def test_an_api_that_refuses_tags_still_gets_the_nodes(verda_env: VerdaFake) -> None:
    verda_env.accept_tags = False
    provider = _provider(region="FIN-01")
    infra, instances = _launch(provider, build_spec(nodes=2, cpu=4))
    assert [("tags" in b) for b in _creates(verda_env)] == [True, False, False]
    assert len(provider.list_by_tag("sky-test0001")) == 2, "found by hostname and description"
    provider.terminate(instances)
    provider.teardown(infra)
    nothing_left(verda_env)


def test_ambiguous_key_and_script_creates_are_looked_up_by_name_and_content(
    verda_env: VerdaFake,
) -> None:
    provider = _provider(region="FIN-01")
    spec = build_spec(cpu=4)
    stale = provider.prepare(spec, "sky-again001")  # an earlier attempt's leftovers...
    assert isinstance(stale, VerdaInfrastructure)
    verda_env.inject("POST", "/ssh-keys", 500, "Internal server error", after=True)
    verda_env.inject("POST", "/scripts", 502, "Bad gateway", after=True)
    infra = provider.prepare(spec, "sky-again001")  # ...are not taken for this one's
    assert isinstance(infra, VerdaInfrastructure)
    assert len(verda_env.keys) == len(verda_env.scripts) == 2, "made once each, found again"
    assert infra.key_id not in (stale.key_id, "")
    assert infra.script_id not in (stale.script_id, "")
    assert infra.identity is not None
    assert verda_env.keys[infra.key_id]["key"] == infra.identity.client.public_line
    # a stale node under the same hostname (another script) is not adopted either
    offer = provider.offers(spec)[0]
    old = LaunchRequest(pool_id="sky-again001", offer=offer, count=1, spec=spec, tags={})
    (leftover,) = provider.launch(stale, old)
    verda_env.inject("POST", "/instances", 500, "Internal server error")  # nothing made
    (fresh,) = provider.launch(infra, old)
    assert fresh.id != leftover.id
    provider.terminate([leftover, fresh])
    provider.teardown(infra)
    provider.teardown(stale)
    nothing_left(verda_env)
