"""``sky.Kubernetes(...)``: every parameter validated at construction, no network call;
pod manifests and offers computed from plain dicts (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import skyward as sky
from skyward import plugins
from skyward.errors import ConfigurationError
from skyward.spec import build_spec
from skyward_kubernetes import Kubernetes
from skyward_kubernetes.manifests import (
    DEADLINE_GRACE,
    HOME_MOUNT,
    POWEROFF,
    anchor_manifest,
    labels_from_tags,
    pod_manifest,
    resource_name,
    service_manifest,
    tags_from_labels,
)
from skyward_kubernetes.offers import build_offers, gpu_model, parse_quantity

ANCHOR = {"metadata": {"name": "sky-abc", "uid": "u-1"}}
TAGS = {"skyward:managed": "true", "skyward:pool": "sky-abc"}


def test_sky_kubernetes_resolves_through_the_plugin() -> None:
    assert sky.Kubernetes is Kubernetes
    assert Kubernetes.provider_name == "kubernetes"


def test_import_skyward_loads_no_kubernetes_sdk() -> None:
    code = (
        "import sys, skyward, skyward_kubernetes; "
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('kubernetes', 'websocket', 'urllib3')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_defaults() -> None:
    config = Kubernetes()
    assert config.image_pull_policy == "IfNotPresent"
    assert config.shm_size == "8Gi"
    assert config.schedule_timeout == 300
    assert config.resource_for("NVIDIA") == "nvidia.com/gpu"
    assert config.resource_for("AMD") == "amd.com/gpu"
    assert config.resource_for("Google") == "google.com/tpu"
    assert config.resource_for("AWS") == "aws.amazon.com/neuron"
    assert Kubernetes(gpu_resource="example.com/gpu").resource_for("NVIDIA") == "example.com/gpu"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"namespace": "x" * 64}, "namespace"),
        ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
        ({"image_pull_secrets": ["Not A Secret"]}, "image_pull_secrets"),
        ({"image_pull_secrets": 3}, "image_pull_secrets"),
        ({"service_account": "UPPER"}, "service_account"),
        ({"node_selector": {"bad key:x": "v"}}, "node_selector"),
        ({"node_selector": {"k": "v" * 64}}, "node_selector"),
        ({"node_selector": ["k=v"]}, "node_selector"),
        ({"tolerations": {"key": "x"}}, "tolerations"),
        ({"tolerations": [{"key": "x", "operator": "Maybe"}]}, "tolerations"),
        ({"tolerations": [{"key": "x", "effect": "Sometimes"}]}, "tolerations"),
        ({"tolerations": [{"colour": "red"}]}, "tolerations"),
        ({"affinity": "near"}, "affinity"),
        ({"gpu_resource": "gpu"}, "gpu_resource"),
        ({"gpu_label": "model"}, "gpu_label"),
        ({"runtime_class": "Nvidia!"}, "runtime_class"),
        ({"priority_class": "_high"}, "priority_class"),
        ({"labels": {"skyward/pool": "mine"}}, "labels"),
        ({"labels": {"team": "a b"}}, "labels"),
        ({"annotations": {"": "x"}}, "annotations"),
        ({"shm_size": "lots"}, "shm_size"),
        ({"pod_overrides": ["spec"]}, "pod_overrides"),
        ({"schedule_timeout": 0}, "schedule_timeout"),
        ({"schedule_timeout": True}, "schedule_timeout"),
        ({"hourly_price": -1}, "hourly_price"),
        ({"hourly_price": {"H100": "four"}}, "hourly_price"),
        ({"context": ""}, "context"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        Kubernetes(**kwargs)
    assert error.value.field == field


def test_annotations_take_any_string_value() -> None:
    config = Kubernetes(annotations={"kueue.x-k8s.io/queue-name": "a b c: anything"})
    assert config.annotations["kueue.x-k8s.io/queue-name"] == "a b c: anything"


def test_validate_refuses_what_pods_cannot_do() -> None:
    config = Kubernetes()
    config.validate(build_spec(accelerator="H100", nodes=4))
    with pytest.raises(ConfigurationError, match="volumes"):
        config.validate(build_spec(volumes=[sky.Volume(10, "/data")]))
    with pytest.raises(ConfigurationError, match="MIG"):
        config.validate(build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.A100(mig="1g.10gb")))
    with pytest.raises(ConfigurationError, match="whole number"):
        config.validate(build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.A100(count=0.5)))


def test_pool_construction_validates_without_a_cluster(tmp_path: Any) -> None:
    # A kubeconfig that does not exist: construction still succeeds (nothing is read).
    pool = sky.ComputePool(
        provider=Kubernetes(kubeconfig=str(tmp_path / "none")), accelerator="H100", nodes=2
    )
    assert pool is not None
    with pytest.raises(ConfigurationError):
        sky.ComputePool(provider=Kubernetes(), volumes=[sky.Volume(10, "/data")])


def test_labels_map_core_tags() -> None:
    labels = labels_from_tags(TAGS)
    assert labels == {
        "skyward/managed": "true",
        "skyward/pool": "sky-abc",
        "app.kubernetes.io/managed-by": "skyward",
    }
    assert tags_from_labels(labels) == TAGS
    assert resource_name("sky-0123456789ab") == "sky-0123456789ab"
    assert resource_name("9_Pool:X") == "p-9-pool-x"
    assert len(resource_name("a" * 200)) <= 52


def test_pod_manifest() -> None:
    config = Kubernetes(
        labels={"kueue.x-k8s.io/queue-name": "gpu"},
        annotations={"note": "x"},
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "spot", "operator": "Exists"}],
        service_account="trainer",
        image_pull_secrets=["regcred"],
        runtime_class="nvidia",
        priority_class="high",
    )
    spec = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.H100(count=8), nodes=2, timeout=600)
    pod = pod_manifest(
        config, spec, "sky-abc", 1, TAGS, ANCHOR, ("nvidia.com/gpu.product", "NVIDIA-H100")
    )
    meta, pod_spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "sky-abc-1"
    assert meta["labels"]["skyward/pool"] == "sky-abc"
    assert meta["labels"]["skyward/node"] == "1"
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert meta["annotations"] == {"note": "x"}
    assert meta["ownerReferences"][0]["uid"] == "u-1"
    container = pod_spec["containers"][0]
    assert container["image"] == f"python:{spec.image.python}-slim"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert {"name": "SKYWARD_POWEROFF_CMD", "value": POWEROFF} in container["env"]
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["activeDeadlineSeconds"] == 600 + DEADLINE_GRACE
    assert pod_spec["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec[
        "tolerations"
    ]
    assert {"key": "spot", "operator": "Exists"} in pod_spec["tolerations"]
    assert pod_spec["serviceAccountName"] == "trainer"
    assert pod_spec["automountServiceAccountToken"] is True
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_spec["runtimeClassName"] == "nvidia"
    assert pod_spec["priorityClassName"] == "high"
    assert pod_spec["hostname"] == "node-1"
    assert pod_spec["subdomain"] == "sky-abc"
    assert pod_spec["enableServiceLinks"] is False
    volumes = {v["name"]: v["emptyDir"] for v in pod_spec["volumes"]}
    assert volumes == {"home": {}, "dshm": {"medium": "Memory", "sizeLimit": "8Gi"}}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {HOME_MOUNT, "/dev/shm"}
    assert "podAntiAffinity" in pod_spec["affinity"]
    # Identical on every node but for name and node label (Kueue merges them as one set).
    other = pod_manifest(
        config, spec, "sky-abc", 0, TAGS, ANCHOR, ("nvidia.com/gpu.product", "NVIDIA-H100")
    )
    assert other["spec"] | {"hostname": ""} == pod_spec | {"hostname": ""}


def test_pod_overrides_merge_last_and_none_deletes() -> None:
    config = Kubernetes(
        shm_size=None,
        pod_overrides={
            "metadata": {"annotations": {"extra": "1"}},
            "spec": {"hostIPC": True, "affinity": None},
        },
    )
    pod = pod_manifest(config, build_spec(), "sky-abc", 0, TAGS, ANCHOR)
    assert pod["spec"]["hostIPC"] is True
    assert "affinity" not in pod["spec"]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["home"]  # no /dev/shm volume
    assert pod["metadata"]["annotations"] == {"extra": "1"}
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_service_and_anchor() -> None:
    anchor = anchor_manifest("sky-abc", TAGS, {"pool": "sky-abc"})
    assert anchor["kind"] == "ConfigMap"
    assert anchor["metadata"]["labels"]["skyward/managed"] == "true"
    service = service_manifest("sky-abc", TAGS, ANCHOR)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"skyward/pool": "sky-abc"}
    assert service["metadata"]["ownerReferences"][0]["name"] == "sky-abc"


def test_quantities() -> None:
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("64Gi") == 64 * 2**30
    assert parse_quantity("1k") == 1000
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity("lots")


@pytest.mark.parametrize(
    ("labels", "name"),
    [
        ({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "H100"),
        ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, "A100"),
        ({"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}, "A100"),
        ({"cloud.google.com/gke-accelerator": "nvidia-l4"}, "L4"),
        ({"karpenter.k8s.aws/instance-gpu-name": "t4"}, "T4"),
        ({"gpu.nvidia.com/class": "H100_NVLINK_80GB"}, "H100"),
        ({"other": "H100"}, None),
    ],
)
def test_gpu_model_from_label_families(labels: dict[str, str], name: str | None) -> None:
    found = gpu_model(labels, plugins.accelerator_catalog())
    assert (found[0] if found else None) == name


def _node(name: str, gpus: int = 0, taint: bool = True, **labels: str) -> dict[str, Any]:
    allocatable = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    taints = [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}] if gpus and taint else []
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"allocatable": allocatable, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _pod(node: str, gpus: int, phase: str = "Running") -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)}
    return {
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": limits}}]},
        "status": {"phase": phase},
    }


def test_offers_subtract_running_requests() -> None:
    h100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    nodes = [_node("a", 8, **h100), _node("b", 8, **h100), _node("c")]
    catalog = plugins.accelerator_catalog()
    config = Kubernetes(hourly_price={"H100": 4.0})
    spec = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.H100(count=4), nodes=4)
    [offer] = build_offers(config, spec, nodes, [], catalog, "ctx/ns")
    assert (offer.accelerator, offer.accelerator_count, offer.extra["fits"]) == ("H100", 4, "4")
    assert offer.available
    assert offer.price_on_demand == 4.0
    assert offer.extra["gpu_label"] == "nvidia.com/gpu.product"
    pods = [_pod("a", 4), _pod("b", 2), _pod("b", 8, phase="Succeeded")]
    [offer] = build_offers(config, spec, nodes, pods, catalog, "ctx/ns")
    assert offer.extra["fits"] == "2"
    assert not offer.available
    # CPU pools: GPU nodes keep their taint, so only the CPU node offers.
    [cpu] = build_offers(config, build_spec(cpu=4), nodes, [], catalog, "ctx/ns")
    assert (cpu.instance_type, cpu.accelerator, cpu.extra["fits"]) == ("node", None, "8")
    # Nobody may list nodes: the request is offered as is.
    [blind] = build_offers(config, spec, None, None, catalog, "ctx/ns")
    assert blind.available
    assert blind.instance_type == "pod"
    # No node has the model asked for.
    assert build_offers(config, build_spec(accelerator="A100"), nodes, [], catalog, "x") == []
