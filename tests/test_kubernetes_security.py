"""Pods in locked-down namespaces, and the provider used from inside a pod.

The test apiserver is 1.20: Pod Security admission (the ``pod-security.kubernetes.io/
enforce`` namespace label) arrived in 1.22. What 1.20 has is PodSecurityPolicy admission,
and the harness enables it with the restricted profile as a policy
(``tests/kube_cluster.py``). Here a namespace's service account may use only that policy,
and the provider runs AS that account, configured in-cluster: the token, CA and namespace
files written where a kubelet mounts them (``/var/run/secrets/kubernetes.io/
serviceaccount``, in a private mount namespace) and ``KUBERNETES_SERVICE_HOST``/``PORT``
naming the loopback apiserver. The pod spec is also checked against the Pod Security
Standards' restricted rules directly (:func:`restricted_violations`), which is what a
1.22+ namespace labelled ``enforce: restricted`` applies.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from skyward.errors import ConfigurationError
from skyward.image import Image
from skyward.spec import build_spec
from skyward_kubernetes import Kubernetes
from skyward_kubernetes.manifests import pod_manifest
from tests.conftest import wait_until
from tests.kube_fixtures import KubeCluster, kube, namespace

__all__ = ["kube", "namespace"]

ANCHOR = {"metadata": {"name": "sky-abc", "uid": "u-1"}}
TAGS = {"skyward:managed": "true", "skyward:pool": "sky-abc"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in ``pod`` breaks the Pod Security Standards' ``restricted`` profile (the
    baseline rules it includes too), as the 1.22+ admission plugin checks them."""
    spec = pod["spec"]
    pod_context = spec.get("securityContext") or {}
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(key)
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    if (pod_context.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        pod_seccomp_ok = False
    else:
        pod_seccomp_ok = True
    if pod_context.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    if pod_context.get("sysctls"):
        problems.append("sysctls")
    containers = [*spec.get("containers", []), *spec.get("initContainers", [])]
    for container in containers:
        name = container["name"]
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if context.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if not (seccomp in ("RuntimeDefault", "Localhost") or (seccomp is None and pod_seccomp_ok)):
            problems.append(f"{name}: seccompProfile")
        if any(p.get("hostPort") for p in container.get("ports") or []):
            problems.append(f"{name}: hostPort")
    return problems


def test_pod_spec_meets_the_restricted_profile() -> None:
    gpu = build_spec(accelerator="H100", nodes=2)
    for config, spec in [(Kubernetes(), build_spec()), (Kubernetes(shm_size=None), gpu)]:
        pod = pod_manifest(config, spec, "sky-abc", 0, TAGS, ANCHOR)
        assert restricted_violations(pod) == []
        assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    # The check can fail: the image's own user (root) is not restricted.
    root = pod_manifest(Kubernetes(run_as_user=None), build_spec(), "sky-abc", 0, TAGS, ANCHOR)
    assert "node: runAsNonRoot" in restricted_violations(root)
    assert "node: allowPrivilegeEscalation must be false" in restricted_violations(root)


def test_run_as_user_is_validated() -> None:
    for bad in (-1, "1000", True, 1.5):
        with pytest.raises(ConfigurationError, match="run_as_user"):
            Kubernetes(run_as_user=bad)  # type: ignore[arg-type]
    with_apt = build_spec(image=Image(apt=["ffmpeg"]))
    with pytest.raises(ConfigurationError, match=r"run_as_user.*apt packages \(ffmpeg\)"):
        Kubernetes().validate(with_apt)
    Kubernetes(run_as_user=None).validate(with_apt)
    Kubernetes(run_as_user=0).validate(with_apt)


# -- a service account held to the restricted policy, used in-cluster -------------------

PROGRAM = """
import json, sys
import skyward as sky
from skyward.provider import POOL_TAG

@sky.compute
def square(x: int) -> int:
    return x * x

config = sky.Kubernetes(**json.loads(sys.argv[1]))
provider = config.create()
print(json.dumps({"region": provider.region}), flush=True)
with sky.ComputePool(provider=config, nodes=1, cpu=1, display="quiet") as pool:
    listing = provider.client.get(
        provider.client.ns_path("pods"), labelSelector=f"skyward/pool={pool.pool_id}"
    )
    annotations = [p["metadata"].get("annotations", {}) for p in listing["items"]]
    print(json.dumps({"square": square(7) >> pool, "annotations": annotations}), flush=True)
"""


def _service_account(kube: KubeCluster, namespace: str) -> str:
    """A service account that may manage pods (and nothing cluster-wide) and use only the
    ``restricted`` policy; its token, once the token controller has made it."""
    api = kube.api
    base = f"/api/v1/namespaces/{namespace}"
    api.post(f"{base}/serviceaccounts", {"metadata": {"name": "launcher"}})
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    api.post(f"{rbac}/roles", {
        "metadata": {"name": "launcher"},
        "rules": [
            {"apiGroups": [""], "verbs": ["*"], "resources": [
                "pods", "pods/exec", "pods/portforward", "pods/log", "services", "configmaps"]},
            {"apiGroups": ["policy"], "resources": ["podsecuritypolicies"],
             "resourceNames": ["restricted"], "verbs": ["use"]},
        ],
    })  # fmt: skip
    api.post(f"{rbac}/rolebindings", {
        "metadata": {"name": "launcher"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "launcher"},
        "subjects": [{"kind": "ServiceAccount", "name": "launcher", "namespace": namespace}],
    })  # fmt: skip
    secrets: list[str] = []

    def token_made() -> bool:
        account = api.get(f"{base}/serviceaccounts/launcher")
        secrets[:] = [s["name"] for s in account.get("secrets") or []]
        return bool(secrets)

    assert wait_until(token_made, 30), "the token controller made no token"
    secret = api.get(f"{base}/secrets/{secrets[0]}")
    return base64.b64decode(secret["data"]["token"]).decode()


def _in_cluster(
    kube: KubeCluster, namespace: str, token: str, tmp_path: Path, config: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Run :data:`PROGRAM` as a process in a pod sees it: the service-account files at
    the kubelet's mount path (a tmpfs over /run in a private mount namespace, so nothing
    on this machine changes), the apiserver named by the environment, no kubeconfig."""
    assert kube.plane.certs is not None
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "token").write_text(token)
    (mounted / "ca.crt").write_bytes(kube.plane.certs.ca.read_bytes())
    (mounted / "namespace").write_text(namespace)
    for path in mounted.iterdir():
        path.chmod(0o600)
    target = "/run/secrets/kubernetes.io/serviceaccount"
    setup = f'mount -t tmpfs sky-run /run && mkdir -p {target} && cp "$0"/* {target}/ && exec "$@"'
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(
        HOME=str(tmp_path / "home"),  # no ~/.kube/config there
        KUBERNETES_SERVICE_HOST="127.0.0.1",
        KUBERNETES_SERVICE_PORT=str(kube.plane.apiserver_port),
    )
    (tmp_path / "home").mkdir()
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", setup,
         str(mounted), sys.executable, str(program), json.dumps(config)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_in_cluster_service_account_under_the_restricted_policy(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    token = _service_account(kube, namespace)
    done = _in_cluster(kube, namespace, token, tmp_path, {})
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = (json.loads(line) for line in done.stdout.splitlines()[:2])
    assert first == {"region": f"in-cluster/{namespace}"}
    assert second["square"] == 49
    # Admitted by the restricted policy: the only one this account may use.
    assert [a.get("kubernetes.io/psp") for a in second["annotations"]] == ["restricted"]
    assert wait_until(lambda: not kube.api.get(f"/api/v1/namespaces/{namespace}/pods")["items"], 30)


@pytest.mark.slow
def test_root_pods_never_run_under_the_restricted_policy(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    """``run_as_user=None`` (the image's root user) under the restricted policy: the
    policy admits the pod but makes it ``runAsNonRoot`` (1.20's PSP mutates), so the
    kubelet refuses to start it; the launch fails at once naming why, and leaves nothing.
    (A 1.22+ namespace labelled ``enforce: restricted`` refuses the pod at admission
    instead: ``restricted_violations`` above is that check.)"""
    token = _service_account(kube, namespace)
    done = _in_cluster(kube, namespace, token, tmp_path, {"run_as_user": None})
    assert done.returncode != 0
    assert "CreateContainerConfigError: container has runAsNonRoot and image will run as root" in (
        done.stderr
    ), done.stderr[-3000:]
    assert wait_until(lambda: not kube.api.get(f"/api/v1/namespaces/{namespace}/pods")["items"], 30)
