"""The Verda fake is faithful: Verda's own Python SDK (``verda``) drives every call the
provider depends on, with ``RuntimeWarning`` as an error so a missing field fails (the SDK
fills absent fields with ``None`` and warns)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from verda import VerdaClient
from verda.exceptions import APIException
from verda.instances import OSVolume

from tests.verda_fakes import CLIENT_ID, CLIENT_SECRET, VerdaFake, verda_env, verda_fake

__all__ = ["verda_env", "verda_fake"]

GPU_IMAGE = "ubuntu-24.04-cuda-12.8-open-docker"

# Only this module: the SDK warns (RuntimeWarning) when a response lacks a field it knows.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@pytest.fixture
def fake(verda_env: VerdaFake) -> VerdaFake:
    verda_env.ordered_seconds = 0.1
    verda_env.provisioning_seconds = 0.1
    verda_env.deleting_seconds = 0.1
    return verda_env


@pytest.fixture
def sdk(fake: VerdaFake) -> VerdaClient:
    return VerdaClient(CLIENT_ID, CLIENT_SECRET, base_url=fake.url)


def _wait(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_client_credentials_refresh_and_fresh_grant(fake: VerdaFake) -> None:
    with pytest.raises(APIException) as refused:
        VerdaClient(CLIENT_ID, "wrong", base_url=fake.url)
    assert refused.value.code == "unauthorized_request"
    fake.token_lifetime = 1  # the SDK refreshes before a call once its token has expired
    sdk = VerdaClient(CLIENT_ID, CLIENT_SECRET, base_url=fake.url)
    time.sleep(1.1)
    assert sdk.balance.get().amount == 100.0
    grants = [c.body["grant_type"] for c in fake.calls if c.path == "/oauth2/token"]
    assert grants[-2:] == ["client_credentials", "refresh_token"]
    fake.token_lifetime = 3600
    fake.expire_tokens(refresh_too=True)  # refresh refused (401) → a fresh grant
    sdk._http_client._auth_service._expires_at = 0
    assert sdk.locations.get()
    grants = [c.body["grant_type"] for c in fake.calls if c.path == "/oauth2/token"]
    assert grants[-2:] == ["refresh_token", "client_credentials"]


def test_token_endpoint_accepts_form_bodies_and_checks_bearers(fake: VerdaFake) -> None:
    answer = requests.post(
        fake.url + "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
        timeout=5,
    )
    assert answer.status_code == 200
    assert answer.json()["token_type"] == "Bearer"
    for header in ({}, {"Authorization": "Bearer nope"}):
        refused = requests.get(fake.url + "/instances", headers=header, timeout=5)
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthorized_request"


def test_catalog_types_availability_locations_images(sdk: VerdaClient, fake: VerdaFake) -> None:
    types = {t.instance_type: t for t in sdk.instance_types.get()}
    assert types["1H100.80S.30V"].price_per_hour == 3.95
    assert types["1H100.80S.30V"].spot_price_per_hour == 1.70
    assert [c.query for c in fake.calls if c.path == "/instance-types"] == [{"currency": ["usd"]}]
    fake.set_available("1H100.80S.30V", location="FIN-02", spot=True, available=False)
    spot = {
        e["location_code"]: e["availabilities"]
        for e in sdk.instances.get_availabilities(is_spot=True)
    }
    on_demand = {
        e["location_code"]: e["availabilities"]
        for e in sdk.instances.get_availabilities(is_spot=False)
    }
    assert "1H100.80S.30V" not in spot["FIN-02"]
    assert "1H100.80S.30V" in on_demand["FIN-02"]
    assert sdk.instances.is_available("1H100.80S.30V", is_spot=True, location_code="FIN-01")
    assert not sdk.instances.is_available("1H100.80S.30V", is_spot=True, location_code="FIN-02")
    # the spec spells the flag is_spot; the SDK sends isSpot: both are read
    flag = requests.get(
        fake.url + "/instance-availability",
        params={"is_spot": "true", "location_code": "FIN-02"},
        headers={"Authorization": f"Bearer {sdk._http_client._auth_service._access_token}"},
        timeout=5,
    )
    assert "1H100.80S.30V" not in flag.json()[0]["availabilities"]
    assert [loc["code"] for loc in sdk.locations.get()] == ["FIN-01", "FIN-02", "FIN-03"]
    assert {i.image_type for i in sdk.images.get()} == {"ubuntu-24.04", GPU_IMAGE}
    assert [i.image_type for i in sdk.images.get(instance_type="CPU.4V.16G")] == ["ubuntu-24.04"]
    assert [i.image_type for i in sdk.images.get(instance_type="1V100.6V")] == [GPU_IMAGE]


def test_keys_and_scripts_under_both_paths(sdk: VerdaClient, fake: VerdaFake) -> None:
    key_id = sdk.ssh_keys.create("skyward-p1", "ssh-ed25519 AAAAC3Nza skyward-p1").id
    assert sdk.ssh_keys.get_by_id(key_id).name == "skyward-p1"
    assert [k.id for k in sdk.ssh_keys.get()] == [key_id]
    assert fake.count("POST", "/sshkeys") == 1
    script_id = sdk.startup_scripts.create("skyward-p1", "#!/bin/sh\ntrue\n").id
    assert sdk.startup_scripts.get_by_id(script_id).script.startswith("#!/bin/sh")
    sdk.ssh_keys.delete_by_id(key_id)
    sdk.ssh_keys.delete_by_id(key_id)  # already gone: no error
    sdk.startup_scripts.delete([script_id])
    assert sdk.ssh_keys.get() == []
    assert sdk.startup_scripts.get() == []
    fake.script_quota = 1
    sdk.startup_scripts.create("a", "true")
    with pytest.raises(APIException, match="limit"):
        sdk.startup_scripts.create("b", "true")


def _create(sdk: VerdaClient, hostname: str, *, spot: bool = False) -> str:
    key = sdk.ssh_keys.create(hostname, "ssh-ed25519 AAAAC3Nza x").id
    instance = sdk.instances.create(
        instance_type="1H100.80S.30V",
        image=GPU_IMAGE,
        hostname=hostname,
        description=f"skyward pool={hostname}",
        ssh_key_ids=[key],
        location="FIN-01",
        os_volume=OSVolume(f"{hostname}-os", 50, "delete_permanently" if spot else None),
        is_spot=spot,
        contract="SPOT" if spot else None,
        pricing=None if spot else "FIXED_PRICE",
        wait_for_status=None,
    )
    assert instance.status == "ordered"
    return instance.id


def test_instance_lifecycle_and_delete_with_volumes(sdk: VerdaClient, fake: VerdaFake) -> None:
    ident = _create(sdk, "skyward-p1-0")
    with pytest.raises(APIException) as refused:
        sdk.instances.action(ident, "delete", delete_permanently=True)
    assert refused.value.code == "forbidden_action"
    assert "Can't discontinue" in refused.value.message
    _wait(lambda: sdk.instances.get_by_id(ident).status == "running")
    instance = sdk.instances.get_by_id(ident)
    assert instance.ip is not None
    assert instance.pricing == "FIXED_PRICE"
    assert [i.hostname for i in sdk.instances.get(status="running")] == ["skyward-p1-0"]
    volume = sdk.volumes.get_by_id(instance.os_volume_id)
    assert volume.is_os_volume
    assert volume.instance_id == ident
    sdk.instances.action([ident], "delete", volume_ids=[volume.id], delete_permanently=True)
    _wait(lambda: sdk.instances.get_by_id(ident).status == "discontinued")
    assert sdk.instances.get() == []
    assert sdk.volumes.get_by_id(volume.id).status == "deleted"
    assert sdk.volumes.get() == []
    assert sdk.volumes.get_in_trash() == []
    assert fake.billing() == []
    with pytest.raises(APIException, match="Can't discontinue a discontinued"):
        sdk.instances.action(ident, "delete")
    with pytest.raises(APIException, match="Invalid instance id"):
        sdk.instances.get_by_id("00000000-0000-0000-0000-000000000000")


def test_delete_without_volume_ids_trashes_the_os_volume(sdk: VerdaClient, fake: VerdaFake) -> None:
    ident = _create(sdk, "skyward-p2-0")
    _wait(lambda: sdk.instances.get_by_id(ident).status == "running")
    sdk.instances.action(ident, "shutdown")
    assert sdk.instances.get_by_id(ident).status == "offline"
    assert ident in fake.billing(), "a shut-down instance still bills"
    sdk.instances.action(ident, "delete")
    _wait(lambda: sdk.instances.get_by_id(ident).status == "discontinued")
    (trashed,) = sdk.volumes.get_in_trash()
    assert fake.billing() == [trashed.id]
    sdk.volumes.delete_by_id(trashed.id, is_permanent=True)
    assert sdk.volumes.get_in_trash() == []
    assert fake.billing() == []


def test_bulk_delete_answers_207_for_partial_failure(sdk: VerdaClient, fake: VerdaFake) -> None:
    first = _create(sdk, "skyward-p3-0")
    _wait(lambda: sdk.instances.get_by_id(first).status == "running")
    second = _create(sdk, "skyward-p3-1")
    sdk.instances.action([first, second], "delete", volume_ids=[], delete_permanently=True)
    put = [c for c in fake.calls if c.method == "PUT"][-1]
    assert put.status == 207
    assert sdk.instances.get_by_id(second).status in ("ordered", "provisioning")
    assert len(sdk.volumes.get()) == 2, "volume_ids=[]: the OS volume is detached, not deleted"


def test_spot_preemption_follows_on_spot_discontinue(sdk: VerdaClient, fake: VerdaFake) -> None:
    ident = _create(sdk, "skyward-p4-0", spot=True)
    body = next(c.body for c in fake.calls if c.path == "/instances" and c.method == "POST")
    assert body["os_volume"]["on_spot_discontinue"] == "delete_permanently"
    assert body["contract"] == "SPOT"
    fake.preempt(ident)
    assert sdk.instances.get_by_id(ident).status == "discontinued"
    assert sdk.volumes.get() == []
    assert fake.billing() == []
    with pytest.raises(APIException, match="only valid for spot"):
        sdk.instances.create(
            instance_type="1H100.80S.30V",
            image=GPU_IMAGE,
            hostname="x1",
            description="x",
            location="FIN-01",
            os_volume=OSVolume("x", 50, "delete_permanently"),
            wait_for_status=None,
        )


def test_capacity_injected_faults_and_errors_are_json(sdk: VerdaClient, fake: VerdaFake) -> None:
    fake.set_available("1H100.80S.30V", location="FIN-01", available=False)
    with pytest.raises(APIException) as capacity:
        _create(sdk, "skyward-p5-0")
    assert capacity.value.code == "service_unavailable"
    assert "Not enough resources" in capacity.value.message
    assert [c.status for c in fake.calls if c.path == "/instances"][-1] == 503
    fake.set_available("1H100.80S.30V", available=True)
    fault = fake.inject("POST", "/instances", 500, "Internal server error", after=True)
    with pytest.raises(APIException, match="Internal server error"):
        _create(sdk, "skyward-p5-1")
    assert fault.hits == 1
    assert [i.hostname for i in sdk.instances.get()] == ["skyward-p5-1"], "created anyway"
    with pytest.raises(APIException) as missing:
        sdk.instances.create(
            instance_type="1H100.80S.30V",
            image=GPU_IMAGE,
            hostname="y",
            description="y",
            location=None,
            wait_for_status=None,  # type: ignore[arg-type]
        )
    assert missing.value.code == "invalid_request"
    fake.next_status.append("no_capacity")
    ident = _create_plain(sdk)
    assert sdk.instances.get_by_id(ident).status == "no_capacity"


def _create_plain(sdk: VerdaClient) -> str:
    return sdk.instances.create(
        instance_type="CPU.4V.16G",
        image="ubuntu-24.04",
        hostname="plain",
        description="plain",
        location="FIN-02",
        wait_for_status=None,
    ).id


def test_sdk_default_create_waits_past_ordered(sdk: VerdaClient, fake: VerdaFake) -> None:
    instance = sdk.instances.create(
        instance_type="CPU.4V.16G",
        image="ubuntu-24.04",
        hostname="waits",
        description="waits",
        location="FIN-03",
    )
    assert instance.status in ("provisioning", "running")
    assert instance.location == "FIN-03"


def test_the_warning_guard_catches_a_missing_field(
    sdk: VerdaClient, fake: VerdaFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proof that the module's filter works: an instance without ``gpu_memory`` fails."""
    ident = _create(sdk, "skyward-p6-0")
    render = fake._render

    def without_gpu_memory(item: Any) -> dict[str, Any]:
        data = render(item)
        data.pop("gpu_memory")
        return data

    monkeypatch.setattr(fake, "_render", without_gpu_memory)
    with pytest.raises(RuntimeWarning):
        sdk.instances.get_by_id(ident)


