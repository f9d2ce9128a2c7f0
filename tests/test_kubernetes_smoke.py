"""A smoke test against a real cluster, opt-in: ``SKYWARD_TEST_KUBECONFIG`` names a
kubeconfig (``SKYWARD_TEST_KUBE_CONTEXT`` and ``SKYWARD_TEST_KUBE_NAMESPACE`` optional).

It opens a two-pod CPU pool with the default image (``python:<X.Y>-slim``), runs a call on
one pod and on both, and checks that closing the pool left no pod behind. The image must
be pullable by the cluster. Skipped when the variable is unset (CI has no cluster; the
fake-kubelet tests cover the same paths there).
"""

from __future__ import annotations

import os
import time

import pytest

import skyward as sky

KUBECONFIG = os.environ.get("SKYWARD_TEST_KUBECONFIG")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not KUBECONFIG, reason="SKYWARD_TEST_KUBECONFIG names no real cluster"),
]


@sky.compute
def node() -> int:
    return sky.instance_info().node


def test_real_cluster_pool() -> None:
    from skyward_kubernetes import Kubernetes
    from skyward_kubernetes.provider import KubernetesProvider

    config = Kubernetes(
        kubeconfig=KUBECONFIG,
        context=os.environ.get("SKYWARD_TEST_KUBE_CONTEXT"),
        namespace=os.environ.get("SKYWARD_TEST_KUBE_NAMESPACE"),
    )
    with sky.ComputePool(provider=config, nodes=2, cpu=1, display="quiet") as pool:
        assert node() >> pool in (0, 1)
        assert node() @ pool == (0, 1)
        pool_id = pool.pool_id
    provider = config.create()
    assert isinstance(provider, KubernetesProvider)
    deadline = time.monotonic() + 60
    while provider.list_by_tag(pool_id) and time.monotonic() < deadline:
        time.sleep(1)
    assert not provider.list_by_tag(pool_id)
