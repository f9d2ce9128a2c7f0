"""A real Kubernetes control plane on 127.0.0.1 for the provider's tests.

etcd (Debian's ``etcd-server``), kube-apiserver, kube-scheduler and kube-controller-manager
(built once by ``tests/kube_build.sh`` from Debian bookworm's ``kubernetes`` source package
into a cache outside the clone) run as child processes of the test session, each listening
on 127.0.0.1 only, on ports picked free at start. Pods run on fake kubelets
(``tests/kube_kubelet.py``); the real scheduler binds them, the real garbage collector
follows owner references, the real node-lifecycle controller untaints ready nodes.

Clients authenticate with a static bearer token in ``system:masters``; the apiserver
verifies each kubelet's serving certificate against the test CA and presents a client
certificate from the same CA to them. Everything lives in one temporary directory that
``stop()`` removes.

Network rule: nothing here listens on or sends to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILD_SCRIPT = Path(__file__).with_name("kube_build.sh")
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
CONTEXT = "skyward-test"
START_TIMEOUT = 90.0  # the apiserver takes ~4 s alone; the 2 cores are shared


def build_control_plane() -> Path:
    """The cache directory holding ``bin/kube-*``, built on first use (~8 min once)."""
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, timeout=3600
    )
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass
class Certificates:
    """A test CA and what is signed by it, as files in ``directory``."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"

    @classmethod
    def create(cls, directory: Path, names: Sequence[str]) -> Certificates:
        """CA plus one serving/client certificate per name (SAN 127.0.0.1 and localhost)."""
        directory.mkdir(parents=True, exist_ok=True)
        _openssl("genrsa", "-out", "ca.key", "2048", cwd=directory)
        _openssl(
            "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=skyward-test-ca",
            "-out", "ca.crt", cwd=directory,
        )  # fmt: skip
        ext = directory / "san.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
        for name in names:
            _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=directory)
            _openssl(
                "req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}/O=system:masters",
                "-out", f"{name}.csr", cwd=directory,
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt",
                cwd=directory,
            )  # fmt: skip
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
        return cls(directory)


