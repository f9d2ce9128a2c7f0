"""The fake DigitalOcean API, driven by the unpatched official client (pydo) over HTTP.

These tests pin down what the fake models (research note ``digitalocean.md``), so the
provider's tests can trust it: every exchange is checked against the published OpenAPI
document by the ``do_fake`` fixture, which fails a test that leaves a violation behind.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from tests.do_fakes import FakeDigitalOcean, do_fake, iter_pages, pydo_client

__all__ = ["do_fake"]

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGmKx8Y9gWjCjUw0bbSNPDeDn3mZP3b0TU0kn3O0O5lK test"
POOL_TAG = "skyward:pool:sky-abc"


def _client(fake: FakeDigitalOcean, **options: Any) -> Any:
    options.setdefault("retry_total", 0)
    return pydo_client(fake.url, **options)


def _create(client: Any, names: list[str], size: str = "s-2vcpu-4gb", **extra: Any) -> Any:
    body = {
        "names": names,
        "size": size,
        "image": "ubuntu-24-04-x64",
        "region": "tor1",
        "tags": ["skyward:managed", POOL_TAG],
        "user_data": "#!/bin/sh\necho hi\n",
        **extra,
    }
    return client.droplets.create(body)


def _tagged(client: Any, tag: str = POOL_TAG) -> list[dict[str, Any]]:
    return list(
        iter_pages(
            lambda page: client.droplets.list(per_page=200, page=page, tag_name=tag), "droplets"
        )
    )


def _public_ip(droplet: dict[str, Any]) -> str | None:
    found = [n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "public"]
    return found[0] if found else None


def test_a_pool_life_validates_against_the_contract(do_fake: FakeDigitalOcean) -> None:
    do_fake.address_seconds = 3.0  # a wide window, for a loaded machine
    client = _client(do_fake)
    key = client.ssh_keys.create({"name": "skyward-sky-abc", "public_key": PUBLIC_KEY})["ssh_key"]
    assert client.tags.create({"name": POOL_TAG})["tag"]["name"] == POOL_TAG
    firewall = client.firewalls.create(
        {
            "name": "skyward-sky-abc",
            "tags": [POOL_TAG],
            "inbound_rules": [
                {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["127.0.0.1/32"]}}
            ],
            "outbound_rules": [
                {"protocol": "tcp", "ports": "0", "destinations": {"addresses": ["0.0.0.0/0"]}}
            ],
        }
    )["firewall"]
    made = _create(client, ["sky-abc-0", "sky-abc-1"], ssh_keys=[key["id"]])
    assert [d["status"] for d in made["droplets"]] == ["new", "new"]
    assert all(d["networks"]["v4"] == [] for d in made["droplets"])
    assert do_fake.user_data(made["droplets"][0]["id"]) == "#!/bin/sh\necho hi\n"
    # active comes before the public address: a client must wait for both
    time.sleep(do_fake.boot_seconds + 0.05)
    early = _tagged(client)
    assert {d["status"] for d in early} == {"active"}
    assert all(_public_ip(d) is None for d in early)
    deadline = time.monotonic() + 10
    while not all(_public_ip(d) for d in _tagged(client)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.droplets.destroy_by_tag(tag_name=POOL_TAG) is None
    time.sleep(do_fake.destroy_seconds + 0.05)
    assert _tagged(client) == []
    assert client.ssh_keys.delete(key["id"]) is None
    assert client.firewalls.delete(firewall["id"]) is None
    assert client.tags.delete(POOL_TAG) is None
    ops = do_fake.operations()
    assert ops[:4] == ["sshKeys_create", "tags_create", "firewalls_create", "droplets_create"]


def test_documented_404s_and_400s_come_back_as_bodies(do_fake: FakeDigitalOcean) -> None:
    client = _client(do_fake)
    assert client.droplets.get(12345)["id"] == "not_found"
    assert client.droplets.destroy(12345)["id"] == "not_found"
    assert client.ssh_keys.delete(999)["id"] == "not_found"
    refused = client.firewalls.create(
        {
            "name": "skyward-x",
            "tags": ["skyward:pool:never-made"],
            "inbound_rules": [
                {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["127.0.0.1/32"]}}
            ],
        }
    )
    assert refused["id"] == "bad_request", "a firewall's tags must exist first"
    assert do_fake.firewalls == {}


def test_limits_the_schema_does_not_state(do_fake: FakeDigitalOcean) -> None:
    client = _client(do_fake)
    with pytest.raises(HttpResponseError) as eleven:
        _create(client, [f"n{i}" for i in range(11)])
    assert eleven.value.status_code == 422
    with pytest.raises(HttpResponseError) as big:
        _create(client, ["n0"], user_data="x" * (64 * 1024 + 1))
    assert big.value.status_code == 422
    do_fake.droplet_limit = 3
    _create(client, ["a", "b"])
    with pytest.raises(HttpResponseError) as limit:
        _create(client, ["c", "d"])
    assert limit.value.status_code == 422
    assert "droplet limit" in limit.value.response.json()["message"]
    with pytest.raises(HttpResponseError) as region:
        _create(client, ["e"], size="m-16vcpu-128gb")  # not sold in tor1
    assert region.value.status_code == 422
    assert len(do_fake.live()) == 2
    assert client.account.get()["account"]["droplet_limit"] == 3


def test_gpu_droplets_are_missing_from_an_untyped_listing(do_fake: FakeDigitalOcean) -> None:
    client = _client(do_fake)
    gpu = _create(client, ["gpu-0"], size="gpu-h100x1-80gb", image="gpu-h100x1-base")
    _create(client, ["cpu-0"])
    plain = client.droplets.list(per_page=200, page=1)["droplets"]
    gpus = client.droplets.list(per_page=200, page=1, type="gpus")["droplets"]
    assert [d["name"] for d in plain] == ["cpu-0"]
    assert [d["name"] for d in gpus] == ["gpu-0"]
    assert gpus[0]["gpu_info"]["model"] == "nvidia_h100"
    assert {d["name"] for d in _tagged(client)} == {"gpu-0", "cpu-0"}
    assert gpu["droplets"][0]["size"]["gpu_info"]["count"] == 1
    with pytest.raises(HttpResponseError) as combined:
        client.droplets.list(per_page=200, page=1, type="gpus", tag_name=POOL_TAG)
    assert combined.value.status_code == 400, "type cannot be combined with tag_name"


def test_sizes_page_at_most_200(do_fake: FakeDigitalOcean) -> None:
    client = _client(do_fake)
    first = client.sizes.list(per_page=200, page=1)
    assert len(first["sizes"]) == 200
    assert first["links"]["pages"]["next"]
    every = list(iter_pages(lambda p: client.sizes.list(per_page=200, page=p), "sizes"))
    assert len(every) == first["meta"]["total"] > 200
    with pytest.raises(HttpResponseError) as refused:
        client.sizes.list(per_page=500, page=1)  # as gpuhunt asks; the contract says no
    assert refused.value.status_code == 400
    assert any("per_page" in v for v in do_fake.violations)
    do_fake.violations.clear()


def test_a_request_outside_the_contract_is_refused_and_recorded(
    do_fake: FakeDigitalOcean,
) -> None:
    client = _client(do_fake)
    with pytest.raises(HttpResponseError) as bad:
        _create(client, ["under_score"])
    assert bad.value.status_code == 400
    assert len(do_fake.violations) == 1
    assert "InvalidRequestBody" in do_fake.violations[0]
    do_fake.violations.clear()
    assert do_fake.live() == []


def test_a_wrong_token_is_refused(do_fake: FakeDigitalOcean) -> None:
    client = pydo_client(do_fake.url, token="nope", retry_total=0)
    with pytest.raises(ClientAuthenticationError):
        client.sizes.list(per_page=200, page=1)


def test_rate_limits_answer_429_with_headers(do_fake: FakeDigitalOcean) -> None:
    client = _client(do_fake)
    do_fake.rate_limit_next(1, retry_after=1)
    with pytest.raises(HttpResponseError) as limited:
        client.sizes.list(per_page=200, page=1)
    response = limited.value.response
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert int(response.headers["ratelimit-limit"]) == 5000
    assert response.json()["id"] == "too_many_requests"
    # pydo's own retries honour retry-after, for a POST too
    retrying = pydo_client(do_fake.url)
    do_fake.rate_limit_next(1, retry_after=1, operation="sshKeys_create")
    started = time.monotonic()
    retrying.ssh_keys.create({"name": "k", "public_key": PUBLIC_KEY})
    assert time.monotonic() - started >= 0.9
    # the burst limit and the key-listing limit
    do_fake.burst_limit = len(do_fake.calls) + 3
    for _ in range(3):
        client.regions.list(per_page=200, page=1)
    with pytest.raises(HttpResponseError) as burst:
        client.regions.list(per_page=200, page=1)
    assert burst.value.status_code == 429
    assert int(burst.value.response.headers["retry-after"]) >= 1
    do_fake.burst_limit = 10_000
    for _ in range(10):
        client.ssh_keys.list(per_page=200, page=1)
    with pytest.raises(HttpResponseError) as keys:
        client.ssh_keys.list(per_page=200, page=1)
    assert keys.value.status_code == 429


def test_a_5xx_after_create_leaves_droplets_and_pydo_retries_make_duplicates(
    do_fake: FakeDigitalOcean,
) -> None:
    client = _client(do_fake)
    do_fake.fail_next("droplets_create", 500, after=True)
    with pytest.raises(HttpResponseError) as lost:
        _create(client, ["sky-abc-0", "sky-abc-1"])
    assert lost.value.status_code == 500
    assert sorted(d["name"] for d in _tagged(client)) == ["sky-abc-0", "sky-abc-1"]
    # azure-core retries a POST on 500: the trap a provider must avoid
    do_fake.reset()
    retrying = pydo_client(do_fake.url)
    do_fake.fail_next("droplets_create", 500, after=True)
    retrying.droplets.create(
        {"names": ["dup-0"], "size": "s-2vcpu-4gb", "image": "ubuntu-24-04-x64", "region": "nyc1"}
    )
    assert [d.name for d in do_fake.live()] == ["dup-0", "dup-0"]


def test_partial_create_and_ignored_destroy(do_fake: FakeDigitalOcean) -> None:
    client = _client(do_fake)
    do_fake.partial_create(made=1, status=503)
    with pytest.raises(HttpResponseError) as partial:
        _create(client, ["p-0", "p-1", "p-2"])
    assert partial.value.status_code == 503
    (only,) = _tagged(client)
    assert only["name"] == "p-0"
    do_fake.ignore_destroy_next()
    assert client.droplets.destroy(only["id"]) is None
    time.sleep(do_fake.destroy_seconds + 0.05)
    assert client.droplets.get(only["id"])["droplet"]["id"] == only["id"]
    client.droplets.destroy(only["id"])
    time.sleep(do_fake.destroy_seconds + 0.05)
    assert client.droplets.get(only["id"])["id"] == "not_found"


def test_5xx_on_destroy_and_sold_out_sizes(do_fake: FakeDigitalOcean) -> None:
    client = _client(do_fake)
    made = _create(client, ["d-0"])["droplets"][0]
    do_fake.fail_next("droplets_destroy", 503)
    with pytest.raises(HttpResponseError) as failed:
        client.droplets.destroy(made["id"])
    assert failed.value.status_code == 503
    assert len(do_fake.live()) == 1
    do_fake.sell_out("gpu-h100x1-80gb")
    with pytest.raises(HttpResponseError) as sold:
        _create(client, ["g-0"], size="gpu-h100x1-80gb", image="gpu-h100x1-base")
    assert sold.value.status_code == 422
    assert "capacity" in sold.value.response.json()["message"]
