"""The live Kubernetes provider: offers from nodes, pods as instances, cleanup by label."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from attrs import define, field, frozen

from skyward import plugins
from skyward.errors import CapacityError, ProvisioningError
from skyward.offers import Offer
from skyward.provider import (
    MANAGED_TAG,
    POOL_TAG,
    Infrastructure,
    Instance,
    InstanceState,
    LaunchRequest,
    NodeTransport,
)
from skyward.spec import ComputeSpec
from skyward_kubernetes.api import JSON, KubeAPIError, KubeClient, load_client
from skyward_kubernetes.config import Kubernetes
from skyward_kubernetes.manifests import (
    POOL_LABEL,
    anchor_manifest,
    pod_manifest,
    pool_selector,
    resource_name,
    service_manifest,
    tags_from_labels,
)
from skyward_kubernetes.offers import build_offers

__all__ = ["FATAL_WAITING", "KubeInfrastructure", "KubernetesProvider"]

FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
"""Container waiting reasons that will not resolve by waiting: the launch fails at once."""
LAUNCH_ANNOTATION = "skyward/launch"
POLL_INTERVAL = 0.25
NAME_WAIT = 30.0
"""Seconds a launch waits for a same-named pod of an earlier attempt to finish deleting."""


@frozen
class KubeInfrastructure(Infrastructure):
    namespace: str = "default"
    pool_id: str = ""
    anchor: str = ""
    """Name of the anchor ConfigMap that owns the pool's pods and Service."""
    anchor_uid: str = ""


def _pool_tags(pool_id: str) -> dict[str, str]:
    return {MANAGED_TAG: "true", POOL_TAG: pool_id}


def _waiting(pod: JSON) -> tuple[str, str] | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") in FATAL_WAITING:
            return str(waiting["reason"]), str(waiting.get("message", ""))
    return None


def _unschedulable(pod: JSON) -> str | None:
    for condition in pod.get("status", {}).get("conditions") or []:
        if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            return str(condition.get("message") or "Unschedulable")
    return None


