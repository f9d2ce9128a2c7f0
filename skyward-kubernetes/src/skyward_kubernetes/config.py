"""``sky.Kubernetes(...)``: where and how a pool's pods run, validated with no network call."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from attrs import field, frozen

from skyward.errors import ConfigurationError
from skyward.spec import ComputeSpec

if TYPE_CHECKING:
    from skyward.provider import Provider

__all__ = ["GPU_LABELS", "GPU_RESOURCES", "PULL_POLICIES", "Kubernetes"]

PULL_POLICIES = ("IfNotPresent", "Always", "Never")
GPU_RESOURCES: Mapping[str, str] = MappingProxyType(
    {
        "NVIDIA": "nvidia.com/gpu",
        "AMD": "amd.com/gpu",
        "Google": "google.com/tpu",
        "AWS": "aws.amazon.com/neuron",
    }
)
"""Extended resource a vendor's device plugin advertises, by accelerator vendor."""
GPU_LABELS = (
    "nvidia.com/gpu.product",  # NVIDIA GPU feature discovery
    "cloud.google.com/gke-accelerator",  # GKE
    "cloud.google.com/gke-tpu-accelerator",  # GKE TPUs
    "karpenter.k8s.aws/instance-gpu-name",  # Karpenter (EKS)
    "gpu.nvidia.com/class",  # CoreWeave
    "amd.com/gpu.product-name",  # AMD's node labeller
)
"""Node labels naming the accelerator model, tried in order when ``gpu_label`` is unset."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _label_key_problem(key: object) -> str | None:
    if not isinstance(key, str) or not key:
        return f"{key!r} is not a label key"
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return f"the prefix of {key!r} is not a DNS subdomain"
    if not _LABEL_NAME.fullmatch(name):
        return f"{key!r} is not a valid label key (63 characters of [A-Za-z0-9-_.], no ':')"
    return None


def label_problem(key: object, value: object) -> str | None:
    """Why ``key=value`` is not a valid Kubernetes label, or None."""
    problem = _label_key_problem(key)
    if problem is None and (not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value)):
        problem = f"{value!r} (for {key!r}) is not a valid label value (63 characters at most)"
    return problem


def _optional_name(field_name: str, pattern: re.Pattern[str], example: str) -> Callable[..., None]:
    def check(_: object, __: object, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not pattern.fullmatch(value)):
            raise ConfigurationError(
                field_name, f"{value!r} is not a valid Kubernetes name", f"Use e.g. {example}"
            )

    return check


def _optional_str(field_name: str, example: str) -> Callable[..., None]:
    def check(_: object, __: object, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigurationError(
                field_name, f"{value!r} is not a string", f"Use e.g. {example}"
            )

    return check


def _labels(field_name: str, values_must_be_labels: bool) -> Callable[..., None]:
    def check(_: object, __: object, value: object) -> None:
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                field_name, f"{value!r} is not a mapping", 'Use e.g. {"team": "ml"}'
            )
        for key, item in value.items():
            problem = label_problem(key, item) if values_must_be_labels else _label_key_problem(key)
            if problem is None and not isinstance(item, str):
                problem = f"the value of {key!r} is not a string"
            if problem is not None:
                raise ConfigurationError(field_name, problem, 'Use e.g. {"team": "ml"}')
            if key.startswith("skyward/"):
                raise ConfigurationError(
                    field_name,
                    f"{key!r} is reserved for Skyward's own labels",
                    "Use another prefix",
                )

    return check


def _frozen_mapping(value: Any) -> Any:
    """A read-only copy of a mapping (anything else is left for the validator to refuse)."""
    return MappingProxyType(dict(value)) if isinstance(value, Mapping) else value


def _tolerations(value: object) -> tuple[Mapping[str, Any], ...]:
    if isinstance(value, Mapping) or not isinstance(value, Sequence) or isinstance(value, str):
        raise ConfigurationError(
            "tolerations", f"{value!r} is not a list of tolerations",
            'Use e.g. [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
        )  # fmt: skip
    result = []
    for item in value:
        if not isinstance(item, Mapping) or not set(item) <= _TOLERATION_KEYS:
            raise ConfigurationError(
                "tolerations", f"{item!r} is not a toleration",
                f"Each is a mapping with keys among {sorted(_TOLERATION_KEYS)}",
            )  # fmt: skip
        if item.get("operator", "Equal") not in ("Equal", "Exists"):
            raise ConfigurationError(
                "tolerations",
                f"operator {item['operator']!r} is not Equal or Exists",
                'Use "Exists"',
            )
        if "effect" in item and item["effect"] not in _EFFECTS:
            raise ConfigurationError(
                "tolerations", f"effect {item['effect']!r} is unknown", f"Use one of {_EFFECTS}"
            )
        result.append(MappingProxyType(dict(item)))
    return tuple(result)


def _pull_secrets(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items: tuple[object, ...] = (value,)
    elif isinstance(value, Sequence):
        items = tuple(value)
    else:
        raise ConfigurationError(
            "image_pull_secrets", f"{value!r} is not a list of Secret names", 'Use e.g. ["regcred"]'
        )
    for item in items:
        if not isinstance(item, str) or not _DNS_SUBDOMAIN.fullmatch(item):
            raise ConfigurationError(
                "image_pull_secrets", f"{item!r} is not a Secret name", 'Use e.g. ["regcred"]'
            )
    return tuple(str(i) for i in items)


def _pull_policy(_: object, __: object, value: str) -> None:
    if value not in PULL_POLICIES:
        raise ConfigurationError(
            "image_pull_policy", f"{value!r} is not a pull policy", f"Use one of {PULL_POLICIES}"
        )


def _shm_size(_: object, __: object, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _QUANTITY.fullmatch(value)):
        raise ConfigurationError(
            "shm_size", f"{value!r} is not a Kubernetes quantity", 'Use e.g. "8Gi", or None'
        )


def _optional_mapping(field_name: str, example: str) -> Callable[..., None]:
    def check(_: object, __: object, value: Mapping[str, Any] | None) -> None:
        if value is not None and not isinstance(value, Mapping):
            raise ConfigurationError(
                field_name, f"{value!r} is not a mapping", f"Use e.g. {example}"
            )

    return check


def _schedule_timeout(_: object, __: object, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(
            "schedule_timeout", f"{value!r} is not a positive number of seconds", "Use e.g. 300"
        )


def _hourly_price(_: object, __: object, value: float | Mapping[str, float]) -> None:
    prices = value.values() if isinstance(value, Mapping) else [value]
    for price in prices:
        if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
            raise ConfigurationError(
                "hourly_price", f"{price!r} is not a price in USD per pod-hour",
                'Use e.g. 2.5, or {"H100": 4.0, "A100": 2.0}',
            )  # fmt: skip


def _run_as_user(_: object, __: object, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigurationError(
            "run_as_user", f"{value!r} is not a unix user id",
            "Use e.g. 1000 (the default), or None to run as the image's own user",
        )  # fmt: skip


@frozen
class Kubernetes:
    """Run pools as pods on a Kubernetes cluster you already have.

    Each node of the pool is one pod (``restartPolicy: Never``); a headless Service gives
    them DNS names and an anchor ConfigMap owns them all, so deleting it removes
    everything. The client reaches pods through the Kubernetes API only (exec and
    port-forward): no sshd in the image, no port opened.

    :param context: kubeconfig context (default: the current context, or the in-cluster
        service account when running inside a pod).
    :param kubeconfig: path to the kubeconfig (default: ``$KUBECONFIG``, ``~/.kube/config``).
    :param namespace: where pods go (default: the context's namespace, else ``"default"``).
    :param image: container image (default: ``python:<image.python>-slim``, the client's
        own minor version, so the interpreter matches).
    :param image_pull_policy: ``"IfNotPresent"``, ``"Always"`` or ``"Never"``.
    :param image_pull_secrets: names of Secrets for a private registry.
    :param service_account: pods' service account (IRSA, Workload Identity); its token is
        mounted only when this is set.
    :param node_selector: node labels pods require.
    :param tolerations: extra tolerations (the GPU taint of the requested vendor is
        tolerated already).
    :param affinity: a pod ``affinity`` (replaces the default soft anti-affinity).
    :param gpu_resource: extended resource to request (default by vendor:
        ``nvidia.com/gpu``, ``amd.com/gpu``, ``google.com/tpu``, ``aws.amazon.com/neuron``).
    :param gpu_label: node label naming the GPU model (default: the first present of
        :data:`GPU_LABELS`).
    :param runtime_class: ``runtimeClassName`` (e.g. ``"nvidia"``).
    :param priority_class: ``priorityClassName``.
    :param labels: extra pod labels (queueing systems such as Kueue read them).
    :param annotations: extra pod annotations.
    :param shm_size: size of the memory-backed ``/dev/shm`` (``None``: the runtime's 64 MiB).
    :param pod_overrides: a mapping merged into the pod manifest last (an escape hatch:
        volumes, sidecars, security contexts).
    :param run_as_user: unix user id the container runs as (default 1000). Any id but 0
        makes the pod meet the Pod Security Standards' ``restricted`` profile
        (``runAsNonRoot``, no privilege escalation, every capability dropped, the runtime's
        default seccomp profile), which locked-down namespaces require; ``$HOME`` is then a
        writable ``emptyDir``. ``None`` (the image's own user, root in ``python`` images)
        or 0 is needed for apt packages.
    :param schedule_timeout: seconds pods may stay unschedulable before the launch fails
        with the scheduler's reason (and selection tries the next offer).
    :param hourly_price: USD per pod-hour for cost events, or per accelerator name.
    """

    context: str | None = field(default=None, validator=_optional_str("context", '"my-cluster"'))
    kubeconfig: str | None = field(
        default=None, validator=_optional_str("kubeconfig", '"~/.kube/config"')
    )
    namespace: str | None = field(
        default=None, validator=_optional_name("namespace", _DNS_LABEL, '"ml-team"')
    )
    image: str | None = field(default=None, validator=_optional_str("image", '"python:3.11-slim"'))
    image_pull_policy: str = field(default="IfNotPresent", validator=_pull_policy)
    image_pull_secrets: tuple[str, ...] = field(default=(), converter=_pull_secrets)
    service_account: str | None = field(
        default=None, validator=_optional_name("service_account", _DNS_SUBDOMAIN, '"trainer"')
    )
    node_selector: Mapping[str, str] = field(
        factory=dict, converter=_frozen_mapping, validator=_labels("node_selector", True)
    )
    tolerations: tuple[Mapping[str, Any], ...] = field(default=(), converter=_tolerations)
    affinity: Mapping[str, Any] | None = field(
        default=None,
        converter=_frozen_mapping,
        validator=_optional_mapping("affinity", '{"nodeAffinity": {...}}'),
    )
    gpu_resource: str | None = field(
        default=None,
        validator=_optional_name(
            "gpu_resource", re.compile(r"[a-z0-9.-]+/[a-z0-9._-]+"), '"nvidia.com/gpu"'
        ),
    )
    gpu_label: str | None = field(
        default=None,
        validator=_optional_name(
            "gpu_label", re.compile(r"[a-z0-9.-]+/[A-Za-z0-9._-]+"), '"nvidia.com/gpu.product"'
        ),
    )
    runtime_class: str | None = field(
        default=None, validator=_optional_name("runtime_class", _DNS_SUBDOMAIN, '"nvidia"')
    )
    priority_class: str | None = field(
        default=None, validator=_optional_name("priority_class", _DNS_SUBDOMAIN, '"high"')
    )
    labels: Mapping[str, str] = field(
        factory=dict, converter=_frozen_mapping, validator=_labels("labels", True)
    )
    annotations: Mapping[str, str] = field(
        factory=dict, converter=_frozen_mapping, validator=_labels("annotations", False)
    )
    shm_size: str | None = field(default="8Gi", validator=_shm_size)
    pod_overrides: Mapping[str, Any] | None = field(
        default=None,
        converter=_frozen_mapping,
        validator=_optional_mapping("pod_overrides", '{"spec": {"hostIPC": True}}'),
    )
    run_as_user: int | None = field(default=1000, validator=_run_as_user)
    schedule_timeout: float = field(default=300.0, validator=_schedule_timeout)
    hourly_price: float | Mapping[str, float] = field(
        default=0.0, converter=_frozen_mapping, validator=_hourly_price
    )
    provider_name: ClassVar[str] = "kubernetes"

    def resource_for(self, vendor: str) -> str:
        """The extended resource requested for accelerators of ``vendor``."""
        if self.gpu_resource is not None:
            return self.gpu_resource
        try:
            return GPU_RESOURCES[vendor]
        except KeyError:
            raise ConfigurationError(
                "gpu_resource", f"no default resource for {vendor} accelerators",
                'Name the device plugin\'s resource, e.g. gpu_resource="example.com/gpu"',
            ) from None  # fmt: skip

    def price_for(self, accelerator: str | None) -> float:
        if isinstance(self.hourly_price, Mapping):
            return float(self.hourly_price.get(accelerator or "", 0.0))
        return float(self.hourly_price)

    def validate(self, spec: ComputeSpec) -> None:
        if spec.accelerator is not None:
            self.resource_for(spec.accelerator.vendor)
            if spec.accelerator.mig is not None:
                raise ConfigurationError(
                    "accelerator", "MIG profiles are not requested by the Kubernetes provider",
                    'Ask for the MIG resource with gpu_resource="nvidia.com/mig-1g.10gb"',
                )  # fmt: skip
            if spec.accelerator.count != int(spec.accelerator.count):
                raise ConfigurationError(
                    "accelerator", f"{spec.accelerator.count} is not a whole number of devices",
                    "Kubernetes schedules whole devices; ask for count=1 or more",
                )  # fmt: skip
        if spec.image.apt and self.run_as_user:
            raise ConfigurationError(
                "run_as_user", f"apt packages ({', '.join(spec.image.apt)}) need root, and pods "
                f"run as user {self.run_as_user}",
                "Pass run_as_user=None (the image's user, root in python images) where the "
                "namespace allows root pods, or build the packages into the image",
            )  # fmt: skip
        if spec.volumes:
            raise ConfigurationError(
                "volumes", "the Kubernetes provider does not mount Skyward volumes yet",
                "Mount a PersistentVolumeClaim with pod_overrides, or drop volumes",
            )  # fmt: skip

    def create(self) -> Provider:
        from skyward_kubernetes.provider import KubernetesProvider

        return KubernetesProvider(self)
