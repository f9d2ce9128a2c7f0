"""The pod network of the test cluster: one network namespace per fake pod.

Like a CNI bridge plugin, but with nothing in this machine's own namespace: a per-session
"cluster" namespace ``skc<session pid>`` holds a bridge; each pod gets its own namespace
(named like its unix user, ``skk<session pid>p<n>``) with ``lo`` and ``eth0``, the pod
end of a veth pair whose other end is a port of the bridge. Pod addresses are
``169.254.214.<n>/24`` (link-local, and only inside those namespaces): pods reach each
other across the bridge, 127.0.0.1 in a pod is the pod's own loopback, and nothing in a
pod can reach this machine's addresses (the apiserver included), as on a real node with
network policies. IPv6 is off in every namespace made here.

The kubelet reaches a pod's loopback for port-forward by opening the socket inside the
pod's namespace (:func:`connect_in`), as a real kubelet's runtime does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
import threading
from dataclasses import dataclass, field

__all__ = ["PodNetwork", "connect_in", "remove_stale_namespaces"]

SUBNET = "169.254.214"
BRIDGE_ADDRESS = f"{SUBNET}.1"
CLUSTER_PREFIX = "skc"
_CLUSTER = re.compile(rf"{CLUSTER_PREFIX}(\d+)")
_POD = re.compile(r"skk(\d+)p\d+")
_CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=30)


def _no_ipv6(netns: str) -> None:
    for key in ("all", "default"):
        subprocess.run(
            ["ip", "netns", "exec", netns, "sysctl", "-q", "-w",
             f"net.ipv6.conf.{key}.disable_ipv6=1"],
            check=False, capture_output=True, timeout=30,
        )  # fmt: skip


@dataclass
class PodNetwork:
    """The bridge namespace of one test session and the addresses handed out on it."""

    netns: str = field(default_factory=lambda: f"{CLUSTER_PREFIX}{os.getpid()}")
    bridge: str = "br0"
    _used: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ports: int = 0

    @classmethod
    def create(cls) -> PodNetwork:
        remove_stale_namespaces()
        network = cls()
        _ip("netns", "del", network.netns, check=False)  # an earlier cluster of this session
        _ip("netns", "add", network.netns)
        try:
            _no_ipv6(network.netns)
            _ip("-n", network.netns, "link", "add", network.bridge, "type", "bridge")
            _ip("-n", network.netns, "link", "set", network.bridge, "up")
            _ip("-n", network.netns, "link", "set", "lo", "up")
        except BaseException:
            network.close()
            raise
        return network

    def attach(self, pod_netns: str) -> str:
        """Create ``pod_netns`` plugged into the bridge; its address."""
        with self._lock:
            free = next(n for n in range(2, 255) if n not in self._used)
            self._used.add(free)
            self._ports += 1
            port = f"skv{self._ports}"
        address = f"{SUBNET}.{free}"
        try:
            _ip("netns", "add", pod_netns)
            _no_ipv6(pod_netns)
            # Made in the bridge's namespace; its peer goes straight into the pod's.
            _ip("-n", self.netns, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", pod_netns)  # fmt: skip
            _ip("-n", self.netns, "link", "set", port, "master", self.bridge, "up")
            _ip("-n", pod_netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", pod_netns, "link", "set", "eth0", "up")
            _ip("-n", pod_netns, "link", "set", "lo", "up")
        except BaseException:
            self.detach(pod_netns, address)
            raise
        return address

    def detach(self, pod_netns: str, address: str) -> None:
        """Delete the pod's namespace (its veth pair goes with it) and free its address."""
        _ip("netns", "del", pod_netns, check=False)
        with self._lock, contextlib.suppress(ValueError):
            self._used.discard(int(address.rsplit(".", 1)[1]))

    def close(self) -> None:
        _ip("netns", "del", self.netns, check=False)


def _namespaces() -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return os.listdir(NETNS_DIR)
    return []


def remove_stale_namespaces() -> None:
    """Namespaces of test sessions whose process is gone (killed before cleaning up)."""
    for name in _namespaces():
        match = _CLUSTER.fullmatch(name) or _POD.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _ip("netns", "del", name, check=False)


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    # os.setns exists from Python 3.12 on; this harness runs on 3.11 too.
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def connect_in(netns: str, address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    """A TCP connection made inside network namespace ``netns``.

    On a thread of its own (a namespace belongs to the thread that enters it), which
    returns to this machine's namespace before it ends; the socket stays in the pod's.
    """
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"{NETNS_DIR}/{netns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                sock = socket.create_connection(address, timeout=timeout)
                sock.setblocking(False)
                result.append(sock)
            except BaseException as error:
                result.append(error)
            finally:
                _setns(own)
        except BaseException as error:
            result.append(error)
        finally:
            os.close(target)
            os.close(own)

    thread = threading.Thread(target=run, name=f"connect-in-{netns}", daemon=True)
    thread.start()
    thread.join()
    (outcome,) = result[:1] or [RuntimeError("connect_in produced nothing")]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
