"""The Kubernetes test harness itself: the real control plane and the fake kubelet.

Pods here are written as plain dicts and sent with the harness's own API client, so
these tests check the harness without the provider under test.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.kube_api import JSON, KubeAPI, KubeAPIError
from tests.kube_fixtures import KubeCluster, kube, namespace

__all__ = ["kube", "namespace"]

pytestmark = pytest.mark.slow


def pod_body(name: str, command: list[str], **spec: Any) -> JSON:
    container: JSON = {"name": "node", "image": "python:3.11-slim", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": "t"})},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def create_pod(api: KubeAPI, ns: str, body: JSON) -> JSON:
    return api.post(f"/api/v1/namespaces/{ns}/pods", body)


def get_pod(api: KubeAPI, ns: str, name: str) -> JSON | None:
    try:
        return api.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    except KubeAPIError as error:
        if error.status == 404:
            return None
        raise


def wait_pod(
    api: KubeAPI, ns: str, name: str, check: Callable[[JSON], bool], timeout: float = 30
) -> JSON:
    seen: list[JSON] = []

    def done() -> bool:
        pod = get_pod(api, ns, name)
        if pod is None:
            return False
        seen[:] = [pod]
        return check(pod)

    assert wait_until(done, timeout, 0.1), json.dumps(seen[-1]["status"] if seen else None)
    return seen[-1]


def phase(pod: JSON) -> str:
    return str(pod.get("status", {}).get("phase", ""))


def test_nodes_are_ready_with_gpu_capacity(kube: KubeCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in kube.api.get("/api/v1/nodes")["items"]}
    assert {"h100-0", "h100-1", "cpu-0"} <= set(nodes)
    h100 = nodes["h100-0"]
    assert h100["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert h100["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert {t["key"] for t in h100["spec"]["taints"]} == {"nvidia.com/gpu"}
    ready = {c["type"]: c["status"] for c in h100["status"]["conditions"]}
    assert ready["Ready"] == "True"
    # Cold start of the whole cluster (control plane + 3 nodes), printed for the report.
    print(f"cluster started in {kube.started_in:.1f} s, {kube.plane.rss_mb():.0f} MB RSS")
    assert kube.started_in < 120


def test_pod_runs_reports_ip_and_succeeds(kube: KubeCluster, namespace: str) -> None:
    command = ["sh", "-c", 'echo "$POD_IP $POD_NAME" > out; sleep 0.5']
    body = pod_body("p", command)
    body["spec"]["containers"][0]["env"] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    create_pod(kube.api, namespace, body)
    running = wait_pod(kube.api, namespace, "p", lambda p: phase(p) == "Running")
    assert running["spec"]["nodeName"] == "cpu-0"  # untolerated GPU taint on the others
    ip = running["status"]["podIP"]
    assert ip.startswith("169.254.214.")
    done = wait_pod(kube.api, namespace, "p", lambda p: phase(p) == "Succeeded")
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    run = next(
        r
        for k in kube.kubelets.values()
        for r in k.pods.values()
        if r.name == "p" and r.namespace == namespace
    )
    assert (run.directory / "out").read_text().split() == [ip, "p"]


def test_failed_container_reports_exit_code(kube: KubeCluster, namespace: str) -> None:
    create_pod(kube.api, namespace, pod_body("f", ["sh", "-c", "exit 3"]))
    pod = wait_pod(kube.api, namespace, "f", lambda p: phase(p) == "Failed")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_scheduler_reports_insufficient_gpus(kube: KubeCluster, namespace: str) -> None:
    body = pod_body(
        "big", ["sleep", "30"],
        container={"resources": {"limits": {"nvidia.com/gpu": "16"}}},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )  # fmt: skip
    create_pod(kube.api, namespace, body)

    def unschedulable(pod: JSON) -> bool:
        conditions = pod.get("status", {}).get("conditions") or []
        return any(c.get("reason") == "Unschedulable" for c in conditions)

    pod = wait_pod(kube.api, namespace, "big", unschedulable)
    message = next(c["message"] for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in message


def test_gpu_pod_lands_on_a_gpu_node(kube: KubeCluster, namespace: str) -> None:
    body = pod_body(
        "g", ["sh", "-c", 'echo "$NVIDIA_VISIBLE_DEVICES" > gpus; sleep 30'],
        container={"resources": {"limits": {"nvidia.com/gpu": "2"}}},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    )  # fmt: skip
    create_pod(kube.api, namespace, body)
    pod = wait_pod(kube.api, namespace, "g", lambda p: phase(p) == "Running")
    assert pod["spec"]["nodeName"].startswith("h100-")
    run = kube.kubelets[pod["spec"]["nodeName"]].running_pod(namespace, "g")
    assert run is not None
    assert wait_until(lambda: (run.directory / "gpus").exists(), 10)
    assert (run.directory / "gpus").read_text().strip() == "0,1"


def test_unknown_image_waits_with_err_image_pull(kube: KubeCluster, namespace: str) -> None:
    create_pod(kube.api, namespace, pod_body("i", ["true"], container={"image": "nosuch/image:1"}))

    def waiting(pod: JSON) -> bool:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        return bool(statuses) and "waiting" in statuses[0]["state"]

    pod = wait_pod(kube.api, namespace, "i", waiting)
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"


def test_active_deadline_fails_the_pod(kube: KubeCluster, namespace: str) -> None:
    create_pod(kube.api, namespace, pod_body("d", ["sleep", "60"], activeDeadlineSeconds=1))
    pod = wait_pod(kube.api, namespace, "d", lambda p: phase(p) == "Failed", timeout=30)
    assert pod["status"]["reason"] == "DeadlineExceeded"


def test_delete_kills_the_process_and_removes_the_pod(kube: KubeCluster, namespace: str) -> None:
    create_pod(kube.api, namespace, pod_body("k", ["sleep", "60"]))
    wait_pod(kube.api, namespace, "k", lambda p: phase(p) == "Running")
    run = kube.kubelets["cpu-0"].running_pod(namespace, "k")
    assert run is not None
    assert run.process is not None
    started = time.monotonic()
    kube.api.delete(f"/api/v1/namespaces/{namespace}/pods/k")
    assert wait_until(lambda: get_pod(kube.api, namespace, "k") is None, 20)
    assert run.process.poll() is not None
    assert time.monotonic() - started < 15


def test_deleting_an_owner_garbage_collects_pods(kube: KubeCluster, namespace: str) -> None:
    owner = kube.api.post(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "anchor"}, "data": {}},
    )
    ref = {
        "apiVersion": "v1", "kind": "ConfigMap", "name": "anchor",
        "uid": owner["metadata"]["uid"], "controller": False, "blockOwnerDeletion": False,
    }  # fmt: skip
    for i in range(2):
        body = pod_body(f"o{i}", ["sleep", "60"])
        body["metadata"]["ownerReferences"] = [ref]
        create_pod(kube.api, namespace, body)
    for i in range(2):
        wait_pod(kube.api, namespace, f"o{i}", lambda p: phase(p) == "Running")
    kube.api.delete(
        f"/api/v1/namespaces/{namespace}/configmaps/anchor",
        {"propagationPolicy": "Background"},
    )
    assert wait_until(lambda: not kube.api.get(f"/api/v1/namespaces/{namespace}/pods")["items"], 30)


# ---------------------------------------------------------------- streaming, raw websockets


def _ws(kube: KubeCluster, path: str, protocols: list[str]) -> Any:
    import websocket

    assert kube.plane.certs is not None
    return websocket.create_connection(
        f"wss://127.0.0.1:{kube.plane.apiserver_port}{path}",
        header=[f"Authorization: Bearer {kube.plane.token}"],
        subprotocols=protocols,
        sslopt={"ca_certs": str(kube.plane.certs.ca), "cert_reqs": ssl.CERT_REQUIRED},
        enable_multithread=True,
        timeout=30,
    )


def _exec(
    kube: KubeCluster,
    ns: str,
    pod: str,
    command: list[str],
    stdin: bytes | None,
    protocols: list[str],
) -> tuple[int, bytes, str]:
    query = urllib.parse.urlencode(
        [("command", c) for c in command]
        + [
            ("stdin", "true" if stdin is not None else "false"),
            ("stdout", "true"),
            ("stderr", "true"),
        ]
    )
    ws = _ws(kube, f"/api/v1/namespaces/{ns}/pods/{pod}/exec?{query}", protocols)
    protocol = ws.getsubprotocol()
    if stdin is not None:
        ws.send_binary(b"\x00" + stdin)
        if protocol == "v5.channel.k8s.io":
            ws.send_binary(b"\xff\x00")
    out = b""
    status: JSON = {}
    while True:
        try:
            data = ws.recv()
        except Exception:
            break
        if not data:
            break
        if data[0] == 1:
            out += data[1:]
        elif data[0] == 3:
            status = json.loads(data[1:])
    ws.close()
    if status.get("status") == "Success":
        return 0, out, protocol
    causes = status.get("details", {}).get("causes", [])
    return int(next(c["message"] for c in causes if c["reason"] == "ExitCode")), out, protocol


def test_exec_through_the_apiserver_v5_and_v4(kube: KubeCluster, namespace: str) -> None:
    create_pod(kube.api, namespace, pod_body("e", ["sleep", "60"]))
    wait_pod(kube.api, namespace, "e", lambda p: phase(p) == "Running")
    protocols = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
    code, out, protocol = _exec(
        kube, namespace, "e", ["sh", "-c", "cat; exit 3"], b"hello", protocols
    )
    assert (code, out, protocol) == (3, b"hello", "v5.channel.k8s.io")
    code, out, protocol = _exec(
        kube, namespace, "e", ["sh", "-c", "head -c 5"], b"hello", protocols[1:]
    )
    assert (code, out, protocol) == (0, b"hello", "v4.channel.k8s.io")


def test_port_forward_bulk_both_ways_and_refused_port(kube: KubeCluster, namespace: str) -> None:
    port = 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    echo = (
        f"import socket;s=socket.create_server(('127.0.0.1',{port}));open('up','w').close()\n"
        "c,_=s.accept();s.close()\nwhile d:=c.recv(1<<16): c.sendall(d)\n"
        "import time;time.sleep(60)"
    )
    create_pod(kube.api, namespace, pod_body("pf", ["python3", "-c", echo]))
    wait_pod(kube.api, namespace, "pf", lambda p: phase(p) == "Running")
    run = next(filter(None, (k.running_pod(namespace, "pf") for k in kube.kubelets.values())))
    assert wait_until(lambda: (run.directory / "up").exists(), 20)
    ws = _ws(
        kube,
        f"/api/v1/namespaces/{namespace}/pods/pf/portforward?ports={port}",
        ["v4.channel.k8s.io"],
    )
    preludes = [ws.recv(), ws.recv()]
    assert sorted(p[0] for p in preludes) == [0, 1]
    assert all(struct.unpack("<H", p[1:3])[0] == port for p in preludes)
    # Lock-step, one thread: an ssl socket must not be read and written from two threads
    # at once (OpenSSL objects are not thread-safe; it broke 1 stream in 8 here, the
    # client resetting the connection mid-transfer).
    size = 32 << 20
    chunk = bytes(range(256)) * 256
    received = bytearray()
    for _ in range(size // len(chunk)):
        ws.send_binary(b"\x00" + chunk)
        wanted = len(received) + len(chunk)
        while len(received) < wanted:
            data = ws.recv()
            if data and data[0] == 0:
                received.extend(data[1:])
    assert len(received) == size
    assert received == chunk * (size // len(chunk))
    ws.close()
    # The echo server stopped listening after its one connection: the pod still runs, the
    # port refuses, and the kubelet reports that on the error channel.
    ws = _ws(
        kube,
        f"/api/v1/namespaces/{namespace}/pods/pf/portforward?ports={port}",
        ["v4.channel.k8s.io"],
    )
    messages = [ws.recv() for _ in range(3)]
    errors = [m[1:] for m in messages if m[0] == 1 and len(m) > 3]
    assert errors
    assert b"connection refused" in errors[0].lower()
    ws.close()


def test_pod_has_its_own_pid_namespace_and_user(kube: KubeCluster, namespace: str) -> None:
    create_pod(kube.api, namespace, pod_body("ns", ["sleep", "60"]))
    wait_pod(kube.api, namespace, "ns", lambda p: phase(p) == "Running")
    protocols = ["v5.channel.k8s.io"]
    command = ["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; echo; id -un; echo $$"]
    code, out, _ = _exec(kube, namespace, "ns", command, None, protocols)
    init, user, shell_pid = out.decode().split("\n")[:3]
    assert code == 0
    assert init.strip() == "sleep 60"  # the container's command is PID 1 of the pod
    assert user.startswith("skk")
    assert int(shell_pid) < 100  # a fresh PID space, not this machine's
    # `kill 1` in a pod reaches the pod's own init, which has no handler: nothing happens
    # (without the namespace it would have signalled this machine's init).
    code, _, _ = _exec(kube, namespace, "ns", ["sh", "-c", "kill -TERM 1"], None, protocols)
    assert code == 0
    time.sleep(0.5)
    pod = get_pod(kube.api, namespace, "ns")
    assert pod is not None
    assert phase(pod) == "Running"


def test_each_pod_has_its_own_network_namespace(kube: KubeCluster, namespace: str) -> None:
    """Pods reach each other on their pod IPs over the pod network; 127.0.0.1 in a pod is
    its own loopback; a pod has only ``lo`` and ``eth0`` (nothing of this machine's)."""
    port = 18080
    serve = (
        "import socket\n"
        f"s = socket.create_server(('0.0.0.0', {port}))\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(b'from-a'); c.close()\n"
    )
    create_pod(kube.api, namespace, pod_body("a", ["python3", "-c", serve]))
    create_pod(kube.api, namespace, pod_body("b", ["sleep", "60"]))
    a = wait_pod(kube.api, namespace, "a", lambda p: phase(p) == "Running")
    b = wait_pod(kube.api, namespace, "b", lambda p: phase(p) == "Running")
    a_ip, b_ip = a["status"]["podIP"], b["status"]["podIP"]
    assert a_ip != b_ip
    assert a_ip.startswith("169.254.214.")
    probe = (
        "import socket, sys\n"
        "def get(host):\n"
        "    for _ in range(50):\n"
        "        try:\n"
        f"            with socket.create_connection((host, {port}), timeout=5) as c:\n"
        "                return c.recv(16).decode()\n"
        "        except ConnectionRefusedError as e:\n"
        "            if host == '127.0.0.1': return 'refused'\n"
        "            import time; time.sleep(0.1)\n"
        "    return 'never'\n"
        f"print(get('{a_ip}'), get('127.0.0.1'))\n"
    )
    protocols = ["v5.channel.k8s.io"]
    code, out, _ = _exec(kube, namespace, "b", ["python3", "-c", probe], None, protocols)
    assert (code, out.decode().split()) == (0, ["from-a", "refused"])
    code, out, _ = _exec(kube, namespace, "b", ["ip", "-o", "-4", "addr"], None, protocols)
    assert code == 0
    addresses = sorted(
        line.split()[1] + " " + line.split()[3] for line in out.decode().splitlines()
    )
    assert addresses == [f"eth0 {b_ip}/24", "lo 127.0.0.1/8"]
