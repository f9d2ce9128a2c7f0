"""The pool's lifetime enforced by the cluster: when the client vanishes (SIGKILL) and the
agents' own power-off does nothing, the pods' ``activeDeadlineSeconds`` still ends them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skyward.provider import InstanceState
from skyward_kubernetes import Kubernetes
from skyward_kubernetes.manifests import DEADLINE_GRACE
from skyward_kubernetes.provider import KubernetesProvider
from tests.conftest import agent_processes, wait_until
from tests.kube_fixtures import KubeCluster, kube, namespace

__all__ = ["kube", "namespace"]

pytestmark = pytest.mark.slow

TIMEOUT = 20
"""The pool's timeout: long enough for the pool to open and the client to be killed
before the client's own timer would close the pool."""
CLIENT = """
import json, sys
import skyward as sky

@sky.compute
def nap(seconds: float) -> float:
    import time
    time.sleep(seconds)
    return seconds

provider = sky.Kubernetes(kubeconfig=sys.argv[1], namespace=sys.argv[2])
with sky.ComputePool(
    provider=provider, nodes=2, cpu=1, timeout=int(sys.argv[3]), display="quiet",
    env={"SKYWARD_POWEROFF_CMD": "true"},  # the agents' power-off ends nothing
) as pool:
    print(json.dumps({"pool": pool.pool_id}), flush=True)
    nap(600) @ pool
"""


def test_deadline_ends_pods_of_a_vanished_client(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "SKYWARD_HEARTBEAT_TIMEOUT": "300"}  # no watchdog either
    client = subprocess.Popen(
        [sys.executable, str(script), str(kube.plane.kubeconfig), namespace, str(TIMEOUT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        assert line, client.communicate(timeout=30)[1][-3000:]
        pool_id = json.loads(line)["pool"]
        path = f"/api/v1/namespaces/{namespace}/pods"
        listing = kube.api.get(path, labelSelector=f"skyward/pool={pool_id}")["items"]
        assert len(listing) == 2
        for pod in listing:
            deadline = pod["spec"]["activeDeadlineSeconds"]
            assert TIMEOUT < deadline <= TIMEOUT + DEADLINE_GRACE, deadline
        assert wait_until(lambda: len(agent_processes(pool_id)) == 2, 30)
        client.send_signal(signal.SIGKILL)  # no teardown, no heartbeats from now on
        client.wait(10)
        killed = time.monotonic()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()

    def phases() -> list[tuple[str, str]]:
        items = kube.api.get(path, labelSelector=f"skyward/pool={pool_id}")["items"]
        return [(p["status"].get("phase", ""), p["status"].get("reason", "")) for p in items]

    # Agents outlive the pool's end by 15 s and their power-off is a no-op here: only the
    # cluster's deadline ends the pods (Failed, DeadlineExceeded), and their processes.
    assert wait_until(
        lambda: phases() == [("Failed", "DeadlineExceeded")] * 2, TIMEOUT + DEADLINE_GRACE + 30
    ), phases()
    ended = time.monotonic() - killed
    print(f"pods ended by their deadline {ended:.1f} s after the client was killed")
    assert wait_until(lambda: not agent_processes(pool_id), 10)
    for kubelet in kube.kubelets.values():
        assert not [r for r in kubelet.pods.values() if r.namespace == namespace and not r.finished]
    # Failed pods stay (bare pods have no TTL) until ``skyward down`` sweeps them.
    provider = Kubernetes(kubeconfig=str(kube.plane.kubeconfig), namespace=namespace).create()
    assert isinstance(provider, KubernetesProvider)
    found = provider.list_by_tag(pool_id)
    assert [i.state for i in found] == [InstanceState.TERMINATED] * 2
    provider.terminate(found)
    assert wait_until(lambda: not phases(), 20)
