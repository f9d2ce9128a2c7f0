"""A fake kubelet: Nodes of the test cluster whose pods run as local processes.

Each :class:`FakeKubelet` registers one Node (capacity, GPU resources, labels and taints as
the test asks), renews its Lease, watches the pods the real scheduler binds to it and runs
each pod's container command as a local process in its own session and directory, as
PID 1 of its own PID (and mount) namespace, as the pod's own unix user
(``skk<session pid>p<n>``, removed with the pod); exec enters the same namespace and user. It
reports pod status (Pending with a waiting reason for images it cannot "pull", Running and
Ready, Succeeded/Failed with the exit code), honours deletion (kill, then the final
``DELETE`` with grace 0 and a uid precondition, as a kubelet does) and
``activeDeadlineSeconds`` (Failed, ``DeadlineExceeded``).

It also serves the kubelet's streaming API over TLS, the way the apiserver reaches it
for ``pods/exec`` and ``pods/portforward``: websockets with the channel sub-protocols
(``v5.channel.k8s.io`` with stdin close, ``v4.channel.k8s.io``, ...), exit status on
channel 3, port-forward with the port-number prelude, a refused port reported on the
error channel. The apiserver verifies this server's certificate against the test CA and
this server verifies the apiserver's client certificate.

Each pod also has its own network namespace on the session's pod network
(``tests/kube_network.py``: a bridge in a namespace of its own, pod IPs
``169.254.214.<n>``); exec enters it, and port-forward dials the pod's own 127.0.0.1
from inside it.

What a real node has and this does not: cgroups and resource enforcement, images (an
allow-list maps ``python:3.X`` images to this host's interpreter), container logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import os
import pwd
import re
import shlex
import shutil
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.kube_api import JSON, KubeAPI, KubeAPIError
from tests.kube_cluster import ControlPlane, free_port
from tests.kube_network import NETNS_DIR, connect_in

POD_MARKER = "SKYWARD_FAKE_POD_UID"
"""Environment variable every process of a fake pod carries, so its processes (the
container's and those started by exec) can be found and killed with the pod."""
_POD_INDEX = itertools.count(1)
USER_PREFIX = "skk"
"""Pod users are ``skk<test session pid>p<n>``: unique per session, so concurrent sessions
never share one, and a dead session's users can be recognised and removed."""
_USER = re.compile(rf"{USER_PREFIX}(\d+)p\d+")
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
_HOST_MINOR = f"{sys.version_info.major}.{sys.version_info.minor}"
_IMAGE_NAME = re.compile(
    r"[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
STREAM_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
PORTFORWARD_PROTOCOLS = ("portforward.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_image_check(image: str) -> str | None:
    """None when the image "pulls" (python images of this host's minor version), else the
    waiting reason a kubelet would report."""
    if not _IMAGE_NAME.fullmatch(image):
        return "InvalidImageName"
    name = image.split("@", 1)[0]
    if name in (f"python:{_HOST_MINOR}", f"python:{_HOST_MINOR}-slim") or name.startswith(
        f"python:{_HOST_MINOR}-slim-"
    ):
        return None
    return "ErrImagePull"


@dataclass
class PodRun:
    """A pod this kubelet has seen, and its process once started."""

    uid: str
    namespace: str
    name: str
    ip: str
    directory: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started: float | None = None
    active_deadline: float | None = None
    """``activeDeadlineSeconds`` as the pod spec says (seconds from start)."""
    deadline: float | None = None
    """When the deadline passes (monotonic clock); set only once the container started."""
    finished: bool = False
    waiting: str | None = None
    user: str = ""
    ns_pid: int | None = None
    """This machine's PID of the pod's PID-namespace init (its PID 1)."""
    uid_gid: tuple[int, int] | None = None
    """The pod's own unix user (root's processes only when ``users=False``)."""
    netns: str = ""
    """The pod's network namespace (``ip netns`` name); empty: this machine's."""


@dataclass
class FakeKubelet:
    """One fake Node of ``cluster``; :meth:`start` registers it, :meth:`stop` removes it."""

    cluster: ControlPlane
    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    extended: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()
    image_check: Callable[[str], str | None] = default_image_check
    protocols: Sequence[str] = STREAM_PROTOCOLS
    """Exec sub-protocols served, in order of preference (drop v5 to test the fallback)."""
    pods: dict[str, PodRun] = field(default_factory=dict)
    port: int = 0
    _api: KubeAPI | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _refuse_streams: bool = False
    _deleting: set[str] = field(default_factory=set)
    users: bool = True
    """Run each pod as its own unix user (needs root, as the harness does)."""
    pid_namespaces: bool = True
    """Run each pod in its own PID namespace, so ``kill 1`` in a pod stays in the pod."""
    net_namespaces: bool = True
    """Give each pod its own network namespace on the session's pod network."""

    @property
    def api(self) -> KubeAPI:
        if self._api is None:
            assert self.cluster.certs is not None
            self._api = KubeAPI(
                self.cluster.apiserver_port, self.cluster.token, self.cluster.certs.ca
            )
        return self._api

    @property
    def root(self) -> Path:
        return self.cluster.root / "kubelets" / self.name

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 60.0) -> None:
        remove_stale_users()
        self.root.mkdir(parents=True, exist_ok=True)
        # Pod users must traverse down to their own directories (which stay 0700).
        for directory in (self.cluster.root, self.root.parent, self.root):
            directory.chmod(0o711)
        self.port = free_port()
        self._start_server()
        self._register()
        for target in (self._heartbeat, self._watch_pods, self._tick):
            thread = threading.Thread(target=target, name=f"kubelet-{self.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.wait_schedulable(timeout)

    def wait_schedulable(self, timeout: float) -> None:
        """Until the node-lifecycle controller has lifted the not-ready taint."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.api.get(f"/api/v1/nodes/{self.name}")
            keys = {t["key"] for t in node["spec"].get("taints") or []}
            if not any(k.startswith("node.kubernetes.io/") for k in keys):
                return
            time.sleep(0.2)
        raise RuntimeError(f"node {self.name} still tainted not-ready after {timeout:.0f} s")

    def stop(self, delete_node: bool = True) -> None:
        self._stopping.set()
        with self._lock:
            for run in list(self.pods.values()):
                self._kill(run)
                _remove_user(run.user)
                self._detach(run)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if delete_node:
            with contextlib.suppress(KubeAPIError, OSError):
                self.api.delete(f"/api/v1/nodes/{self.name}")
        shutil.rmtree(self.root, ignore_errors=True)

    def _node_status(self) -> JSON:
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": "110", **self.extended}
        ready = {
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "fake kubelet is posting ready status",
            "lastHeartbeatTime": now(), "lastTransitionTime": now(),
        }  # fmt: skip
        return {
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [ready],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                "nodeInfo": {
                    "kubeletVersion": "v1.20.2-fake",
                    "kubeProxyVersion": "v1.20.2-fake",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "fake://0",
                    "osImage": "fake",
                    "kernelVersion": os.uname().release,
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            }
        }

    def _register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": [dict(t) for t in self.taints]},
        }
        with contextlib.suppress(KubeAPIError):
            self.api.delete(f"/api/v1/nodes/{self.name}")
        self.api.post("/api/v1/nodes", body)
        self.api.merge_patch(f"/api/v1/nodes/{self.name}/status", self._node_status())
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": 40,
                "renewTime": micro_now(),
            },
        }
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        try:
            self.api.post(path, lease)
        except KubeAPIError as error:
            if error.status != 409:
                raise

    def _heartbeat(self) -> None:
        lease = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        while not self._stopping.wait(5.0):
            with contextlib.suppress(KubeAPIError, OSError):
                self.api.merge_patch(lease, {"spec": {"renewTime": micro_now()}})
                self.api.merge_patch(f"/api/v1/nodes/{self.name}/status", self._node_status())

    # ---------------------------------------------------------------- pods

    def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self._stopping.is_set():
            try:
                listing = self.api.get("/api/v1/pods", fieldSelector=selector)
                for pod in listing["items"]:
                    self._sync(pod)
                version = listing["metadata"]["resourceVersion"]
                for event in self.api.watch(
                    "/api/v1/pods",
                    fieldSelector=selector,
                    resourceVersion=version,
                    timeoutSeconds="30",
                ):
                    if self._stopping.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._sync(event["object"])
                    elif event["type"] == "DELETED":
                        self._forget(event["object"]["metadata"]["uid"])
            except (KubeAPIError, OSError, ValueError, subprocess.SubprocessError):
                self._stopping.wait(0.5)

    def _sync(self, pod: JSON) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        with self._lock:
            run = self.pods.get(uid)
            if meta.get("deletionTimestamp"):
                if uid not in self._deleting:
                    # Off the watch thread: a grace period must not hold up other pods.
                    self._deleting.add(uid)
                    grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                    threading.Thread(
                        target=self._delete, args=(run, meta, grace), daemon=True
                    ).start()
                return
            if run is not None:
                # activeDeadlineSeconds may be shortened on a running pod.
                seconds = spec.get("activeDeadlineSeconds")
                if seconds is not None:
                    run.active_deadline = float(seconds)
                    if run.started is not None and not run.finished:
                        run.deadline = run.started + float(seconds)
                return
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return
            run = self._admit(pod)
            self.pods[uid] = run
        container = spec["containers"][0]
        waiting = self.image_check(container.get("image", "")) or _runs_as_root_problem(spec)
        if waiting is not None:
            run.waiting = waiting
            self._report_waiting(run, container, waiting)
            return
        self._run(run, pod)

    def _admit(self, pod: JSON) -> PodRun:
        meta, spec = pod["metadata"], pod["spec"]
        directory = self.root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        directory.mkdir(parents=True, exist_ok=True)
        (self.root / "pods").chmod(0o711)
        index = next(_POD_INDEX)
        own_name = f"{USER_PREFIX}{os.getpid()}p{index}"
        ip, netns = "127.0.0.1", ""
        if self.net_namespaces:
            if self.cluster.pod_network is None:
                from tests.kube_network import PodNetwork

                self.cluster.pod_network = PodNetwork.create()
            netns = own_name
            ip = self.cluster.pod_network.attach(netns)
        user, uid_gid = "", None
        if self.users:
            user = own_name
            add = ["useradd", "-M", "-N", "-g", "nogroup", "-s", "/bin/sh", "-d", str(directory)]
            subprocess.run([*add, user], check=True, capture_output=True)
            entry = pwd.getpwnam(user)
            uid_gid = (entry.pw_uid, entry.pw_gid)
            os.chown(directory, *uid_gid)
            directory.chmod(0o700)
        env = {
            "PATH": USER_PATH if self.users else os.environ.get("PATH", USER_PATH),
            "HOME": str(directory),
            "USER": user or "root",
            "LOGNAME": user or "root",
            "HOSTNAME": spec.get("hostname") or meta["name"],
            POD_MARKER: meta["uid"],
        }
        container = spec["containers"][0]
        fields = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.name,
            "status.podIP": ip,
            "status.hostIP": "127.0.0.1",
        }
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "fieldRef" in item.get("valueFrom", {}):
                env[item["name"]] = fields.get(item["valueFrom"]["fieldRef"]["fieldPath"], "")
        limits = (container.get("resources") or {}).get("limits") or {}
        gpus = sum(int(v) for k, v in limits.items() if k in self.extended)
        if gpus:
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
        return PodRun(
            uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], ip=ip,
            directory=directory, env=env,
            active_deadline=spec.get("activeDeadlineSeconds"), user=user, uid_gid=uid_gid,
            netns=netns,
        )  # fmt: skip

    def _run(self, run: PodRun, pod: JSON) -> None:
        container = pod["spec"]["containers"][0]
        argv = [*(container.get("command") or ["python3"]), *(container.get("args") or [])]
        if self.pid_namespaces:
            # The container's first process is PID 1 of its own PID (and mount, for /proc)
            # namespace, dropping to the pod's user only inside it.
            argv = ["unshare", "--pid", "--fork", "--mount-proc", "--", *_setpriv(run), *argv]
            mounts = self._volume_mounts(run, pod)
            if mounts:
                # In the pod's own mount namespace, as root, before dropping to its user.
                argv[5:5] = ["sh", "-c", f'{mounts} && exec "$@"', "sh"]
        if run.netns:
            argv = ["nsenter", f"--net={NETNS_DIR}/{run.netns}", "--", *argv]
        log = open(run.directory / "container.log", "wb")  # noqa: SIM115 - the child owns it
        try:
            run.process = subprocess.Popen(
                argv, cwd=container.get("workingDir") or run.directory, env=run.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **({} if self.pid_namespaces else _as_user(run)),
            )  # fmt: skip
            if self.pid_namespaces:
                run.ns_pid = _namespace_init(run.process)
        except OSError as error:
            run.finished = True
            self._report_terminated(run, container, 128, "StartError", str(error))
            return
        finally:
            log.close()
        run.started = time.monotonic()
        if run.active_deadline is not None:
            run.deadline = run.started + float(run.active_deadline)
        ready = [
            {"type": t, "status": "True", "lastTransitionTime": now()}
            for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ]
        self._patch_status(
            run,
            {
                "phase": "Running", "podIP": run.ip, "podIPs": [{"ip": run.ip}],
                "hostIP": "127.0.0.1", "startTime": now(), "conditions": ready,
                "containerStatuses": [self._container_status(
                    container, {"running": {"startedAt": now()}}, ready=True
                )],
            },
        )  # fmt: skip

    def _volume_mounts(self, run: PodRun, pod: JSON) -> str:
        """Shell commands that mount the pod's ``emptyDir`` volumes where its container
        asks (``/dev/shm`` aside): each is a directory of the pod's, bind-mounted. ``/home``
        is a fresh tmpfs in every pod (an image's own ``/home``), so mount points under it
        are made there and never on this machine's file system; elsewhere they must exist.
        """
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        commands = []
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            path = str(mount["mountPath"])
            if "emptyDir" not in volumes.get(mount["name"], {}) or path == "/dev/shm":
                continue
            source = run.directory / "volumes" / mount["name"]
            source.mkdir(parents=True, exist_ok=True)
            if run.uid_gid is not None:
                os.chown(source, *run.uid_gid)
            if path.startswith("/home/"):
                commands.append(f"mkdir -p {shlex.quote(path)}")
            elif not os.path.isdir(path):
                continue
            commands.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(path)}")
        if not commands:
            return ""
        return " && ".join(["mount -t tmpfs -o mode=755 pod-home /home", *commands])

    @staticmethod
    def _container_status(container: JSON, state: JSON, ready: bool = False) -> JSON:
        return {
            "name": container["name"], "image": container.get("image", ""), "imageID": "",
            "ready": ready, "restartCount": 0, "state": state, "started": ready,
        }  # fmt: skip

    def _report_waiting(self, run: PodRun, container: JSON, reason: str) -> None:
        message = {
            "InvalidImageName": f'Failed to apply default image tag "{container.get("image")}": '
            "couldn't parse image reference",
            "ErrImagePull": f'rpc error: code = Unknown desc = failed to pull and unpack image "'
            f'{container.get("image")}": pull access denied, repository does not exist or may '
            "require authorization",
            "CreateContainerConfigError": "container has runAsNonRoot and image will run as "
            f"root (pod: {run.name!r}, container: {container.get('name')})",
        }.get(reason, reason)
        self._patch_status(
            run,
            {
                "phase": "Pending", "hostIP": "127.0.0.1", "startTime": now(),
                "containerStatuses": [self._container_status(
                    container, {"waiting": {"reason": reason, "message": message}}
                )],
            },
        )  # fmt: skip

    def _report_terminated(
        self, run: PodRun, container: JSON, code: int, reason: str, message: str = ""
    ) -> None:
        phase = "Succeeded" if code == 0 else "Failed"
        status: JSON = {
            "phase": phase,
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now()},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now()},
            ],
            "containerStatuses": [
                self._container_status(
                    container,
                    {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now()}},
                )
            ],
        }
        if reason == "DeadlineExceeded":
            status["reason"] = "DeadlineExceeded"
            status["message"] = "Pod was active on the node longer than the specified deadline"
            status["containerStatuses"][0]["state"]["terminated"]["reason"] = "Error"
        elif message:
            status["message"] = message
        self._patch_status(run, status)

    def _patch_status(self, run: PodRun, status: JSON) -> None:
        with contextlib.suppress(KubeAPIError):
            self.api.merge_patch(
                f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status", {"status": status}
            )

    def _tick(self) -> None:
        """Notice exited containers and expired deadlines."""
        while not self._stopping.wait(0.1):
            # The apiserver may be gone when the session ends: never die on that.
            with contextlib.suppress(KubeAPIError, OSError):
                self._tick_once()

    def _tick_once(self) -> None:
        with self._lock:
            runs = [r for r in self.pods.values() if r.process is not None and not r.finished]
        for run in runs:
            assert run.process is not None
            code = run.process.poll()
            expired = run.deadline is not None and time.monotonic() > run.deadline
            if code is None and not expired:
                continue
            with self._lock:
                if run.finished:
                    continue
                run.finished = True
            self._kill(run)
            container = {"name": "node", "image": ""}
            try:
                pod = self.api.get(f"/api/v1/namespaces/{run.namespace}/pods/{run.name}")
                container = pod["spec"]["containers"][0]
            except KubeAPIError:
                continue
            if code is None:
                self._report_terminated(run, container, 137, "DeadlineExceeded")
            else:
                exit_code = code if code >= 0 else 128 - code
                reason = "Completed" if exit_code == 0 else "Error"
                self._report_terminated(run, container, exit_code, reason)

    def pod_processes(self, run: PodRun) -> list[psutil.Process]:
        """The live processes of a pod (its container's and those exec started)."""
        alive = []
        for process in self._processes(run):
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
        return alive

    def _processes(self, run: PodRun) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get(POD_MARKER) == run.uid:
                    found.append(process)
        return found

    def _delete(self, run: PodRun | None, meta: JSON, grace: float) -> None:
        with contextlib.suppress(KubeAPIError, OSError, psutil.Error):
            if run is not None:
                self._kill(run, grace)
            self._finalize_delete(meta)

    def _kill(self, run: PodRun, grace: float = 2.0) -> None:
        """SIGTERM every process of the pod, SIGKILL what is left after the grace period
        (at most 2 s here; a PID-namespace init without a handler ignores SIGTERM)."""
        run.finished = True
        processes = self._processes(run)
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=min(grace, 2.0))
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=2.0)
        if run.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.process.wait(1.0)

    def _finalize_delete(self, meta: JSON) -> None:
        body = {
            "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }  # fmt: skip
        with contextlib.suppress(KubeAPIError):
            self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)

    def _forget(self, uid: str) -> None:
        with self._lock:
            run = self.pods.pop(uid, None)
        if run is not None:
            self._kill(run)
            _remove_user(run.user)
            self._detach(run)

    def _detach(self, run: PodRun) -> None:
        if run.netns and self.cluster.pod_network is not None:
            self.cluster.pod_network.detach(run.netns, run.ip)

    def running_pod(self, namespace: str, name: str) -> PodRun | None:
        with self._lock:
            for run in self.pods.values():
                if run.namespace == namespace and run.name == name and not run.finished:
                    return run
        return None

    # ---------------------------------------------------------------- streaming server

    def _start_server(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                server = loop.run_until_complete(self._serve())
            except BaseException as error:  # surfaced to start()
                failure.append(error)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(server.wait_closed())
                loop.close()

        thread = threading.Thread(target=serve, name=f"kubelet-{self.name}-streams", daemon=True)
        thread.start()
        self._threads.append(thread)
        ready.wait(30)
        if failure:
            raise failure[0]

    async def _serve(self) -> Any:
        from websockets.asyncio.server import serve

        assert self.cluster.certs is not None
        certs = self.cluster.certs
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
        context.verify_mode = ssl.CERT_REQUIRED  # only the apiserver may connect
        context.load_cert_chain(*certs.pair("kubelet"))
        return await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            ssl=context,
            select_subprotocol=self._select_subprotocol,
            max_size=None,
            compression=None,
            ping_interval=None,
        )

    def _select_subprotocol(self, connection: Any, offered: Sequence[str]) -> str | None:
        path = connection.request.path if connection.request else ""
        served = PORTFORWARD_PROTOCOLS if path.startswith("/portForward/") else self.protocols
        for protocol in served:
            if protocol in offered:
                return protocol
        return None

    async def _handle(self, websocket: Any) -> None:
        url = urllib.parse.urlsplit(websocket.request.path)
        query = urllib.parse.parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        if self._refuse_streams:
            await websocket.close(1011, "streams refused by the test")
            return
        if parts[0] == "exec" and len(parts) >= 3:
            await self._exec(websocket, parts[1], parts[2], query)
        elif parts[0] == "portForward" and len(parts) >= 3:
            await self._port_forward(websocket, parts[1], parts[2], query)
        else:
            await websocket.close(1008, f"unknown path {url.path}")

    async def _exec(self, websocket: Any, namespace: str, pod: str, query: Any) -> None:
        run = self.running_pod(namespace, pod)
        v5 = websocket.subprotocol == "v5.channel.k8s.io"
        if run is None or run.process is None:
            await self._send_status(websocket, {"status": "Failure", "message": "pod not running"})
            await websocket.close()
            return
        # The apiserver renames the client's stdin/stdout/stderr to input/output/error.
        with_stdin = (query.get("input") or query.get("stdin") or ["0"])[0] in ("true", "1")
        command = query.get("command", ["sh"])
        if self.pid_namespaces:
            # Into the pod's PID and mount namespaces (where its keeper is PID 1), then
            # down to its user. Never run a pod's command in this machine's namespace.
            if run.ns_pid is None:
                await self._send_status(websocket, {"status": "Failure", "message": "no pid ns"})
                await websocket.close()
                return
            command = [
                "nsenter", "-t", str(run.ns_pid), "-p", "-m", "-w", *(["-n"] if run.netns else []),
                "--", *_setpriv(run), *command,
            ]  # fmt: skip
        elif run.netns:
            command = ["nsenter", f"--net={NETNS_DIR}/{run.netns}", "--", *command]
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=run.directory,
            env=run.env,
            **({} if self.pid_namespaces else _as_user(run)),
            stdin=asyncio.subprocess.PIPE if with_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

        async def pump(reader: asyncio.StreamReader, channel: int) -> None:
            while chunk := await reader.read(65536):
                await websocket.send(bytes([channel]) + chunk)

        async def feed() -> None:
            assert process.stdin is not None
            with contextlib.suppress(Exception):
                async for message in websocket:
                    data = message if isinstance(message, bytes) else message.encode()
                    if not data:
                        continue
                    if data[0] == 0:
                        process.stdin.write(data[1:])
                        await process.stdin.drain()
                    elif data[0] == 255 and v5 and data[1:2] == b"\x00":
                        process.stdin.close()
            with contextlib.suppress(Exception):
                process.stdin.close()

        assert process.stdout is not None
        assert process.stderr is not None
        feeder = asyncio.ensure_future(feed()) if with_stdin else None
        try:
            await asyncio.gather(pump(process.stdout, 1), pump(process.stderr, 2))
            code = await process.wait()
            if code == 0:
                status = {"metadata": {}, "status": "Success"}
            else:
                status = {
                    "metadata": {}, "status": "Failure",
                    "message": f"command terminated with non-zero exit code: exit status {code}",
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
                }  # fmt: skip
            await self._send_status(websocket, status)
            await websocket.close()
        except Exception:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        finally:
            if feeder is not None:
                feeder.cancel()

    @staticmethod
    async def _send_status(websocket: Any, status: JSON) -> None:
        with contextlib.suppress(Exception):
            await websocket.send(bytes([3]) + json.dumps(status).encode())

    async def _port_forward(self, websocket: Any, namespace: str, pod: str, query: Any) -> None:
        ports = [int(p) for value in query.get("port", []) for p in value.split(",")]
        if len(ports) != 1 or self.running_pod(namespace, pod) is None:
            await websocket.close(1008, "one port of a running pod")
            return
        port = ports[0]
        prelude = struct.pack("<H", port)
        await websocket.send(b"\x00" + prelude)
        await websocket.send(b"\x01" + prelude)
        run = self.running_pod(namespace, pod)
        try:
            if run is not None and run.netns:
                # The pod's own loopback: the socket is made inside its namespace.
                loop = asyncio.get_running_loop()
                sock = await loop.run_in_executor(None, connect_in, run.netns, ("127.0.0.1", port))
                reader, writer = await asyncio.open_connection(sock=sock)
            else:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            message = (
                f"error forwarding port {port} to pod {pod}: dial tcp 127.0.0.1:{port}: {reason}"
            )
            with contextlib.suppress(Exception):
                await websocket.send(b"\x01" + message.encode())
                await websocket.close()
            return

        async def upstream() -> None:
            with contextlib.suppress(Exception):
                async for message in websocket:
                    if isinstance(message, bytes) and message[:1] == b"\x00" and len(message) > 1:
                        writer.write(message[1:])
                        await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        async def downstream() -> None:
            with contextlib.suppress(Exception):
                while chunk := await reader.read(262144):
                    await websocket.send(b"\x00" + chunk)
            with contextlib.suppress(Exception):
                await websocket.close()

        up = asyncio.ensure_future(upstream())
        await downstream()
        up.cancel()
        with contextlib.suppress(Exception):
            writer.close()

    def crash_pod(self, namespace: str, name: str) -> None:
        """Every process of the pod dies at once (the OOM killer, a node process crash):
        the container is reported terminated with exit code 137, the pod Failed."""
        run = self.running_pod(namespace, name)
        assert run is not None, f"no running pod {namespace}/{name} on {self.name}"
        with self._lock:
            run.finished = True
        self._kill(run, grace=0)
        pod = self.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        self._report_terminated(run, pod["spec"]["containers"][0], 137, "OOMKilled")

    def refuse_streams(self, refuse: bool) -> None:
        """While set, every new exec and port-forward is closed at once (1011)."""
        self._refuse_streams = refuse

    def drop_streams(self) -> None:
        """Cut every open stream (an apiserver restart, a load balancer's idle cut)."""
        loop = self._loop
        assert loop is not None
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)


def _runs_as_root_problem(spec: JSON) -> str | None:
    """A kubelet refuses to start a container that must run as non-root but would run as
    root: the allowed images' user is root, so that is the case when ``runAsNonRoot``
    holds and no ``runAsUser`` (or 0) says otherwise."""
    pod = spec.get("securityContext") or {}
    context = spec["containers"][0].get("securityContext") or {}
    non_root = context.get("runAsNonRoot", pod.get("runAsNonRoot"))
    user = context.get("runAsUser", pod.get("runAsUser"))
    return "CreateContainerConfigError" if non_root and not user else None


def _as_user(run: PodRun) -> dict[str, Any]:
    if run.uid_gid is None:
        return {}
    return {"user": run.uid_gid[0], "group": run.uid_gid[1], "extra_groups": []}


def _setpriv(run: PodRun) -> list[str]:
    if run.uid_gid is None:
        return []
    uid, gid = run.uid_gid
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def _namespace_init(process: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    """The child ``unshare --fork`` made: PID 1 of the new namespace, seen from here."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(process.pid).children()
            if children:
                return int(children[0].pid)
        time.sleep(0.01)
    return None


def _remove_user(user: str) -> None:
    if user:
        subprocess.run(["userdel", "-f", user], check=False, capture_output=True)


def remove_stale_users() -> None:
    """Users of pods whose test session died (its pid is gone): kill and remove them."""
    for entry in pwd.getpwall():
        match = _USER.fullmatch(entry.pw_name)
        if match is None or psutil.pid_exists(int(match.group(1))):
            continue
        for process in psutil.process_iter(["uids"]):
            with contextlib.suppress(psutil.Error):
                if process.info["uids"] and process.info["uids"].real == entry.pw_uid:
                    process.kill()
        _remove_user(entry.pw_name)
