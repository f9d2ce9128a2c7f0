"""The Kubernetes provider against the real control plane and fake kubelets.

Offers from the nodes' capacity and running requests, launch/describe/terminate/teardown,
the scheduler's own messages as capacity errors, image and admission failures, cleanup on
every failure path, the anchor's garbage collection and the ``skyward down`` sweep.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import skyward as sky
from skyward.errors import CapacityError, ProvisioningError
from skyward.provider import InstanceState, LaunchRequest
from skyward.spec import ComputeSpec, build_spec
from skyward_kubernetes import Kubernetes
from skyward_kubernetes.provider import KubeInfrastructure, KubernetesProvider
from skyward_kubernetes.transport import KubeTransport
from tests.conftest import wait_until
from tests.kube_fixtures import KubeCluster, kube, namespace

__all__ = ["kube", "namespace"]

pytestmark = pytest.mark.slow


@pytest.fixture
def provider(kube: KubeCluster, namespace: str) -> KubernetesProvider:
    config = Kubernetes(
        kubeconfig=str(kube.plane.kubeconfig),
        context="skyward-test",
        namespace=namespace,
        schedule_timeout=3,
    )
    created = config.create()
    assert isinstance(created, KubernetesProvider)
    return created


def pods(kube: KubeCluster, namespace: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = kube.api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    return items


def objects(kube: KubeCluster, namespace: str, kind: str) -> list[str]:
    items = kube.api.get(f"/api/v1/namespaces/{namespace}/{kind}")["items"]
    return [i["metadata"]["name"] for i in items if i["metadata"]["name"] != "kube-root-ca.crt"]


def launch(
    provider: KubernetesProvider, spec: ComputeSpec, pool_id: str
) -> tuple[KubeInfrastructure, list[sky.provider.Instance]]:
    infra = provider.prepare(spec, pool_id)
    assert isinstance(infra, KubeInfrastructure)
    [offer, *_] = provider.offers(spec)
    tags = {"skyward:managed": "true", "skyward:pool": pool_id}
    request = LaunchRequest(pool_id=pool_id, offer=offer, count=spec.nodes, spec=spec, tags=tags)
    return infra, list(provider.launch(infra, request))


def test_offers_from_real_nodes(
    provider: KubernetesProvider, kube: KubeCluster, namespace: str
) -> None:
    spec = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.H100(count=8), nodes=2)
    # Pods of earlier tests may still be terminating: wait until the GPUs are all free.
    assert wait_until(lambda: provider.offers(spec)[0].extra["fits"] == "2", 30)
    [offer] = provider.offers(spec)
    assert offer.instance_type == "p5.48xlarge"
    assert (offer.accelerator, offer.accelerator_count) == ("H100", 8)
    assert offer.extra["fits"] == "2"
    assert offer.available
    assert offer.region == f"skyward-test/{namespace}"
    assert not provider.offers(
        build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.H100(count=8), nodes=3)
    )[0].available
    # A running pod's request is subtracted.
    kube.api.post(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "metadata": {"name": "hog"},
            "spec": {
                "nodeName": "h100-0",
                "containers": [
                    {"name": "c", "image": "python:3.11-slim", "command": ["sleep", "60"],
                     "resources": {"limits": {"nvidia.com/gpu": "4"}}}
                ],
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            },
        },
    )  # fmt: skip
    assert wait_until(
        lambda: (
            provider.offers(build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.H100(count=4)))[
                0
            ].extra["fits"]
            == "3"
        ),
        10,
    )
    [cpu] = provider.offers(build_spec(cpu=2))
    assert cpu.instance_type == "node"  # the tainted GPU nodes are not offered to CPU pools
    assert cpu.accelerator is None


def test_launch_describe_terminate_teardown(
    provider: KubernetesProvider, kube: KubeCluster, namespace: str
) -> None:
    spec = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.H100(count=2), nodes=2)
    started = time.monotonic()
    infra, instances = launch(provider, spec, "sky-launch1")
    elapsed = time.monotonic() - started
    assert [i.id for i in instances] == ["sky-launch1-0", "sky-launch1-1"]
    assert all(i.state is InstanceState.RUNNING for i in instances)
    ips = {i.private_ip for i in instances}
    assert len(ips) == 2
    assert None not in ips
    assert all(i.tags["skyward:pool"] == "sky-launch1" for i in instances)
    assert {i.tags["node"] for i in instances} <= {"h100-0", "h100-1"}
    assert objects(kube, namespace, "services") == ["sky-launch1"]
    assert objects(kube, namespace, "configmaps") == ["sky-launch1"]
    print(f"2 pods running {elapsed:.2f} s after launch")
    assert [i.state for i in provider.describe(instances)] == [InstanceState.RUNNING] * 2
    provider.terminate(instances)
    assert wait_until(
        lambda: all(i.state is InstanceState.TERMINATED for i in provider.describe(instances)), 20
    )
    provider.teardown(infra)
    assert wait_until(lambda: not objects(kube, namespace, "services"), 10)
    assert not objects(kube, namespace, "configmaps")
    assert not pods(kube, namespace)


def test_unschedulable_pool_is_a_capacity_error_with_the_scheduler_reason(
    provider: KubernetesProvider, kube: KubeCluster, namespace: str
) -> None:
    # Three nodes of 8 GPUs asked for, two nodes exist: partial scheduling, all or nothing.
    spec = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.H100(count=8), nodes=3)
    with pytest.raises(CapacityError) as error:
        launch(provider, spec, "sky-toobig")
    # One pod cannot fit; the scheduler may still be backing off a second one.
    assert re.search(
        r"[12] of 3 pods unschedulable after \d+ s: 0/3 nodes are available", str(error.value)
    )
    assert "Insufficient nvidia.com/gpu" in str(error.value)
    assert wait_until(lambda: not pods(kube, namespace), 20)


def test_image_error_is_a_provisioning_error_at_once(kube: KubeCluster, namespace: str) -> None:
    config = Kubernetes(
        kubeconfig=str(kube.plane.kubeconfig), namespace=namespace, image="nosuch/image:1",
        schedule_timeout=60,
    )  # fmt: skip
    provider = config.create()
    assert isinstance(provider, KubernetesProvider)
    started = time.monotonic()
    with pytest.raises(ProvisioningError) as error:
        launch(provider, build_spec(cpu=1), "sky-badimage")
    assert not isinstance(error.value, CapacityError)
    assert "ErrImagePull" in str(error.value)
    assert time.monotonic() - started < 30  # not the 60 s scheduling timeout
    assert wait_until(lambda: not pods(kube, namespace), 20)


def test_admission_refusal_names_the_namespace_policy(
    provider: KubernetesProvider, kube: KubeCluster, namespace: str
) -> None:
    kube.api.post(
        f"/api/v1/namespaces/{namespace}/resourcequotas",
        {"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}},
    )
    # The quota controller fills in usage asynchronously; wait until it is enforced.
    assert wait_until(
        lambda: (
            "used"
            in kube.api.get(f"/api/v1/namespaces/{namespace}/resourcequotas/one-pod").get(
                "status", {}
            )
        ),
        20,
    )
    with pytest.raises(ProvisioningError) as error:
        launch(provider, build_spec(cpu=1, nodes=2), "sky-quota")
    assert "refused in namespace" in str(error.value)
    assert "exceeded quota" in str(error.value)
    assert wait_until(lambda: not pods(kube, namespace), 20)


def test_deleting_the_anchor_garbage_collects_the_pool(
    provider: KubernetesProvider, kube: KubeCluster, namespace: str
) -> None:
    infra, _ = launch(provider, build_spec(cpu=1, nodes=2), "sky-gc")
    kube.api.delete(
        f"/api/v1/namespaces/{namespace}/configmaps/{infra.anchor}",
        {"propagationPolicy": "Background"},
    )
    assert wait_until(
        lambda: not pods(kube, namespace) and not objects(kube, namespace, "services"), 30
    )


def test_skyward_down_sweeps_failed_pods_and_pool_objects(
    provider: KubernetesProvider, kube: KubeCluster, namespace: str
) -> None:
    launch(provider, build_spec(cpu=1, nodes=2), "sky-orphan")
    # One pod ends on its own (its deadline, a crash): bare pods stay, Failed.
    kube.api.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/sky-orphan-1",
        {"spec": {"activeDeadlineSeconds": 1}},
        content_type="application/merge-patch+json",
    )
    assert wait_until(
        lambda: (
            kube.api.get(f"/api/v1/namespaces/{namespace}/pods/sky-orphan-1")["status"]["phase"]
            == "Failed"
        ),
        20,
    )
    found = provider.list_by_tag()
    assert sorted(i.id for i in found) == ["sky-orphan-0", "sky-orphan-1"]
    assert {i.tags["skyward:pool"] for i in found} == {"sky-orphan"}
    assert [i.id for i in provider.list_by_tag("sky-other")] == []
    provider.terminate(found)
    assert wait_until(lambda: not pods(kube, namespace), 20)
    assert wait_until(lambda: not objects(kube, namespace, "services"), 10)
    assert not objects(kube, namespace, "configmaps")


def test_poweroff_command_ends_the_pod(
    provider: KubernetesProvider, kube: KubeCluster, namespace: str
) -> None:
    """What the agent runs on power-off (SKYWARD_POWEROFF_CMD) stops the keeper: the pod
    Succeeds and frees its resources, and nothing else on the machine is signalled."""
    _, [instance] = launch(provider, build_spec(cpu=1), "sky-poweroff")
    run = kube.kubelets[instance.tags["node"]].running_pod(namespace, instance.id)
    assert run is not None
    home = run.directory / "volumes" / "home"  # the emptyDir at $HOME
    assert wait_until(lambda: (home / ".skyward" / "keeper.pid").exists(), 10)
    command = next(
        e["value"]
        for e in kube.api.get(f"/api/v1/namespaces/{namespace}/pods/{instance.id}")["spec"][
            "containers"
        ][0]["env"]
        if e["name"] == "SKYWARD_POWEROFF_CMD"
    )
    # Inside the pod, as the agent would (through exec: the pod's PID namespace, where the
    # keeper is PID 1 — never from this machine's namespace).
    transport = provider.connect(None, instance)  # type: ignore[arg-type]
    assert isinstance(transport, KubeTransport)
    transport.run(command, timeout=10)
    assert wait_until(
        lambda: (
            kube.api.get(f"/api/v1/namespaces/{namespace}/pods/{instance.id}")["status"]["phase"]
            == "Succeeded"
        ),
        20,
    )
    assert provider.describe([instance])[0].state is InstanceState.TERMINATED


def test_same_named_pod_of_another_owner_is_never_replaced(
    provider: KubernetesProvider, kube: KubeCluster, namespace: str
) -> None:
    kube.api.post(
        f"/api/v1/namespaces/{namespace}/pods",
        {"metadata": {"name": "sky-taken-0"}, "spec": {"containers": [
            {"name": "c", "image": "python:3.11-slim", "command": ["sleep", "60"]}]}},
    )  # fmt: skip
    with pytest.raises(ProvisioningError, match="already exists"):
        launch(provider, build_spec(cpu=1), "sky-taken")
    assert [p["metadata"]["name"] for p in pods(kube, namespace)] == ["sky-taken-0"]  # type: ignore[index]


def test_missing_kubeconfig_or_context_is_a_clear_error(kube: KubeCluster, tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError, match="no kubeconfig"):
        Kubernetes(kubeconfig=str(tmp_path / "none")).create()
    with pytest.raises(ProvisioningError, match=r"no context 'prod'.*skyward-test"):
        Kubernetes(kubeconfig=str(kube.plane.kubeconfig), context="prod").create()
