"""The DigitalOcean provider against the fake API: real pydo over HTTP, every exchange
checked against DigitalOcean's published contract (the ``do_fake`` fixture)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

import skyward as sky
from skyward.errors import CapacityError, ConfigurationError, ProvisioningError
from skyward.provider import InstanceState, LaunchRequest
from skyward.spec import build_spec
from tests.cloud_checks import launch, ranked_offers
from tests.do_fakes import FakeDigitalOcean, do_fake

__all__ = ["do_fake"]

pytestmark = pytest.mark.usefixtures("fresh_plugins")

POOL = "sky-0123456789ab"


def _provider(**options: Any) -> Any:
    options.setdefault("ssh_cidr", "127.0.0.1/32")
    options.setdefault("region", "tor1")
    provider = sky.DigitalOcean(**options).create()  # type: ignore[attr-defined]
    provider.poll_interval = 0.1
    return provider


_offers = ranked_offers


def _launch(provider: Any, spec: Any, pool_id: str = POOL) -> tuple[Any, list[Any]]:
    return launch(provider, spec, pool_id)


def _wait_running(provider: Any, instances: list[Any], timeout: float = 10) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instances = list(provider.describe(instances))
        if all(i.state == InstanceState.RUNNING for i in instances):
            return instances
        time.sleep(0.1)
    raise AssertionError(f"not running: {instances}")


def _shutdown(provider: Any, infra: Any, instances: list[Any]) -> None:
    provider.terminate(instances)
    deadline = time.monotonic() + 10
    while any(i.state != InstanceState.TERMINATED for i in provider.describe(instances)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    provider.teardown(infra)


def _creates(fake: FakeDigitalOcean) -> list[Any]:
    return [c for c in fake.calls if c.operation == "droplets_create"]


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"region": "nyc 1"}, "region"),
        ({"region": 3}, "region"),
        ({"image": "Ubuntu 24.04"}, "image"),
        ({"vpc_uuid": "my-vpc"}, "vpc_uuid"),
        ({"ssh_cidr": "203.0.113.7"}, "ssh_cidr"),
        ({"ssh_cidr": "300.0.0.0/8"}, "ssh_cidr"),
        ({"username": "Root!"}, "username"),
        ({"instance_timeout": 0}, "instance_timeout"),
        ({"instance_timeout": 10**9}, "instance_timeout"),
        ({"region": None}, "region"),
        ({"token": ""}, "token"),
    ],
)
def test_bad_settings_are_refused_before_any_call(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        sky.DigitalOcean(**options)  # type: ignore[attr-defined]
    assert refused.value.field == field


def test_token_comes_from_either_variable_and_is_never_shown(
    do_fake: FakeDigitalOcean, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIGITALOCEAN_TOKEN")
    config = sky.DigitalOcean(region="tor1")  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError) as missing:
        sky.ComputePool(provider=config, cpu=2)
    assert "DIGITALOCEAN_TOKEN" in str(missing.value)
    assert "DIGITALOCEAN_ACCESS_TOKEN" in str(missing.value)
    assert do_fake.calls == []
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", do_fake.token)
    provider = config.create()
    assert provider.offers(build_spec(cpu=2))
    assert do_fake.token not in repr(provider)
    assert do_fake.token not in repr(sky.DigitalOcean(token=do_fake.token))  # type: ignore[attr-defined]


def test_a_rejected_token_names_both_variables(
    do_fake: FakeDigitalOcean, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "dop_v1_wrong")
    with pytest.raises(ConfigurationError) as refused:
        _provider().offers(build_spec(cpu=2))
    assert "DIGITALOCEAN_TOKEN" in str(refused.value)
    assert "DIGITALOCEAN_ACCESS_TOKEN" in str(refused.value)


def test_always_spot_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="no spot") as refused:
        sky.ComputePool(
            provider=sky.DigitalOcean(token="x"),  # type: ignore[attr-defined]
            cpu=2,
            allocation="always-spot",
        )
    assert refused.value.field == "allocation"


def test_an_unknown_region_is_refused_once_online(do_fake: FakeDigitalOcean) -> None:
    provider = sky.DigitalOcean(region="xyz9", ssh_cidr="127.0.0.1/32").create()  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="xyz9") as refused:
        provider.offers(build_spec(cpu=2))
    assert refused.value.field == "region"
    assert "tor1" in str(refused.value)


def test_import_skyward_does_not_import_pydo() -> None:
    code = "import skyward, sys; sky = skyward.DigitalOcean(); assert 'pydo' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- offers ---------------------------------------------------------------------------


def test_offers_come_from_every_page_of_sizes(do_fake: FakeDigitalOcean) -> None:
    provider = _provider(region="nyc3")
    offers = _offers(provider, build_spec(cpu=2, memory="16GB"))
    assert offers[0].provider == "digitalocean"
    assert all(o.price_spot is None for o in offers), "no spot market"
    assert all(o.region == "nyc3" for o in offers)
    assert all(o.vcpus >= 2 and o.memory_gb >= 16 for o in offers)
    assert offers == sorted(offers, key=lambda o: o.price_on_demand)
    # the legacy sizes sit on the second page: a provider reading one page misses them
    assert any(o.instance_type.startswith("so-legacy") for o in offers)
    pages = [c.query for c in do_fake.calls if c.operation == "sizes_list"]
    assert [p["page"] for p in pages] == ["1", "2"]
    assert all(p["per_page"] == "200" for p in pages)


def test_gpu_offers_from_gpu_info(do_fake: FakeDigitalOcean) -> None:
    provider = _provider(region="tor1")
    h100 = _offers(provider, build_spec(accelerator="H100"))
    assert [o.instance_type for o in h100] == ["gpu-h100x1-80gb", "gpu-h100x8-640gb"]
    assert (h100[0].accelerator, h100[0].accelerator_count) == ("H100", 1)
    assert h100[0].accelerator_memory_gb == 80
    assert h100[0].price_on_demand == pytest.approx(3.39)
    assert h100[0].extra["disk_gb"] == "720"
    eight = _offers(provider, build_spec(accelerator="8xH100"))
    assert [o.instance_type for o in eight] == ["gpu-h100x8-640gb"]
    mi300 = _offers(provider, build_spec(accelerator="MI300X"))
    assert [(o.instance_type, o.accelerator) for o in mi300] == [("gpu-mi300x1-192gb", "MI300X")]
    l40s = _offers(provider, build_spec(accelerator="L40S"))
    assert [o.instance_type for o in l40s] == ["gpu-l40sx1-48gb"]
    assert _offers(_provider(region="sfo3"), build_spec(accelerator="H100")) == []
    assert [o.instance_type for o in _offers(provider, build_spec(machine="c-8"))] == ["c-8"]
    cpu = _offers(provider, build_spec(cpu=4))
    assert cpu
    assert all(o.accelerator is None for o in cpu)


def test_spot_if_available_runs_on_demand(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    spec = build_spec(cpu=2, allocation="spot-if-available")
    infra, instances = _launch(provider, spec)
    assert all(not i.spot and i.price_on_demand for i in instances)
    _shutdown(provider, infra, instances)


# -- launch, describe, terminate, teardown -----------------------------------------------


def test_launch_makes_tagged_droplets_behind_a_firewall(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    infra, instances = _launch(provider, build_spec(nodes=2, cpu=2))
    tag = f"skyward:pool:{POOL}"
    (create,) = _creates(do_fake)
    body = create.body
    assert body["names"] == [f"{POOL}-0", f"{POOL}-1"]
    assert body["tags"] == ["skyward:managed", tag]
    assert body["ssh_keys"] == [infra.key_id]
    assert body["image"] == "ubuntu-24-04-x64"
    assert "ssh_host_ed25519_key" in body["user_data"]
    assert infra.identity.client.public_line in body["user_data"]
    assert "BEGIN OPENSSH PRIVATE KEY" in body["user_data"]
    assert "/root" in body["user_data"], "DigitalOcean images log in as root"
    (firewall,) = do_fake.firewalls_tagged(tag)
    ssh_rule = firewall["inbound_rules"][0]
    assert ssh_rule == {
        "protocol": "tcp",
        "ports": "22",
        "sources": {"addresses": ["127.0.0.1/32"]},
    }
    assert {r["protocol"] for r in firewall["outbound_rules"]} == {"tcp", "udp", "icmp"}
    assert len(do_fake.keys) == 1
    running = _wait_running(provider, instances)
    assert all(i.ip and i.ip.startswith("127.") for i in running)
    assert all(i.private_ip and i.private_ip.startswith("10.") for i in running)
    _shutdown(provider, infra, running)
    assert do_fake.live() == []
    assert do_fake.keys == {}
    assert do_fake.firewalls == {}
    assert tag not in do_fake.tags


def test_active_without_an_address_is_not_running(do_fake: FakeDigitalOcean) -> None:
    do_fake.address_seconds = 2.0
    provider = _provider()
    infra, instances = _launch(provider, build_spec(cpu=2))
    time.sleep(do_fake.boot_seconds + 0.1)
    (droplet,) = do_fake.live()
    (early,) = provider.describe(instances)
    assert early.state == InstanceState.PENDING
    assert early.ip is None
    (late,) = _wait_running(provider, instances)
    assert late.ip == droplet.public_ip
    _shutdown(provider, infra, instances)


def test_twenty_three_nodes_take_three_creates(do_fake: FakeDigitalOcean) -> None:
    do_fake.droplet_limit = 30
    provider = _provider()
    infra, instances = _launch(provider, build_spec(nodes=23, cpu=2))
    assert [len(c.body["names"]) for c in _creates(do_fake)] == [10, 10, 3]
    assert len({i.id for i in instances}) == 23
    _shutdown(provider, infra, instances)
    assert do_fake.live() == []


def test_gpu_droplets_use_the_gpu_image_and_are_swept(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    infra, instances = _launch(provider, build_spec(accelerator="H100"))
    (create,) = _creates(do_fake)
    assert create.body["image"] == "gpu-h100x1-base"
    found = provider.list_by_tag(POOL)
    assert [i.id for i in found] == [instances[0].id]
    assert found[0].tags == {"skyward:managed": "true", "skyward:pool": POOL}
    assert [i.id for i in provider.list_by_tag()] == [instances[0].id]
    assert any(c.query.get("type") == "gpus" for c in do_fake.calls)
    _shutdown(provider, infra, instances)


def test_the_droplet_limit_is_a_capacity_error_before_any_create(
    do_fake: FakeDigitalOcean,
) -> None:
    do_fake.droplet_limit = 1
    provider = _provider()
    with pytest.raises(CapacityError, match="droplet limit"):
        _launch(provider, build_spec(nodes=2, cpu=2))
    assert _creates(do_fake) == []
    assert do_fake.keys == {}
    assert do_fake.firewalls == {}


def test_a_sold_out_size_is_a_capacity_error(do_fake: FakeDigitalOcean) -> None:
    do_fake.sell_out("gpu-h100x1-80gb")
    provider = _provider()
    with pytest.raises(CapacityError, match="capacity"):
        _launch(provider, build_spec(accelerator="H100"))
    assert do_fake.live() == []
    assert do_fake.keys == {}
    assert do_fake.firewalls == {}


def test_a_failed_second_batch_destroys_the_first(do_fake: FakeDigitalOcean) -> None:
    do_fake.droplet_limit = 30
    provider = _provider()
    spec = build_spec(nodes=12, cpu=2)
    offer = _offers(provider, spec)[0]
    infra = provider.prepare(spec, POOL)
    do_fake.sell_out(offer.instance_type)  # after the pre-check, before the 2nd batch
    original = do_fake._op_droplets_create
    calls = {"n": 0}

    def second_fails(**kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            with do_fake._lock:
                sold, do_fake._sold_out = do_fake._sold_out, set()
                try:
                    return original(**kw)
                finally:
                    do_fake._sold_out = sold
        return original(**kw)

    do_fake._op_droplets_create = second_fails  # type: ignore[method-assign]
    request = LaunchRequest(POOL, offer, 12, spec, {"skyward:pool": POOL})
    with pytest.raises(CapacityError):
        provider.launch(infra, request)
    provider.teardown(infra)
    assert do_fake.live() == []
    assert do_fake.keys == {}
    assert do_fake.firewalls == {}


# -- faults ---------------------------------------------------------------------------


def test_a_lost_create_answer_is_reconciled_not_repeated(do_fake: FakeDigitalOcean) -> None:
    do_fake.fail_next("droplets_create", 500, after=True)
    provider = _provider()
    infra, instances = _launch(provider, build_spec(nodes=3, cpu=2))
    assert len(_creates(do_fake)) == 1, "the droplets were found by tag, not made again"
    assert len(do_fake.live()) == 3
    assert sorted(d.name for d in do_fake.live()) == [f"{POOL}-{n}" for n in range(3)]
    _shutdown(provider, infra, instances)


def test_a_partial_create_asks_only_for_the_missing(do_fake: FakeDigitalOcean) -> None:
    do_fake.partial_create(made=2, status=503)
    provider = _provider()
    infra, instances = _launch(provider, build_spec(nodes=5, cpu=2))
    bodies = [c.body["names"] for c in _creates(do_fake)]
    assert bodies == [[f"{POOL}-{n}" for n in range(5)], [f"{POOL}-{n}" for n in range(2, 5)]]
    assert len(instances) == len(do_fake.live()) == 5
    _shutdown(provider, infra, instances)


def test_a_429_storm_is_waited_out(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    do_fake.rate_limit_next(6, retry_after=0)
    spec = build_spec(nodes=2, cpu=2)
    infra, instances = _launch(provider, spec)
    do_fake.rate_limit_next(4, retry_after=None, operation="droplets_create")
    do_fake.rate_limit_next(3, retry_after=0, operation="droplets_destroy")
    assert len(do_fake.live()) == 2
    _shutdown(provider, infra, instances)
    assert do_fake.live() == []
    assert sum(1 for c in do_fake.calls if c.status == 429) == 9


def test_429_on_create_reconciles_then_retries(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    do_fake.rate_limit_next(2, retry_after=0, operation="droplets_create")
    infra, instances = _launch(provider, build_spec(nodes=2, cpu=2))
    statuses = [c.status for c in _creates(do_fake)]
    assert statuses == [429, 429, 202]
    assert len(do_fake.live()) == 2
    _shutdown(provider, infra, instances)


def test_5xx_during_destroy_and_an_ignored_destroy(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    provider.redestroy_after = 0.5
    infra, instances = _launch(provider, build_spec(nodes=2, cpu=2))
    do_fake.fail_next("droplets_destroy", 503, times=2)
    do_fake.ignore_destroy_next(1)
    _shutdown(provider, infra, instances)
    assert do_fake.live() == []
    destroys = [c for c in do_fake.calls if c.operation == "droplets_destroy"]
    assert [c.status for c in destroys].count(503) == 2
    assert len([c for c in destroys if c.status == 204]) == 3, "one destroy re-issued"


def test_teardown_keeps_the_tag_while_droplets_remain(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    provider.teardown_wait = 0.3
    provider.redestroy_after = 100
    infra, _ = _launch(provider, build_spec(cpu=2))
    do_fake.ignore_destroy_next(1)
    with pytest.raises(ProvisioningError, match="skyward down"):
        provider.teardown(infra)
    tag = f"skyward:pool:{POOL}"
    assert tag in do_fake.tags
    assert do_fake.firewalls_tagged(tag)
    assert [i.tags["skyward:pool"] for i in provider.list_by_tag(POOL)] == [POOL]
    provider.terminate(provider.list_by_tag(POOL))
    provider.teardown_wait = 5
    provider.teardown(infra)
    assert do_fake.live() == []
    assert do_fake.firewalls == {}
    assert tag not in do_fake.tags


def test_prepare_failure_leaves_nothing(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    do_fake.fail_next("firewalls_create", 422)
    with pytest.raises(ProvisioningError):
        provider.prepare(build_spec(cpu=2), POOL)
    assert do_fake.keys == {}
    assert do_fake.firewalls == {}
    assert do_fake.tags == set()


def test_a_lost_key_create_answer_is_found_by_fingerprint(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    do_fake.fail_next("sshKeys_create", 500, after=True)
    do_fake.fail_next("firewalls_create", 502, after=True)
    infra = provider.prepare(build_spec(cpu=2), POOL)
    firewall_creates = [c.status for c in do_fake.calls if c.operation == "firewalls_create"]
    assert firewall_creates == [502], "found by name, not made again"
    assert list(do_fake.keys) == [infra.key_id]
    assert list(do_fake.firewalls) == [infra.firewall_id]
    assert "sshKeys_list" not in do_fake.operations(), "key listing allows 10 a minute"
    provider.teardown(infra)
    do_fake.calls.clear()
    do_fake.rate_limit_next(2, retry_after=0, operation="sshKeys_create")
    infra = provider.prepare(build_spec(cpu=2), "sky-other0000000")
    key_creates = [c.status for c in do_fake.calls if c.operation == "sshKeys_create"]
    assert key_creates == [429, 429, 201]
    assert len(do_fake.keys) == 1
    provider.teardown(infra)
    assert do_fake.keys == {}
    assert do_fake.firewalls == {}


def test_leftovers_of_dead_clients_are_listed_and_removed(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    provider.prepare(build_spec(cpu=2), "sky-dead00000000")
    live, instances = _launch(provider, build_spec(cpu=2), "sky-live00000000")
    every = provider.list_leftovers()
    assert sorted(i.kind for i in every) == [
        "firewall",
        "firewall",
        "ssh-key",
        "ssh-key",
        "tag",
        "tag",
    ]
    assert {i.pool for i in every} == {"sky-dead00000000", "sky-live00000000"}
    dead = provider.list_leftovers("sky-dead00000000")
    assert sorted(i.kind for i in dead) == ["firewall", "ssh-key", "tag"]
    failed = provider.remove_leftovers(every)
    assert sorted(i.kind for i, _ in failed) == ["firewall", "ssh-key", "tag"]
    assert {reason for _, reason in failed} == {"its pool still has droplets"}
    assert [k["name"] for k in do_fake.keys.values()] == ["skyward-sky-live00000000"]
    assert "skyward:pool:sky-dead00000000" not in do_fake.tags
    _shutdown(provider, live, instances)
    assert provider.list_leftovers() == []


def test_volumes_are_refused_before_any_call() -> None:
    with pytest.raises(ConfigurationError) as refused:
        sky.ComputePool(
            provider=sky.DigitalOcean(token="x"),  # type: ignore[attr-defined]
            cpu=2,
            volume=sky.S3Volume(mount_path="/data", bucket="data"),
        )
    assert refused.value.field == "volumes"


def test_an_image_id_goes_out_as_a_number(do_fake: FakeDigitalOcean) -> None:
    from tests.do_fakes import IMAGES

    ident = IMAGES["ubuntu-22-04-x64"]["id"]
    provider = _provider(image=str(ident))
    infra, instances = _launch(provider, build_spec(cpu=2))
    (create,) = _creates(do_fake)
    assert create.body["image"] == ident
    _shutdown(provider, infra, instances)


def test_gpu_droplets_are_found_even_if_tag_listings_omit_them(do_fake: FakeDigitalOcean) -> None:
    do_fake.gpus_in_tag_listing = False
    provider = _provider()
    infra, instances = _launch(provider, build_spec(accelerator="H100"))
    assert [i.id for i in provider.list_by_tag(POOL)] == [instances[0].id]
    assert [i.id for i in provider.list_by_tag()] == [instances[0].id]
    assert _wait_running(provider, instances)[0].ip
    _shutdown(provider, infra, instances)
    assert do_fake.live() == []


def test_the_client_address_comes_from_checkip(
    do_fake: FakeDigitalOcean, monkeypatch: pytest.MonkeyPatch
) -> None:
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"127.0.0.9\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(
            "SKYWARD_DIGITALOCEAN_CHECKIP_URL", f"http://127.0.0.1:{server.server_port}/"
        )
        provider = sky.DigitalOcean(region="tor1").create()  # type: ignore[attr-defined]
        infra = provider.prepare(build_spec(cpu=2), POOL)
        (firewall,) = do_fake.firewalls.values()
        assert firewall["inbound_rules"][0]["sources"] == {"addresses": ["127.0.0.9/32"]}
        provider.teardown(infra)
        monkeypatch.setenv("SKYWARD_DIGITALOCEAN_CHECKIP_URL", "http://127.0.0.1:1/")
        with pytest.raises(ProvisioningError, match="ssh_cidr"):
            provider.prepare(build_spec(cpu=2), POOL)
        assert do_fake.keys == {}
    finally:
        server.shutdown()
        server.server_close()


def test_the_hourly_limit_used_up_is_a_clear_error_not_an_hour_of_waiting(
    do_fake: FakeDigitalOcean,
) -> None:
    provider = _provider()
    assert _offers(provider, build_spec(cpu=2))
    with do_fake._lock:  # another client of this token used the hour up
        do_fake.hourly_limit = len(do_fake._requests)
    started = time.monotonic()
    with pytest.raises(ProvisioningError, match=r"rate limit .* used up until \d\d:\d\d") as err:
        provider.prepare(build_spec(cpu=2), POOL)
    assert time.monotonic() - started < 5
    assert "DIGITALOCEAN" not in str(err.value)
    limited = [c for c in do_fake.calls if c.status == 429]
    assert limited
    assert limited[0].operation == "tags_create"
    do_fake.hourly_limit = 5000
    fresh = _provider()  # a new hour (this client remembers none was left)
    fresh.remove_leftovers(fresh.list_leftovers())
    assert do_fake.keys == {}
    assert do_fake.tags == set()


def test_droplets_of_a_lost_create_that_list_late_are_not_kept_twice(
    do_fake: FakeDigitalOcean,
) -> None:
    do_fake.listing_lag = 3.0  # longer than the backoff before the reconciling listing
    do_fake.fail_next("droplets_create", 500, after=True)
    provider = _provider()
    provider.settle_seconds = 3.5
    infra, instances = _launch(provider, build_spec(nodes=2, cpu=2))
    assert len(_creates(do_fake)) == 2, "the first droplets were not listed yet"
    time.sleep(do_fake.destroy_seconds + 0.1)
    live = do_fake.live()
    assert sorted(d.name for d in live) == [f"{POOL}-0", f"{POOL}-1"]
    assert {i.id for i in instances} == {str(d.id) for d in live}
    _shutdown(provider, infra, instances)


def test_the_token_never_reaches_logs(
    do_fake: FakeDigitalOcean, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    logging.getLogger("azure").setLevel(logging.DEBUG)
    provider = sky.DigitalOcean(  # type: ignore[attr-defined]
        region="tor1", ssh_cidr="127.0.0.1/32", token=do_fake.token
    ).create()
    provider.poll_interval = 0.1
    do_fake.fail_next("droplets_create", 500)
    infra, instances = _launch(provider, build_spec(cpu=2))
    _shutdown(provider, infra, instances)
    assert caplog.records, "azure-core logged the requests"
    assert do_fake.token not in caplog.text
    assert do_fake.token not in repr(provider)
    assert do_fake.token not in repr(infra)


def test_the_endpoint_defaults_to_digitalocean(monkeypatch: pytest.MonkeyPatch) -> None:
    from skyward_digitalocean.api import endpoint

    monkeypatch.delenv("SKYWARD_DIGITALOCEAN_ENDPOINT", raising=False)
    assert endpoint() == "https://api.digitalocean.com"
    monkeypatch.setenv("SKYWARD_DIGITALOCEAN_ENDPOINT", "http://127.0.0.1:9/ ")
    assert endpoint() == "http://127.0.0.1:9"


def test_no_request_is_sent_once_the_headers_say_none_is_left(do_fake: FakeDigitalOcean) -> None:
    provider = _provider()
    with do_fake._lock:
        do_fake.hourly_limit = len(do_fake._requests) + 3
    assert _offers(provider, build_spec(cpu=2))  # regions, two pages of sizes: the last 3
    sent = len(do_fake.calls)
    with pytest.raises(ProvisioningError, match=r"rate limit .* used up until"):
        provider.offers(build_spec(cpu=4))
    assert len(do_fake.calls) == sent, "refused by the client, not by DigitalOcean"


def test_a_read_only_token_is_a_clear_error_and_leaves_nothing(do_fake: FakeDigitalOcean) -> None:
    do_fake.read_only = True
    provider = _provider()
    assert _offers(provider, build_spec(cpu=2)), "reading works"
    with pytest.raises(ConfigurationError, match="write scope") as refused:
        provider.prepare(build_spec(cpu=2), POOL)
    assert refused.value.field == "token"
    assert do_fake.tags == set()


DO_PARAMETERS = [
    "region",
    "token",
    "image",
    "vpc_uuid",
    "ssh_cidr",
    "username",
    "instance_timeout",
]


@pytest.mark.parametrize("name", DO_PARAMETERS)
def test_any_value_for_any_parameter_builds_or_is_named(
    name: str, do_fake: FakeDigitalOcean
) -> None:
    from hypothesis import given

    from tests.test_constructors_property import ANYTHING, PROPERTY, builds_or_names

    @PROPERTY
    @given(value=ANYTHING)
    def check(value: Any) -> None:
        builds_or_names(name, lambda: sky.DigitalOcean(**{name: value}))  # type: ignore[attr-defined]

    check()
    assert do_fake.calls == [], "constructing DigitalOcean(...) called DigitalOcean"