def test_both_key_paths_share_one_store_and_volumes_delete_in_bulk(
    sdk: VerdaClient, fake: VerdaFake
) -> None:
    key_id = sdk.ssh_keys.create("k", "ssh-ed25519 AAAAC3Nza k").id
    bearer = {"Authorization": f"Bearer {sdk._http_client._auth_service._access_token}"}
    listed = requests.get(fake.url + "/ssh-keys", headers=bearer, timeout=5).json()
    assert [k["id"] for k in listed] == [key_id]
    one = requests.get(fake.url + f"/ssh-keys/{key_id}", headers=bearer, timeout=5).json()
    assert [k["name"] for k in one] == ["k"], "by id: a one-element array"
    ident = _create(sdk, "skyward-p7-0")
    _wait(lambda: sdk.instances.get_by_id(ident).status == "running")
    sdk.instances.action(ident, "delete", volume_ids=[])  # volume detached, still billed
    _wait(lambda: sdk.instances.get_by_id(ident).status == "discontinued")
    (volume,) = sdk.volumes.get()
    assert volume.status == "detached"
    assert fake.billing() == [volume.id]
    sdk.volumes.delete([volume.id], is_permanent=True)
    assert sdk.volumes.get() == []
    assert fake.billing() == []


def test_injected_faults_carry_retry_after(sdk: VerdaClient, fake: VerdaFake) -> None:
    fake.inject("GET", "/locations", 429, "Too many requests", retry_after=1)
    bearer = {"Authorization": f"Bearer {sdk._http_client._auth_service._access_token}"}
    answer = requests.get(fake.url + "/locations", headers=bearer, timeout=5)
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "1"
    assert answer.json()["message"] == "Too many requests"
    assert sdk.locations.get(), "once only"


def test_an_image_the_type_cannot_run_is_refused(sdk: VerdaClient) -> None:
    with pytest.raises(APIException, match="Operating system is not valid"):
        sdk.instances.create(
            instance_type="1H100.80S.30V",
            image="ubuntu-24.04",
            hostname="wrong-image",
            description="x",
            location="FIN-01",
            wait_for_status=None,
        )
