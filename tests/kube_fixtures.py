"""Pytest fixtures for the Kubernetes tests: one control plane per test session.

Import the fixtures into a test module (``from tests.kube_fixtures import kube, namespace``).
Several modules importing the same session fixture would each start a cluster, so the
cluster itself is a process-wide singleton, stopped once when the session ends.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.kube_api import KubeAPI, KubeAPIError
from tests.kube_cluster import ControlPlane
from tests.kube_kubelet import FakeKubelet

H100_LABELS = {
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.count": "8",
    "nvidia.com/gpu.memory": "81559",
    "node.kubernetes.io/instance-type": "p5.48xlarge",
}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@dataclass
class KubeCluster:
    """The running control plane, its fake nodes, and a harness API client."""

    plane: ControlPlane
    kubelets: dict[str, FakeKubelet] = field(default_factory=dict)
    started_in: float = 0.0

    @property
    def api(self) -> KubeAPI:
        assert self.plane.certs is not None
        return KubeAPI(self.plane.apiserver_port, self.plane.token, self.plane.certs.ca)

    def add_node(self, name: str, **kwargs: object) -> FakeKubelet:
        kubelet = FakeKubelet(self.plane, name, **kwargs)  # type: ignore[arg-type]
        kubelet.start()
        self.kubelets[name] = kubelet
        return kubelet

    def remove_node(self, name: str) -> None:
        kubelet = self.kubelets.pop(name, None)
        if kubelet is not None:
            kubelet.stop()

    def stop(self) -> None:
        for name in list(self.kubelets):
            self.kubelets.pop(name).stop(delete_node=False)
        self.plane.stop()


_lock = threading.Lock()
_cluster: KubeCluster | None = None


def start_cluster() -> KubeCluster:
    started = time.monotonic()
    plane = ControlPlane.create()
    cluster = KubeCluster(plane)
    try:
        plane.start()
        # Two H100 nodes (GFD labels, the GPU taint) and one CPU node: enough for offers,
        # scheduling messages and two-node pools.
        for i in range(2):
            cluster.add_node(
                f"h100-{i}", extended={"nvidia.com/gpu": "8"}, labels=H100_LABELS,
                taints=[GPU_TAINT], cpu="32", memory="256Gi",
            )  # fmt: skip
        cluster.add_node("cpu-0", cpu="8", memory="32Gi")
    except BaseException:
        cluster.stop()
        raise
    cluster.started_in = time.monotonic() - started
    return cluster


def session_cluster(config: pytest.Config) -> KubeCluster:
    """The session's cluster, started on first use and stopped when the session ends (for
    code that is not a fixture, such as the fault matrix's target)."""
    global _cluster
    with _lock:
        if _cluster is None:
            _cluster = start_cluster()

            def stop() -> None:
                global _cluster
                if _cluster is not None:
                    _cluster.stop()
                    _cluster = None

            config.add_cleanup(stop)
        return _cluster


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> KubeCluster:
    """The session's cluster (started on first use, stopped when the session ends)."""
    return session_cluster(request.config)


@pytest.fixture
def namespace(kube: KubeCluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted after it (with everything in it)."""
    name = f"t-{secrets.token_hex(4)}"
    kube.api.post("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    with contextlib.suppress(KubeAPIError):
        # Pods first and at once (grace 0), so their resources free up for the next test.
        kube.api.request(
            "DELETE",
            f"/api/v1/namespaces/{name}/pods",
            {"gracePeriodSeconds": 0},
        )
        kube.api.delete(f"/api/v1/namespaces/{name}")
