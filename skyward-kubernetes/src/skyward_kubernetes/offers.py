"""Offers from the cluster's nodes: allocatable capacity minus what running pods request.

One offer per node shape (instance type label, GPU model label): a "machine" of the pool is
one pod of the size the pool asks for, and the offer is available when enough pods of
that size fit on nodes the pods may land on (taints tolerated, node selector matched,
node Ready and schedulable). GPU models come from node labels (GPU feature discovery,
GKE, Karpenter, CoreWeave, AMD), mapped to the accelerator catalog's canonical names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from skyward.accelerators import AcceleratorCatalog
from skyward.offers import Offer
from skyward.spec import ComputeSpec
from skyward_kubernetes.config import GPU_LABELS, Kubernetes

__all__ = ["build_offers", "gpu_model", "parse_quantity"]

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]{0,2})")
_TERMINAL = ("Succeeded", "Failed")
_VENDOR_WORDS = {"nvidia", "tesla", "amd", "instinct", "radeon", "google", "tpu", "gpu"}


def parse_quantity(value: object) -> Decimal:
    """A Kubernetes quantity (``"500m"``, ``"64Gi"``, ``"8"``) as a number."""
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None or (match.group(2) and match.group(2) not in _SUFFIXES):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from None
    return number * Decimal(_SUFFIXES.get(match.group(2), 1))


def gpu_model(
    labels: Mapping[str, str], catalog: AcceleratorCatalog, label: str | None = None
) -> tuple[str, str, str] | None:
    """(canonical name, label key, label value) of a node's accelerator, from its labels.

    ``NVIDIA-H100-80GB-HBM3`` → H100, ``nvidia-tesla-a100`` → A100, ``nvidia-l4`` → L4.
    """
    for key in (label,) if label else GPU_LABELS:
        value = labels.get(key) if key else None
        if not value:
            continue
        words = [w for w in re.split(r"[-_ .]+", value) if w]
        candidates = [value, *words, *("".join(words[i : i + 2]) for i in range(len(words)))]
        for candidate in candidates:
            if candidate.lower() in _VENDOR_WORDS:
                continue
            definition = catalog.find(candidate)
            if definition is not None:
                return definition.name, key, value
    return None


def _tolerated(taint: Mapping[str, Any], tolerations: Iterable[Mapping[str, Any]]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        if toleration.get("operator", "Equal") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get(
            "value", ""
        ):
            return True
    return False


def _ready(node: Mapping[str, Any]) -> bool:
    if node.get("spec", {}).get("unschedulable"):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _requested(pods: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Decimal]]:
    """Per node name: the sum of each resource non-terminal pods request."""
    used: dict[str, dict[str, Decimal]] = {}
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        if not node or pod.get("status", {}).get("phase") in _TERMINAL:
            continue
        totals = used.setdefault(node, {})
        for container in pod["spec"].get("containers") or []:
            resources = container.get("resources") or {}
            # Requests default to limits (extended resources have only limits).
            amounts = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
            for name, amount in amounts.items():
                try:
                    totals[name] = totals.get(name, Decimal(0)) + parse_quantity(amount)
                except ValueError:
                    continue
    return used


def build_offers(
    config: Kubernetes,
    spec: ComputeSpec,
    nodes: Sequence[Mapping[str, Any]] | None,
    pods: Sequence[Mapping[str, Any]] | None,
    catalog: AcceleratorCatalog,
    region: str,
) -> list[Offer]:
    """Offers for ``spec`` from the listed nodes and pods.

    ``nodes`` is ``None`` when the user may not list nodes (a namespace-scoped account):
    then the pool's own request is offered as is, and the scheduler decides.
    """
    accelerator = spec.accelerator
    want_gpus = Decimal(int(accelerator.count)) if accelerator else Decimal(0)
    want_cpu = Decimal(spec.cpu or 0)
    want_memory = Decimal(int((spec.memory_gb or 0) * 2**30))
    resource = config.resource_for(accelerator.vendor) if accelerator else None
    price = config.price_for(accelerator.name if accelerator else None)

    def offer(
        instance_type: str, vcpus: float, memory_gb: float, fits: int, extra: dict[str, str]
    ) -> Offer:
        return Offer(
            provider="kubernetes",
            instance_type=instance_type,
            vcpus=int(spec.cpu or vcpus),
            memory_gb=float(spec.memory_gb or memory_gb),
            accelerator=accelerator.name if accelerator else None,
            accelerator_count=int(accelerator.count) if accelerator else 0,
            accelerator_memory_gb=float(accelerator.memory_gb)
            if accelerator and accelerator.memory_gb
            else None,
            region=region,
            price_on_demand=price,
            available=fits >= spec.nodes,
            extra={**extra, "fits": str(fits)},
        )

    if nodes is None:
        return [offer("pod", 0, 0, spec.nodes, {})]
    tolerations = [*config.tolerations]
    if resource is not None:
        tolerations.append({"key": resource, "operator": "Exists", "effect": "NoSchedule"})
    used = _requested(pods or [])
    groups: dict[tuple[str, str, str], list[tuple[float, float, int]]] = {}
    for node in nodes:
        meta, status = node.get("metadata", {}), node.get("status", {})
        labels = meta.get("labels") or {}
        if not _ready(node):
            continue
        if any(labels.get(k) != v for k, v in config.node_selector.items()):
            continue
        hard = [
            t
            for t in node.get("spec", {}).get("taints") or []
            if t.get("effect") in ("NoSchedule", "NoExecute")
        ]
        if not all(_tolerated(t, tolerations) for t in hard):
            continue
        model = ("", "", "")
        if accelerator is not None:
            found = gpu_model(labels, catalog, config.gpu_label)
            if found is None or found[0] != accelerator.name:
                continue
            model = found
        allocatable = status.get("allocatable") or {}
        taken = used.get(meta.get("name", ""), {})

        def free(
            name: str,
            allocatable: Mapping[str, Any] = allocatable,
            taken: Mapping[str, Decimal] = taken,
        ) -> Decimal:
            try:
                return parse_quantity(allocatable.get(name, "0")) - taken.get(name, Decimal(0))
            except ValueError:
                return Decimal(0)

        fits = []
        for name, want in (("cpu", want_cpu), ("memory", want_memory), (resource or "", want_gpus)):
            if want > 0:
                fits.append(int(free(name) // want) if free(name) > 0 else 0)
        pods_free = int(free("pods")) if "pods" in allocatable else 110
        count = min([*fits, pods_free]) if fits else pods_free
        instance_type = labels.get("node.kubernetes.io/instance-type") or (
            f"{model[0]}-node" if model[0] else "node"
        )
        groups.setdefault((instance_type, model[1], model[2]), []).append(
            (
                float(parse_quantity(allocatable.get("cpu", "0"))),
                float(parse_quantity(allocatable.get("memory", "0")) / 2**30),
                max(count, 0),
            )
        )
    offers = []
    for (instance_type, label, value), members in sorted(groups.items()):
        extra = {"gpu_label": label, "gpu_value": value} if label else {}
        vcpus = max(m[0] for m in members)
        memory = max(m[1] for m in members)
        offers.append(offer(instance_type, vcpus, memory, sum(m[2] for m in members), extra))
    return offers
