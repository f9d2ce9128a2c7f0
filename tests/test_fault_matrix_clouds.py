"""The DigitalOcean and Verda columns of the fault matrix can fail: what their targets
count as left (``Target.leftovers``) sees every kind of resource the provider makes, made
here through the real clients on the fakes, and the client program's user-data readers
(DigitalOcean's metadata service, Verda's scripts API) hand back what the instance was
created with.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from skyward.provider import Instance, InstanceState
from tests.conftest import wait_until
from tests.do_fakes import FakeDigitalOcean, do_fake, pydo_client
from tests.fault_matrix import DigitalOceanTarget, VerdaTarget
from tests.verda_fakes import VerdaFake, verda_env, verda_fake

__all__ = ["do_fake", "verda_env", "verda_fake"]

PUBLIC_KEY = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519" + b"k" * 36).decode()


def _empty(leftovers: dict[str, list[str]]) -> list[str]:
    return sorted(kind for kind, found in leftovers.items() if not found)


def test_the_digitalocean_target_sees_every_kind_it_counts(
    do_fake: FakeDigitalOcean, tmp_path: Path
) -> None:
    target = DigitalOceanTarget()
    target.fake, target.hosts, target.scratch = do_fake, [], tmp_path / "cloud-init"
    assert _empty(target.leftovers("sky-x")) == [
        "agents", "droplets", "firewalls", "ssh keys", "tags"
    ]  # fmt: skip
    client = pydo_client(do_fake.url)
    tag = "skyward:pool:sky-x"
    client.tags.create({"name": tag})
    key = client.ssh_keys.create({"name": "skyward-sky-x", "public_key": PUBLIC_KEY})
    client.firewalls.create(
        {
            "name": "skyward-sky-x",
            "tags": [tag],
            "inbound_rules": [
                {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["127.0.0.1/32"]}}
            ],
            "outbound_rules": [],
        }
    )
    do_fake.boot_seconds = 300  # powered on or not, a droplet bills: it is counted at once
    droplet = client.droplets.create(
        {
            "name": "sky-x-0",
            "size": "gpu-h100x1-80gb",
            "region": "tor1",
            "image": "gpu-h100x1-base",
            "ssh_keys": [key["ssh_key"]["id"]],
            "tags": [tag],
            "user_data": "#!/bin/sh\necho booted\n",
        }
    )["droplet"]
    left = target.leftovers("sky-x")
    assert _empty(left) == ["agents"]
    assert left["droplets"] == [str(droplet["id"])], "a GPU droplet is counted too"
    instance = Instance(str(droplet["id"]), "digitalocean", InstanceState.PENDING)
    assert DigitalOceanTarget.remote_user_data(instance) == "#!/bin/sh\necho booted\n"
    assert do_fake.calls[-1].operation == "droplets_create", "the metadata service is no API call"
    target.cleanup("sky-x")
    assert wait_until(lambda: len(_empty(target.leftovers("sky-x"))) == 5, 5), "cleanup empties"


def test_the_verda_target_sees_every_kind_it_counts(verda_env: VerdaFake, tmp_path: Path) -> None:
    from skyward_verda.api import VerdaAPI

    target = VerdaTarget()
    target.fake, target.hosts, target.scratch = verda_env, [], tmp_path / "cloud-init"
    assert _empty(target.leftovers("sky-y")) == [
        "agents", "billed", "instances", "scripts", "ssh keys", "volumes"
    ]  # fmt: skip
    api = VerdaAPI(verda_env.url, *next(iter(verda_env.clients.items())))
    key = api.create("/ssh-keys", {"name": "skyward-sky-y", "key": PUBLIC_KEY})
    script = api.create("/scripts", {"name": "skyward-sky-y", "script": "#!/bin/sh\necho up\n"})
    body: dict[str, Any] = {
        "instance_type": "CPU.4V.16G",
        "image": "ubuntu-24.04",
        "hostname": "skyward-sky-y-0",
        "description": "skyward pool=sky-y",
        "location_code": "FIN-01",
        "ssh_key_ids": [key],
        "startup_script_id": script,
    }
    ident = api.create("/instances", body)
    left = target.leftovers("sky-y")
    assert _empty(left) == ["agents"], "its OS volume bills from the start"
    assert left["instances"] == [ident]
    assert len(left["volumes"]) == 1, "its OS volume"
    instance = Instance(ident, "verda", InstanceState.PENDING)
    assert VerdaTarget.remote_user_data(instance) == "#!/bin/sh\necho up\n"
    # a deleted instance whose volume went to the trash (not permanently) is still counted
    verda_env.ordered_seconds = verda_env.provisioning_seconds = 0.0
    api.request("PUT", "/instances", json={"action": "delete", "id": [ident]})
    left = target.leftovers("sky-y")
    assert left["volumes"], "a volume in the trash is counted"
    api.close()


@pytest.mark.parametrize("target", [DigitalOceanTarget, VerdaTarget])
def test_every_fault_of_the_cloud_targets_is_injected_or_declared(target: type[Any]) -> None:
    from tests.fault_matrix import Fault

    for fault in Fault:
        assert fault in target.injections or fault in target.not_applicable or fault in {
            Fault.RETURN, Fault.EXCEPTION, Fault.CTRL_C, Fault.SIGTERM, Fault.SIGKILL_DOWN
        }, fault  # fmt: skip
    assert not target.not_applicable, "every cell of a cloud applies"
    assert not target.known_bugs