@dataclass
class ControlPlane:
    """etcd + apiserver + scheduler + controller-manager, started by :meth:`start`."""

    root: Path
    bin_dir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    apiserver_port: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    certs: Certificates | None = None
    timings: dict[str, float] = field(default_factory=dict)
    pod_network: Any = None
    """The pods' network (``tests/kube_network.PodNetwork``), made by the first kubelet."""

    @classmethod
    def create(cls, bin_dir: Path | None = None) -> ControlPlane:
        root = Path(tempfile.mkdtemp(prefix="skyward-kube-"))
        return cls(root=root, bin_dir=bin_dir or build_control_plane() / "bin")

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        self.processes[name] = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.close()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, name: str, ready: object, timeout: float = START_TIMEOUT) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{self.log_tail(name)}")

    def _https_ok(self, path: str) -> bool:
        assert self.certs is not None
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start(self) -> None:
        started = time.monotonic()
        self.certs = Certificates.create(self.root / "pki", ["apiserver", "kubelet", "client"])
        certs = self.certs
        (self.root / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        os.chmod(self.root / "tokens.csv", 0o600)
        self._write_kubeconfig()
        etcd_client, etcd_peer, etcd_metrics = free_port(), free_port(), free_port()
        self._spawn(
            "etcd",
            [
                ETCD, "--name=skyward-test", f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=skyward-test=http://127.0.0.1:{etcd_peer}",
                f"--listen-metrics-urls=http://127.0.0.1:{etcd_metrics}",
                "--unsafe-no-fsync", "--log-level=warn",
            ],
        )  # fmt: skip
        self._wait("etcd", lambda: _port_open(etcd_client))
        self.timings["etcd"] = time.monotonic() - started
        apiserver_cert, apiserver_key = certs.pair("apiserver")
        kubelet_client_cert, kubelet_client_key = certs.pair("client")
        self._spawn(
            "apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1", f"--secure-port={self.apiserver_port}",
                "--insecure-port=0", "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={apiserver_cert}", f"--tls-private-key-file={apiserver_key}",
                f"--client-ca-file={certs.ca}",
                f"--token-auth-file={self.root / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={certs.directory / 'sa.pub'}",
                f"--service-account-signing-key-file={certs.directory / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={certs.ca}",
                f"--kubelet-client-certificate={kubelet_client_cert}",
                f"--kubelet-client-key={kubelet_client_key}",
                "--allow-privileged=true", "--enable-priority-and-fairness=false",
                "--disable-admission-plugins=ServiceAccount",
                "--enable-admission-plugins=PodSecurityPolicy",
                f"--cert-dir={self.root / 'apiserver-certs'}", "--v=1",
            ],
        )  # fmt: skip
        self._wait("apiserver", lambda: self._https_ok("/readyz"))
        self._create_pod_security_policies()
        self.timings["apiserver"] = time.monotonic() - started
        sa_key = certs.directory / "sa.key"
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--port=0"]
        self._spawn(
            "scheduler",
            [str(self.bin_dir / "kube-scheduler"), *common, "--bind-address=127.0.0.1",
             f"--secure-port={free_port()}", f"--authentication-kubeconfig={self.kubeconfig}",
             f"--authorization-kubeconfig={self.kubeconfig}", "--v=1"],
        )  # fmt: skip
        self._spawn(
            "controller-manager",
            [str(self.bin_dir / "kube-controller-manager"), *common,
             "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
             f"--authentication-kubeconfig={self.kubeconfig}",
             f"--authorization-kubeconfig={self.kubeconfig}",
             f"--service-account-private-key-file={sa_key}", f"--root-ca-file={certs.ca}",
             "--use-service-account-credentials=false", "--controllers=*",
             "--node-monitor-period=1s", "--node-monitor-grace-period=40s",
             "--concurrent-gc-syncs=5", "--v=1"],
        )  # fmt: skip
        time.sleep(0.2)
        for name in ("scheduler", "controller-manager"):
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log_tail(name)}")
        self.timings["control plane"] = time.monotonic() - started

    def _create_pod_security_policies(self) -> None:
        """PodSecurityPolicy admission is on (1.20 predates Pod Security admission; PSP is
        what a locked-down 1.20 namespace used). ``privileged`` admits anything: the
        harness's own admin token may use it. ``restricted`` is the Pod Security Standards'
        restricted profile as a PSP (Kubernetes' own example policy): only accounts granted
        ``use`` on it are held to it."""
        from tests.kube_api import KubeAPI

        assert self.certs is not None
        api = KubeAPI(self.apiserver_port, self.token, self.certs.ca)
        path = "/apis/policy/v1beta1/podsecuritypolicies"
        any_range = {"rule": "RunAsAny"}
        api.post(path, {
            "apiVersion": "policy/v1beta1", "kind": "PodSecurityPolicy",
            "metadata": {"name": "privileged", "annotations": {
                "seccomp.security.alpha.kubernetes.io/allowedProfileNames": "*"}},
            "spec": {
                "privileged": True, "allowPrivilegeEscalation": True,
                "allowedCapabilities": ["*"], "volumes": ["*"], "hostNetwork": True,
                "hostPorts": [{"min": 0, "max": 65535}], "hostIPC": True, "hostPID": True,
                "runAsUser": any_range, "seLinux": any_range,
                "supplementalGroups": any_range, "fsGroup": any_range,
            },
        })  # fmt: skip
        groups = {"rule": "MustRunAs", "ranges": [{"min": 1, "max": 65535}]}
        api.post(path, {
            "apiVersion": "policy/v1beta1", "kind": "PodSecurityPolicy",
            "metadata": {"name": "restricted", "annotations": {
                "seccomp.security.alpha.kubernetes.io/allowedProfileNames":
                    "docker/default,runtime/default"}},
            "spec": {
                "privileged": False, "allowPrivilegeEscalation": False,
                "requiredDropCapabilities": ["ALL"],
                "volumes": ["configMap", "emptyDir", "projected", "secret", "downwardAPI",
                            "csi", "persistentVolumeClaim", "ephemeral"],
                "hostNetwork": False, "hostIPC": False, "hostPID": False,
                "runAsUser": {"rule": "MustRunAsNonRoot"}, "seLinux": any_range,
                "supplementalGroups": groups, "fsGroup": groups,
                "readOnlyRootFilesystem": False,
            },
        })  # fmt: skip

    def _write_kubeconfig(self) -> None:
        assert self.certs is not None
        server = "https://127.0.0.1:{port}"
        self.apiserver_port = self.apiserver_port or free_port()
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: {CONTEXT}\n  cluster:\n"
            f"    server: {server.format(port=self.apiserver_port)}\n"
            f"    certificate-authority: {self.certs.ca}\n"
            f"users:\n- name: {CONTEXT}-admin\n  user:\n    token: {self.token}\n"
            f"contexts:\n- name: {CONTEXT}\n  context:\n    cluster: {CONTEXT}\n"
            f"    user: {CONTEXT}-admin\n    namespace: default\n"
            f"current-context: {CONTEXT}\n"
        )
        os.chmod(self.kubeconfig, 0o600)

    def rss_mb(self) -> float:
        """Resident memory of the control plane's processes, in MB."""
        import psutil

        total = 0
        for process in self.processes.values():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(process.pid).memory_info().rss
        return total / 1e6

    def stop(self) -> None:
        for name in ("controller-manager", "scheduler", "apiserver", "etcd"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                process.wait(10)
        if self.pod_network is not None:
            self.pod_network.close()
            self.pod_network = None
        shutil.rmtree(self.root, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
