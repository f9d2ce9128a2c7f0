"""Reaching pods through the API only: exec (stdin closed with v5, length-framed with v4),
tar uploads, port-forward bulk traffic both ways at once, a refused port, a cut stream;
then whole pools through ``sky.Kubernetes``."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

import skyward as sky
from skyward.spec import build_spec
from skyward_kubernetes import Kubernetes
from skyward_kubernetes.manifests import HOME_MOUNT
from skyward_kubernetes.provider import KubernetesProvider
from skyward_kubernetes.streams import open_port_forward
from skyward_kubernetes.transport import KubeTransport
from tests.conftest import wait_until
from tests.kube_fixtures import KubeCluster, kube, namespace
from tests.test_kubernetes_provider import launch

__all__ = ["kube", "namespace"]

pytestmark = pytest.mark.slow


@pytest.fixture
def provider(kube: KubeCluster, namespace: str) -> KubernetesProvider:
    config = Kubernetes(kubeconfig=str(kube.plane.kubeconfig), namespace=namespace)
    created = config.create()
    assert isinstance(created, KubernetesProvider)
    return created


@pytest.fixture
def pod(
    provider: KubernetesProvider, kube: KubeCluster, namespace: str
) -> tuple[KubeTransport, Path]:
    """One running pod (on the CPU node) and, on this machine, the directory that is its
    ``$HOME`` (an emptyDir the fake kubelet mounts at /home/skyward in the pod)."""
    _, [instance] = launch(provider, build_spec(cpu=1), "sky-transport")
    transport = provider.connect(None, instance)  # type: ignore[arg-type]
    assert isinstance(transport, KubeTransport)
    assert transport.run("pwd").output.decode().strip() == HOME_MOUNT
    run = kube.kubelets[instance.tags["node"]].running_pod(namespace, instance.id)
    assert run is not None
    home = run.directory / "volumes" / "home"
    transport.run("touch here")
    assert (home / "here").exists()
    return transport, home


def test_exec_exit_code_and_stdin_v5(pod: tuple[KubeTransport, Path]) -> None:
    transport, _ = pod
    result = transport.run("cat; exit 3", stdin=b"hello")
    assert (result.code, result.output, result.protocol) == (3, b"hello", "v5.channel.k8s.io")
    lines: list[str] = []
    assert transport.run("echo a; echo b >&2; printf c", on_line=lines.append).code == 0
    assert lines == ["a", "b", "c"]


def test_exec_v4_frames_stdin_by_length(kube: KubeCluster, pod: tuple[KubeTransport, Path]) -> None:
    transport, _ = pod
    kubelet = kube.kubelets["cpu-0"]
    kubelet.protocols = ("v4.channel.k8s.io",)
    try:
        transport.v5 = None
        result = transport.run("cat | wc -c", stdin=b"x" * 100_000)
        assert result.protocol == "v4.channel.k8s.io"
        assert (result.code, result.output.strip()) == (0, b"100000")
    finally:
        kubelet.protocols = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")


def test_upload_integrity(pod: tuple[KubeTransport, Path], tmp_path: Path) -> None:
    transport, home = pod
    data = os.urandom(16 << 20)
    (tmp_path / "blob").write_bytes(data)
    (tmp_path / "small").write_text("x")
    started = time.monotonic()
    transport.upload([tmp_path / "blob", tmp_path / "small"], "up/dir")
    elapsed = time.monotonic() - started
    assert (
        hashlib.sha256((home / "up/dir/blob").read_bytes()).digest()
        == hashlib.sha256(data).digest()
    )
    assert (home / "up/dir/small").read_text() == "x"
    print(f"16 MiB upload in {elapsed:.2f} s")


def _echo_server(transport: KubeTransport, home: Path) -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    script = (
        "import socket,threading\n"
        f"s=socket.create_server(('127.0.0.1',{port}))\n"
        "open('echo-up','w').close()\n"
        "def serve(c):\n"
        "    while d:=c.recv(1<<16): c.sendall(d)\n"
        "    c.close()\n"
        "while True:\n"
        "    c,_=s.accept(); threading.Thread(target=serve,args=(c,),daemon=True).start()\n"
    )
    (home / "echo.py").write_text(script)
    transport.run("nohup python3 echo.py >/dev/null 2>&1 &")
    assert wait_until(lambda: (home / "echo-up").exists(), 20)
    return port


def test_port_forward_bulk_both_ways_at_once(pod: tuple[KubeTransport, Path]) -> None:
    transport, home = pod
    port = _echo_server(transport, home)
    stream = open_port_forward(transport.client, transport.pod, port)
    size = 64 << 20
    block = os.urandom(1 << 20)
    received = bytearray()

    def read() -> None:
        while len(received) < size:
            data = stream.recv(1 << 20)
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read)
    started = time.monotonic()
    reader.start()
    for _ in range(size // len(block)):
        stream.sendall(block)
    reader.join(120)
    elapsed = time.monotonic() - started
    stream.close()
    assert len(received) == size
    assert (
        hashlib.sha256(received).digest() == hashlib.sha256(block * (size // len(block))).digest()
    )
    print(f"64 MiB each way at once in {elapsed:.2f} s")


def test_refused_port_and_cut_stream(kube: KubeCluster, pod: tuple[KubeTransport, Path]) -> None:
    transport, home = pod
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused = int(probe.getsockname()[1])
    with pytest.raises(ConnectionRefusedError, match="refused"):
        open_port_forward(transport.client, transport.pod, unused)
    port = _echo_server(transport, home)
    stream = open_port_forward(transport.client, transport.pod, port)
    stream.sendall(b"ping")
    assert stream.recv(4) == b"ping"
    kube.kubelets["cpu-0"].drop_streams()
    stream.settimeout(20)
    assert stream.recv(4) == b""  # the cut reaches the caller as end of stream
    stream.close()
    again = open_port_forward(transport.client, transport.pod, port)  # and it reconnects
    again.sendall(b"pong")
    assert again.recv(4) == b"pong"
    again.close()


@sky.compute
def where() -> dict[str, object]:
    info = sky.instance_info()
    return {
        "node": info.node,
        "total": info.total_nodes,
        "head_addr": info.head_addr,
        "pod_ip": os.environ.get("SKYWARD_POD_IP"),
        "home": os.stat(os.environ["HOME"]).st_ino,
        "uid": os.getuid(),
    }


@sky.compute
def square(x: int) -> int:
    return x * x


def test_whole_pool(kube: KubeCluster, namespace: str) -> None:
    provider = Kubernetes(kubeconfig=str(kube.plane.kubeconfig), namespace=namespace)
    events: list[object] = []
    started = time.monotonic()
    with sky.ComputePool(
        provider=provider, nodes=2, cpu=1, display="quiet", on_event=events.append
    ) as pool:
        entered = time.monotonic() - started
        assert square(7) >> pool == 49
        infos = where() @ pool
        assert [i["node"] for i in infos] == [0, 1]
        assert {i["head_addr"] for i in infos} == {infos[0]["pod_ip"]}
        assert infos[0]["home"] != infos[1]["home"]
        uids = {i["uid"] for i in infos}
        assert len(uids) == 2, "each pod runs as its own unix user"
        assert 0 not in uids
        results = sky.gather(*(square(i) for i in range(200))) >> pool
        assert list(results) == [i * i for i in range(200)]
        # Every port-forward cut at once (an apiserver restart, a load balancer's idle
        # cut): the client reconnects through new port-forwards and carries on.
        for kubelet in kube.kubelets.values():
            kubelet.drop_streams()
        assert square(9) >> pool == 81
        assert list(square(3) @ pool) == [9, 9]
    print(f"2-pod pool entered in {entered:.1f} s")
    assert wait_until(lambda: not kube.api.get(f"/api/v1/namespaces/{namespace}/pods")["items"], 30)
    assert not kube.api.get(f"/api/v1/namespaces/{namespace}/services")["items"]


@sky.compute
def serve_or_call(port: int) -> str:
    """Node 0 listens on its pod IP; the others connect to ``head_addr``: pod-to-pod."""
    info = sky.instance_info()
    if info.node == 0:
        with socket.create_server((info.head_addr, port)) as server:
            server.settimeout(30)
            connection, _ = server.accept()
            with connection:
                return connection.recv(64).decode()
    for _ in range(100):
        try:
            with socket.create_connection((info.head_addr, port), timeout=5) as client:
                client.sendall(f"hello from {info.node}".encode())
                return "sent"
        except ConnectionRefusedError:
            time.sleep(0.1)
    return "head never listened"


@sky.compute
def fail() -> None:
    raise RuntimeError("boom")


def test_pool_traffic_on_pod_ips_and_teardown_on_error(kube: KubeCluster, namespace: str) -> None:
    from tests.conftest import agent_processes

    provider = Kubernetes(kubeconfig=str(kube.plane.kubeconfig), namespace=namespace)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    pool_id = ""
    pool = sky.ComputePool(provider=provider, nodes=2, cpu=1, display="quiet")

    def use() -> None:
        nonlocal pool_id
        with pool:
            pool_id = pool.pool_id
            assert serve_or_call(port) @ pool == ("hello from 1", "sent")
            fail() >> pool

    with pytest.raises(RuntimeError, match="boom"):  # the pool's exception exit path
        use()
    assert wait_until(lambda: not kube.api.get(f"/api/v1/namespaces/{namespace}/pods")["items"], 30)
    assert not kube.api.get(
        f"/api/v1/namespaces/{namespace}/configmaps", labelSelector="skyward/managed=true"
    )["items"]
    assert not agent_processes(pool_id)


def test_skyward_down_cli_sweeps_the_context_namespace(kube: KubeCluster, tmp_path: Path) -> None:
    import subprocess
    import sys

    # The CLI builds sky.Kubernetes() with defaults: KUBECONFIG, its current context and
    # that context's namespace ("default").
    env = {**os.environ, "KUBECONFIG": str(kube.plane.kubeconfig)}
    provider = Kubernetes(kubeconfig=str(kube.plane.kubeconfig)).create()
    assert isinstance(provider, KubernetesProvider)
    launch(provider, build_spec(cpu=1, nodes=2), "sky-cli-orphan")
    down = subprocess.run(
        [sys.executable, "-m", "skyward.cli", "down", "--yes", "--provider", "kubernetes"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert "sky-cli-orphan-0" in down.stdout
    assert "2 instance(s) terminated" in down.stderr
    assert wait_until(lambda: not kube.api.get("/api/v1/namespaces/default/pods")["items"], 30)
    assert not kube.api.get(
        "/api/v1/namespaces/default/services", labelSelector="skyward/managed=true"
    )["items"]


def test_docs_example_runs(kube: KubeCluster, tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    page = (Path(__file__).parents[1] / "docs" / "providers" / "kubernetes.md").read_text()
    example = re.search(r"## Example\n\n```python\n(.*?)```", page, re.S)
    assert example is not None
    script = tmp_path / "example.py"
    script.write_text(example.group(1))
    env = {**os.environ, "KUBECONFIG": str(kube.plane.kubeconfig)}
    done = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("node ")]
    assert lines[0].startswith("node 0 of 2, head at 169.254.214.")
    assert lines[1].startswith("node 1 of 2, head at 169.254.214.")
    assert wait_until(lambda: not kube.api.get("/api/v1/namespaces/default/pods")["items"], 30)


def test_exec_plugin_credentials(kube: KubeCluster, namespace: str, tmp_path: Path) -> None:
    """A kubeconfig whose user is an exec plugin (as EKS and GKE write them): the token
    comes from the plugin, for REST calls and for the exec/port-forward websockets."""
    import json
    import sys

    calls = tmp_path / "calls"
    plugin = tmp_path / "token-plugin.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": kube.plane.token},
    }
    plugin.write_text(
        "import json, sys\n"
        f"open({str(calls)!r}, 'a').write('x')\n"
        f"print(json.dumps({credential!r}))\n"
    )
    assert kube.plane.certs is not None
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {
                    "server": kube.plane.server,
                    "certificate-authority": str(kube.plane.certs.ca)}}],
                "users": [{"name": "u", "user": {"exec": {
                    "apiVersion": "client.authentication.k8s.io/v1beta1",
                    "command": sys.executable, "args": [str(plugin)],
                    "interactiveMode": "Never"}}}],
                "contexts": [{"name": "plugged", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "plugged",
            }
        )
    )  # fmt: skip
    provider = Kubernetes(kubeconfig=str(config), namespace=namespace).create()
    assert isinstance(provider, KubernetesProvider)
    assert provider.offers(build_spec(cpu=1))
    _, [instance] = launch(provider, build_spec(cpu=1), "sky-plugged")
    transport = provider.connect(None, instance)  # type: ignore[arg-type]
    assert isinstance(transport, KubeTransport)
    assert transport.run("echo through-exec").output.strip() == b"through-exec"
    assert calls.read_text()  # the plugin was asked


@sky.compute
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_crashed_pod_is_reported_at_once_with_how_it_ended(
    kube: KubeCluster, namespace: str
) -> None:
    """A pod that dies (every process killed, reported Failed/OOMKilled) answers no
    port-forward again: the call fails with WorkerLostError naming the pod's end, well
    before the 30 s heartbeat timeout that retrying would wait for."""
    provider = Kubernetes(kubeconfig=str(kube.plane.kubeconfig), namespace=namespace)
    errors: list[BaseException] = []
    with sky.ComputePool(provider=provider, nodes=1, cpu=1, display="quiet") as pool:
        cluster = pool._cluster
        assert cluster is not None
        instance = cluster.instances[0]

        def call() -> None:
            try:
                nap(60) >> pool
            except BaseException as error:
                errors.append(error)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        time.sleep(1.0)  # the call is running on the node
        kube.kubelets[instance.tags["node"]].crash_pod(namespace, instance.id)
        crashed = time.monotonic()
        caller.join(30)
        assert not caller.is_alive()
        reported = time.monotonic() - crashed
    print(f"crash reported in {reported:.1f} s")
    assert reported < 15
    assert len(errors) == 1, errors
    assert isinstance(errors[0], sky.WorkerLostError), errors
    assert "OOMKilled" in str(errors[0])