def _state(pod: JSON | None) -> InstanceState:
    if pod is None:
        return InstanceState.TERMINATED
    phase = pod.get("status", {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return InstanceState.TERMINATED
    if pod["metadata"].get("deletionTimestamp"):
        return InstanceState.STOPPING
    if phase == "Running":
        return InstanceState.RUNNING
    return InstanceState.PENDING


@define
class KubernetesProvider:
    config: Kubernetes
    name: str = "kubernetes"
    client: KubeClient = field(init=False)
    _spec: ComputeSpec | None = None
    _opened: float | None = None
    """When :meth:`prepare` ran (the pool had just opened): what is left of its timeout is
    counted from there."""
    clock: Callable[[], float] = time.monotonic

    def __attrs_post_init__(self) -> None:
        # Reads the kubeconfig only; no request until offers().
        self.client = load_client(
            self.config.context, self.config.kubeconfig, self.config.namespace
        )

    @property
    def region(self) -> str:
        return f"{self.client.context}/{self.client.namespace}"

    def _error(self, action: str, error: KubeAPIError) -> ProvisioningError:
        if error.status == 403:
            return ProvisioningError(
                self.name,
                f"{action} was refused in namespace {self.client.namespace!r} (an admission "
                f"policy, a quota or RBAC): {error.message}",
            )
        return ProvisioningError(self.name, f"{action} failed: {error}")

    # -- offers -----------------------------------------------------------------------

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        nodes: list[JSON] | None
        pods: list[JSON] | None
        try:
            nodes = self.client.get("/api/v1/nodes")["items"]
        except KubeAPIError as error:
            if error.status != 403:
                raise self._error("listing nodes", error) from None
            nodes = None  # a namespace-scoped account: let the scheduler decide
        try:
            pods = self.client.get(
                "/api/v1/pods", fieldSelector="status.phase!=Succeeded,status.phase!=Failed"
            )["items"]
        except KubeAPIError as error:
            if error.status != 403:
                raise self._error("listing pods", error) from None
            pods = None
        return build_offers(
            self.config, spec, nodes, pods, plugins.accelerator_catalog(), self.region
        )

    # -- infrastructure ---------------------------------------------------------------

    def _create_or_adopt(self, kind: str, manifest: JSON, pool_id: str) -> JSON:
        """Create ``manifest``; when one of that name exists already and belongs to this
        pool (an earlier attempt), adopt it instead of failing or duplicating."""
        name = manifest["metadata"]["name"]
        try:
            return self.client.create(self.client.ns_path(kind), manifest)
        except KubeAPIError as error:
            if error.status != 409:
                raise self._error(f"creating {kind}/{name}", error) from None
        existing = self.client.get(self.client.ns_path(kind, name))
        if existing["metadata"].get("labels", {}).get(POOL_LABEL) != pool_id:
            raise ProvisioningError(
                self.name,
                f"{kind}/{name} exists in namespace {self.client.namespace!r} and was not "
                "made by this pool; delete it or use another namespace",
            )
        return existing

    def prepare(self, spec: ComputeSpec, pool_id: str) -> Infrastructure:
        self._spec = spec
        self._opened = self.clock()
        tags = _pool_tags(pool_id)
        data = {"pool": pool_id, "timeout": str(spec.timeout), "nodes": str(spec.nodes)}
        anchor = self._create_or_adopt("configmaps", anchor_manifest(pool_id, tags, data), pool_id)
        try:
            self._create_or_adopt("services", service_manifest(pool_id, tags, anchor), pool_id)
        except BaseException:
            self._delete_anchor(anchor["metadata"]["name"])
            raise
        return KubeInfrastructure(
            region=self.region,
            on_expire="poweroff",  # the keeper exits, the pod ends, its resources free up
            namespace=self.client.namespace,
            pool_id=pool_id,
            anchor=anchor["metadata"]["name"],
            anchor_uid=anchor["metadata"]["uid"],
        )

    def _delete_anchor(self, name: str) -> None:
        # Background propagation: the garbage collector removes what it owns.
        self.client.delete(
            self.client.ns_path("configmaps", name),
            {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )

    def teardown(self, infra: Infrastructure) -> None:
        assert isinstance(infra, KubeInfrastructure)
        name = resource_name(infra.pool_id)
        self.client.delete(self.client.ns_path("services", name))
        self._delete_anchor(infra.anchor or name)

    # -- instances --------------------------------------------------------------------

    def _create_pod(self, manifest: JSON) -> JSON:
        name = manifest["metadata"]["name"]
        pool_id = manifest["metadata"]["labels"][POOL_LABEL]
        token = manifest["metadata"]["annotations"][LAUNCH_ANNOTATION]
        deadline = self.clock() + NAME_WAIT
        while True:
            try:
                return self.client.create(self.client.ns_path("pods"), manifest)
            except KubeAPIError as error:
                if error.status != 409:
                    raise self._error(f"creating pod {name}", error) from None
            # A pod of that name exists: never create blindly. Ours and being deleted (an
            # earlier attempt of this pool): wait for it to go. Anything else: refuse.
            try:
                existing = self.client.get(self.client.ns_path("pods", name))
            except KubeAPIError as error:
                if error.status == 404:
                    continue
                raise self._error(f"reading pod {name}", error) from None
            if (existing["metadata"].get("annotations") or {}).get(LAUNCH_ANNOTATION) == token:
                return existing  # this launch made it: an attempt whose answer was lost
            labels = existing["metadata"].get("labels") or {}
            if labels.get(POOL_LABEL) != pool_id or self.clock() > deadline:
                raise ProvisioningError(
                    self.name,
                    f"pod {name} already exists in namespace {self.client.namespace!r}; "
                    "delete it (skyward down --provider kubernetes) and retry",
                )
            if not existing["metadata"].get("deletionTimestamp"):
                self._delete_pods([name], grace=0)
            time.sleep(POLL_INTERVAL)

    def launch(self, infra: Infrastructure, request: LaunchRequest) -> Sequence[Instance]:
        assert isinstance(infra, KubeInfrastructure)
        anchor = {"metadata": {"name": infra.anchor, "uid": infra.anchor_uid}}
        extra = request.offer.extra
        model = (extra["gpu_label"], extra["gpu_value"]) if extra.get("gpu_label") else None
        opened = self.clock() if self._opened is None else self._opened
        remaining = request.spec.timeout - (self.clock() - opened)
        config, spec, pool_id = self.config, request.spec, request.pool_id
        manifests = [
            pod_manifest(config, spec, pool_id, i, request.tags, anchor, model, remaining=remaining)
            for i in range(request.count)
        ]
        # Marks what this launch made, so a create retried after an error answer adopts
        # the pod it may have made instead of replacing it.
        token = secrets.token_hex(8)
        for manifest in manifests:
            manifest["metadata"]["annotations"][LAUNCH_ANNOTATION] = token
        names = [m["metadata"]["name"] for m in manifests]
        started = self.clock()
        try:
            with ThreadPoolExecutor(max_workers=min(16, len(manifests))) as executor:
                for future in [executor.submit(self._create_pod, m) for m in manifests]:
                    future.result()
            pods = self._wait_running(names, request.pool_id, started)
        except BaseException:
            # By the pool's label, never by name: a same-named pod of someone else stays,
            # and a pod whose create answer was lost goes too.
            self._delete_pool_pods(request.pool_id)
            raise
        return [self._instance(pods[name], request.offer, request.tags) for name in names]

    def _wait_running(self, names: Sequence[str], pool_id: str, started: float) -> dict[str, JSON]:
        """Until every pod runs; all or nothing: an image or admission failure raises at
        once, pods still unschedulable after ``schedule_timeout`` raise CapacityError."""
        wanted = set(names)
        while True:
            listing = self.client.get(
                self.client.ns_path("pods"), labelSelector=pool_selector(pool_id)
            )
            pods = {
                p["metadata"]["name"]: p
                for p in listing["items"]
                if p["metadata"]["name"] in wanted
            }
            unschedulable: dict[str, str] = {}
            for name in names:
                pod = pods.get(name)
                if pod is None:
                    raise ProvisioningError(self.name, f"pod {name} disappeared while starting")
                failure = _waiting(pod)
                if failure is not None:
                    raise ProvisioningError(
                        self.name,
                        f"pod {name} cannot start its container: {failure[0]}: {failure[1]}",
                    )
                phase = pod.get("status", {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    status = pod.get("status", {})
                    raise ProvisioningError(
                        self.name,
                        f"pod {name} ended while starting ({phase}): "
                        f"{status.get('reason', '')} {status.get('message', '')}".strip(),
                    )
                reason = _unschedulable(pod)
                if reason is not None:
                    unschedulable[name] = reason
            if all(pods[n].get("status", {}).get("phase") == "Running" for n in names):
                return pods
            waited = self.clock() - started
            if waited > self.config.schedule_timeout:
                if unschedulable:
                    first = next(iter(unschedulable.values()))
                    raise CapacityError(
                        self.name,
                        f"{len(unschedulable)} of {len(names)} pods unschedulable after "
                        f"{waited:.0f} s: {first}",
                    )
                states = {n: pods[n].get("status", {}).get("phase", "?") for n in names}
                raise ProvisioningError(
                    self.name, f"pods did not start within {waited:.0f} s: {states}"
                )
            time.sleep(POLL_INTERVAL)

    def _instance(self, pod: JSON, offer: Offer | None, tags: dict[str, str] | Any) -> Instance:
        meta, status = pod["metadata"], pod.get("status", {})
        labels = meta.get("labels") or {}
        return Instance(
            id=meta["name"],
            provider=self.name,
            state=_state(pod),
            instance_type=offer.instance_type if offer else labels.get("skyward/instance-type", ""),
            ip=None,
            private_ip=status.get("podIP"),
            region=self.region,
            price_on_demand=offer.price_on_demand if offer else None,
            tags={
                **(dict(tags) if tags else tags_from_labels(labels)),
                "namespace": meta.get("namespace", self.client.namespace),
                "node": pod.get("spec", {}).get("nodeName") or "",
            },
        )

    def describe(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        """One list call per pool (by label), whatever the number of pods."""
        from attrs import evolve

        found: dict[str, JSON] = {}
        for pool_id in {i.tags.get(POOL_TAG, "") for i in instances}:
            selector = pool_selector(pool_id or None)
            try:
                listing = self.client.get(self.client.ns_path("pods"), labelSelector=selector)
            except KubeAPIError as error:
                raise self._error("listing pods", error) from None
            found.update({p["metadata"]["name"]: p for p in listing["items"]})
        described = []
        for instance in instances:
            pod = found.get(instance.id)
            described.append(
                evolve(
                    instance,
                    state=_state(pod),
                    private_ip=(pod or {}).get("status", {}).get("podIP") or instance.private_ip,
                )
            )
        return described

    @staticmethod
    def _delete_options(grace: int) -> JSON:
        # Options in the body: with a body the apiserver ignores query-string options.
        return {
            "kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": grace,
            "propagationPolicy": "Background",
        }  # fmt: skip

    def _delete_pods(self, names: Sequence[str], grace: int = 5) -> None:
        for name in names:
            with contextlib.suppress(KubeAPIError):
                self.client.delete(self.client.ns_path("pods", name), self._delete_options(grace))

    def _delete_pool_pods(self, pool_id: str, grace: int = 0) -> None:
        self.client.delete(
            self.client.ns_path("pods"),
            self._delete_options(grace),
            query={"labelSelector": pool_selector(pool_id)},
        )

    def terminate(self, instances: Sequence[Instance]) -> None:
        self._delete_pods([i.id for i in instances])
        # Pools whose every pod is going (``skyward down``) lose their anchor and Service too.
        for pool_id in {i.tags.get(POOL_TAG) for i in instances if i.tags.get(POOL_TAG)}:
            assert pool_id is not None
            left = self.client.get(
                self.client.ns_path("pods"), labelSelector=pool_selector(pool_id)
            )
            going = {i.id for i in instances}
            if all(p["metadata"]["name"] in going for p in left["items"]):
                self.client.delete(self.client.ns_path("services", resource_name(pool_id)))
                self._delete_anchor(resource_name(pool_id))

    def list_by_tag(self, pool_id: str | None = None) -> Sequence[Instance]:
        """Pods Skyward made in the namespace (of one pool, or any), failed ones included:
        bare pods have no TTL, and a deadline leaves them Failed."""
        listing = self.client.get(self.client.ns_path("pods"), labelSelector=pool_selector(pool_id))
        return [self._instance(pod, None, None) for pod in listing["items"]]

    def connect(self, infra: Infrastructure, instance: Instance) -> NodeTransport:
        from skyward_kubernetes.transport import KubeTransport

        return KubeTransport(
            self.client,
            instance.id,
            pool_id=instance.tags.get(POOL_TAG, ""),
            name=f"node{instance.id.rsplit('-', 1)[-1]}",
            spec=self._spec,
        )
