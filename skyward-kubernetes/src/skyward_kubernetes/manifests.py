"""What a pool is made of on the cluster, as manifests (plain dicts).

One pool = an anchor ConfigMap ``<pool>`` (created first; owner of everything else, so
deleting it garbage-collects the pool), a headless Service ``<pool>`` (stable DNS names
``node-<i>.<pool>.<ns>.svc``), and one pod ``<pool>-<i>`` per node.

Core's tag keys (``skyward:managed``, ``skyward:pool``) are not valid label keys (``:`` is
not allowed), so they are mapped to ``skyward/managed`` and ``skyward/pool``; every object
also carries ``app.kubernetes.io/managed-by: skyward``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from skyward.provider import MANAGED_TAG, POOL_TAG
from skyward.spec import ComputeSpec
from skyward_kubernetes.config import Kubernetes

__all__ = [
    "DEADLINE_GRACE",
    "HOME_MOUNT",
    "KEEPER_PID_FILE",
    "MANAGED_LABEL",
    "NODE_LABEL",
    "POOL_LABEL",
    "anchor_manifest",
    "deep_merge",
    "labels_from_tags",
    "pod_manifest",
    "pool_selector",
    "resource_name",
    "service_manifest",
    "tags_from_labels",
]

MANAGED_LABEL = "skyward/managed"
POOL_LABEL = "skyward/pool"
NODE_LABEL = "skyward/node"
_TAG_TO_LABEL = {MANAGED_TAG: MANAGED_LABEL, POOL_TAG: POOL_LABEL}
CONTAINER = "node"
KEEPER_PID_FILE = "~/.skyward/keeper.pid"
"""Where the keeper writes its PID (under the container's ``$HOME``); the agent's power-off
command signals it. Not PID 1: that is the pause process when the pod shares its process
namespace."""
# The container's command: stay up while the client bootstraps through exec, reap the
# children exec leaves behind, exit 0 on SIGTERM (the agent's power-off), which ends the
# pod (restartPolicy Never) and releases its resources.
KEEPER = f"""
import os, signal, sys
path = os.path.expanduser({KEEPER_PID_FILE!r})
os.makedirs(os.path.dirname(path), exist_ok=True)
open(path, "w").write(str(os.getpid()))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        signal.pause()
"""
POWEROFF = 'kill -TERM "$(cat "$HOME/.skyward/keeper.pid")"'
HOME_MOUNT = "/home/skyward"
"""``$HOME`` of pods that run as a non-root user the image does not know (an emptyDir)."""
DEADLINE_GRACE = 30
"""Seconds a pod's ``activeDeadlineSeconds`` adds to what is left of the pool's timeout.
The client closes the pool at its timeout (counted from the pool's opening, scheduling and
bootstrap included) and agents outlive that by 15 s so the client reports the reason first;
the cluster's deadline only ends pods a vanished client could not."""


def resource_name(pool_id: str) -> str:
    """A DNS-1035 label (≤ 52 characters, so ``-<node>`` suffixes still fit) for a pool id."""
    name = re.sub(r"[^a-z0-9-]+", "-", pool_id.lower()).strip("-")[:52].rstrip("-")
    if not name or not name[0].isalpha():
        name = ("p-" + name)[:52].rstrip("-")
    return name


def labels_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    labels = {_TAG_TO_LABEL.get(k, k.replace(":", "/")): v for k, v in tags.items()}
    labels["app.kubernetes.io/managed-by"] = "skyward"
    return labels


def tags_from_labels(labels: Mapping[str, str]) -> dict[str, str]:
    back = {v: k for k, v in _TAG_TO_LABEL.items()}
    return {back[k]: v for k, v in labels.items() if k in back}


def pool_selector(pool_id: str | None = None) -> str:
    selector = f"{MANAGED_LABEL}=true"
    return f"{selector},{POOL_LABEL}={pool_id}" if pool_id else selector


def anchor_manifest(
    pool_id: str, tags: Mapping[str, str], data: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": resource_name(pool_id), "labels": labels_from_tags(tags)},
        "data": dict(data),
    }


def owner_reference(anchor: Mapping[str, Any]) -> dict[str, Any]:
    """The anchor as an owner: the garbage collector deletes dependents after it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": anchor["metadata"]["name"],
        "uid": anchor["metadata"]["uid"],
        "controller": False,
        "blockOwnerDeletion": False,
    }


def service_manifest(
    pool_id: str, tags: Mapping[str, str], anchor: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": resource_name(pool_id),
            "labels": labels_from_tags(tags),
            "ownerReferences": [owner_reference(anchor)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": {POOL_LABEL: tags.get(POOL_TAG, pool_id)},
            "publishNotReadyAddresses": True,
            # A headless Service needs a port to publish DNS records on some clusters.
            "ports": [{"name": "head", "port": 29500, "targetPort": 29500}],
        },
    }


def deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``patch`` merged into ``base``: mappings recursively, anything else replaced;
    ``None`` deletes a key (JSON merge patch, RFC 7386)."""
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        elif isinstance(value, Mapping):
            base[key] = deep_merge({}, value)
        else:
            base[key] = value
    return base


def default_image(spec: ComputeSpec) -> str:
    return f"python:{spec.image.python}-slim"


def pod_manifest(
    config: Kubernetes,
    spec: ComputeSpec,
    pool_id: str,
    node: int,
    tags: Mapping[str, str],
    anchor: Mapping[str, Any],
    gpu_model: tuple[str, str] | None = None,
    remaining: float | None = None,
) -> dict[str, Any]:
    """The pod of node ``node``; identical on every node but for its name and node label,
    so queueing systems (Kueue) can treat the pool as one pod set.

    :param gpu_model: (node label, value) the pod must land on, when the pool asks for a
        GPU model.
    :param remaining: seconds left of the pool's timeout as the pod is created (default:
        all of it); the pod's ``activeDeadlineSeconds`` is that plus :data:`DEADLINE_GRACE`.
    """
    name = resource_name(pool_id)
    left = float(spec.timeout) if remaining is None else remaining
    labels = {**config.labels, **labels_from_tags(tags), NODE_LABEL: str(node)}
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.cpu:
        requests["cpu"] = str(spec.cpu)
    if spec.memory_gb:
        requests["memory"] = f"{int(spec.memory_gb * 1024)}Mi"
    tolerations = [dict(t) for t in config.tolerations]
    node_selector = dict(config.node_selector)
    accelerator = spec.accelerator
    if accelerator is not None:
        resource = config.resource_for(accelerator.vendor)
        limits[resource] = str(int(accelerator.count))
        requests[resource] = limits[resource]
        # GPU nodes are commonly tainted with their resource name; tolerate it.
        tolerations.append({"key": resource, "operator": "Exists", "effect": "NoSchedule"})
        if gpu_model is not None:
            node_selector.setdefault(gpu_model[0], gpu_model[1])
    env = [
        {"name": "SKYWARD_POOL_ID", "value": pool_id},
        {"name": "SKYWARD_POWEROFF_CMD", "value": POWEROFF},
        {"name": "SKYWARD_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": config.image or default_image(spec),
        "imagePullPolicy": config.image_pull_policy,
        "command": ["python3", "-c", KEEPER],
        "env": env,
        "resources": {"requests": requests, "limits": limits},
    }
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    pod_security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if config.run_as_user:
        # The restricted profile. The image has no home for this user: $HOME (the
        # keeper's PID file, uv's cache, the environments) is an emptyDir.
        pod_security.update(
            runAsNonRoot=True, runAsUser=config.run_as_user, runAsGroup=config.run_as_user,
            fsGroup=config.run_as_user,
        )  # fmt: skip
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        }
        env += [
            {"name": "HOME", "value": HOME_MOUNT},
            {"name": "USER", "value": "skyward"},
            {"name": "LOGNAME", "value": "skyward"},
        ]
        volumes.append({"name": "home", "emptyDir": {}})
        mounts.append({"name": "home", "mountPath": HOME_MOUNT})
    if config.shm_size:
        volumes.append(
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}}
        )
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "automountServiceAccountToken": config.service_account is not None,
        "terminationGracePeriodSeconds": 5,
        # Counted by the kubelet from the pod's start, which comes after its creation: the
        # backstop never fires before the pool's own end.
        "activeDeadlineSeconds": math.ceil(max(1.0, left)) + DEADLINE_GRACE,
        "hostname": f"node-{node}",
        "subdomain": name,
        "securityContext": pod_security,
        "containers": [container],
        "tolerations": tolerations,
        "affinity": dict(config.affinity) if config.affinity is not None else _spread(pool_id),
    }
    if volumes:
        pod_spec["volumes"] = volumes
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in config.image_pull_secrets]
    if config.runtime_class:
        pod_spec["runtimeClassName"] = config.runtime_class
    if config.priority_class:
        pod_spec["priorityClassName"] = config.priority_class
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-{node}",
            "labels": labels,
            "annotations": dict(config.annotations),
            "ownerReferences": [owner_reference(anchor)],
        },
        "spec": pod_spec,
    }
    if config.pod_overrides:
        deep_merge(manifest, config.pod_overrides)
    return manifest


def _spread(pool_id: str) -> dict[str, Any]:
    """Soft anti-affinity: prefer one pod of the pool per cluster node."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {POOL_LABEL: pool_id}},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }
