"""skyward-integrations reaches the nodes like skyward-core: linked into Local image
environments, shipped as a wheel to SSH hosts; and the rendezvous works across real hosts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import sklearn

import skyward as sky
from skyward.wheels import closure, node_distributions
from tests.ssh_hosts import ClientKey


@sky.integrations.tensorflow(timeout=60)
@sky.compute
def where_am_i() -> dict[str, Any]:
    import skyward_integrations
    from skyward_integrations._distributed import port_for, ranks

    info = sky.instance_info()
    return {
        "python": sys.executable,
        "package": skyward_integrations.__file__,
        "tf_config": json.loads(os.environ["TF_CONFIG"]),
        "torch_env": ranks(info).env(port_for(info, "torch")),
        "head": (info.head_addr, info.head_port),
    }


def test_node_plugins_are_in_the_shipped_closure() -> None:
    assert "skyward-integrations" in node_distributions()
    names = {d.metadata["Name"] for d in closure("skyward-core", *node_distributions())}
    assert {"skyward-core", "skyward-integrations"} <= names
    assert not names & {"skyward-aws", "boto3", "torch", "joblib"}  # only what nodes need


def test_local_image_environments_get_the_package(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    # The same image as the ScikitLearnPool test, so its cached environment is reused.
    image = sky.Image(pip=[f"scikit-learn=={sklearn.__version__}", f"joblib=={joblib.__version__}"])
    with local_pool_factory(nodes=2, image=image, timeout=600) as pool:
        results = where_am_i() @ pool
    assert all(r["python"] != sys.executable for r in results)  # the image's own venv
    assert [r["tf_config"]["task"]["index"] for r in results] == [0, 1]


def test_ssh_hosts_rendezvous_across_real_addresses(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    hosts = ssh_hosts(2)
    provider = sky.SSH(
        hosts=[
            sky.SSHHost(
                h.address, user=h.user, port=h.port, identity_file=str(ssh_client_key.private_path)
            )
            for h in hosts
        ],
        known_hosts=str(ssh_known_hosts),
    )
    with sky.ComputePool(provider=provider, nodes=2, display="quiet", timeout=600) as pool:
        results = where_am_i() @ pool
    head = hosts[0].address
    for node, result in enumerate(results):
        # The package came as a wheel into the host's own environment, not from this checkout.
        assert not result["package"].startswith(str(Path(__file__).resolve().parents[1]))
        env = result["torch_env"]
        assert env["MASTER_ADDR"] == head
        assert env["MASTER_PORT"] == str(result["head"][1])
        assert (env["RANK"], env["WORLD_SIZE"]) == (str(node), "2")
    workers = results[0]["tf_config"]["cluster"]["worker"]
    assert workers[0].startswith(f"{head}:")
    assert all(r["tf_config"]["cluster"]["worker"] == workers for r in results)
