"""The Kubernetes provider against the SSH path, measured in one run on this machine.

Run: ``make bench-kubernetes`` (part of ``make bench``), or
``.venv/bin/python bench/kubernetes_vs_ssh.py [--quick] [--out FILE]``. Needs root, like the test
suite: it starts the test control plane (``tests/kube_cluster.py``, binaries from
``tests/kube_build.sh``) with one fake node of 64 CPUs, and SSH test hosts
(``tests/ssh_hosts.HostFarm``: sshd processes on 127.0.0.11, .12, ...).

- Pool entry for N = 1, 4, 16 nodes: Kubernetes (every pod is new, so every entry uploads
  uv and the wheels and builds the environment: always cold) against SSH hosts cold
  (``~/.skyward`` removed first) and warm (caches in place). Ratios: each N against one
  node of the same path, and Kubernetes against SSH cold at the same N.
- Warm round trip: median of ``noop() >> pool`` on a 1-node pool, Kubernetes (exec +
  port-forward through the apiserver) against SSH.
- A 256 MiB ``bytes`` argument (``len(data) >> pool``), MiB/s, against SSH.

Both paths run on the same 2-core machine as the client, so absolute figures are this
machine's; the ratios are what carries over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import skyward as sky  # noqa: E402

MiB = 2**20
RESULTS = ROOT / "bench" / "results"


@sky.compute
def noop() -> None:
    return None


@sky.compute
def size(data: bytes) -> int:
    return len(data)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Paths:
    """The two providers under test, built once."""

    def __init__(self, state: Path, hosts_wanted: int) -> None:
        from tests.kube_cluster import ControlPlane
        from tests.kube_fixtures import KubeCluster
        from tests.ssh_hosts import ClientKey, HostFarm

        self.state = state
        self.farm: Any = None
        print("[kubernetes] starting the control plane and a 64-CPU fake node", flush=True)
        self.kube = KubeCluster(ControlPlane.create())
        try:
            self.kube.plane.start()
            self.kube.add_node("cpu-0", cpu="64", memory="256Gi")
            self.kube.api.post("/api/v1/namespaces", {"metadata": {"name": "bench"}})
            print(f"[kubernetes] starting {hosts_wanted} SSH test hosts", flush=True)
            self.key = ClientKey.create(state / "client-key")
            self.farm = HostFarm(self.key)
            self.hosts = self.farm.ensure(hosts_wanted)
            self.known_hosts = self.farm.known_hosts_file(state / "known_hosts")
        except BaseException:
            self.stop()
            raise

    def kubernetes(self) -> Any:
        return sky.Kubernetes(kubeconfig=str(self.kube.plane.kubeconfig), namespace="bench")

    def ssh(self, n: int) -> Any:
        return sky.SSH(
            hosts=[
                sky.SSHHost(
                    h.address, user=h.user, port=h.port, identity_file=str(self.key.private_path)
                )
                for h in self.hosts[:n]
            ],
            known_hosts=str(self.known_hosts),
        )

    def forget_ssh_caches(self, n: int) -> None:
        for host in self.hosts[:n]:
            shutil.rmtree(host.home / ".skyward", ignore_errors=True)

    def stop(self) -> None:
        if self.farm is not None:
            self.farm.stop()
        self.kube.stop()


def _entry(provider: Any, nodes: int) -> tuple[float, float]:
    """Seconds to open a pool of ``nodes`` (one CPU each), and to close it."""
    pool = sky.ComputePool(provider=provider, nodes=nodes, cpu=1, display="quiet")
    started = time.perf_counter()
    pool.__enter__()
    opened = time.perf_counter() - started
    try:
        assert len(list(noop() @ pool)) == nodes
    finally:
        started = time.perf_counter()
        pool.__exit__(None, None, None)
    return opened, time.perf_counter() - started


def pool_entry(paths: Paths, ns: tuple[int, ...], rounds: int) -> dict[str, Any]:
    rows: dict[str, dict[int, dict[str, float]]] = {
        "kubernetes": {},
        "ssh-cold": {},
        "ssh-warm": {},
    }
    for n in ns:
        k8s, cold, warm, closes = [], [], [], []
        for _ in range(rounds):
            opened, closed = _entry(paths.kubernetes(), n)
            k8s.append(opened)
            closes.append(closed)
            paths.forget_ssh_caches(n)
            cold.append(_entry(paths.ssh(n), n)[0])
            warm.append(_entry(paths.ssh(n), n)[0])
        rows["kubernetes"][n] = {"open_s": _median(k8s), "close_s": _median(closes)}
        rows["ssh-cold"][n] = {"open_s": _median(cold)}
        rows["ssh-warm"][n] = {"open_s": _median(warm)}
        print(
            f"[kubernetes]   N={n}: kubernetes {_median(k8s):.1f} s, ssh cold "
            f"{_median(cold):.1f} s, ssh warm {_median(warm):.1f} s",
            flush=True,
        )
    return rows


def _one_node(provider: Any, body: Callable[[sky.ComputePool], float]) -> float | str:
    """``body``'s figure on a 1-node pool, or why it could not be had (reported, so one
    path failing does not lose the other's figure)."""
    try:
        with sky.ComputePool(provider=provider, nodes=1, cpu=1, display="quiet") as pool:
            return body(pool)
    except Exception as error:
        return f"failed: {type(error).__name__}: {str(error)[:200]}"


def round_trip(paths: Paths, calls: int) -> dict[str, float | str]:
    def measure(pool: sky.ComputePool) -> float:
        for _ in range(20):
            noop() >> pool
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            noop() >> pool
            samples.append(time.perf_counter() - started)
        return _median(samples) * 1000

    out = {
        "kubernetes_ms": _one_node(paths.kubernetes(), measure),
        "ssh_ms": _one_node(paths.ssh(1), measure),
    }
    print(f"[kubernetes]   round trip {out}", flush=True)
    return out


def bulk(paths: Paths, megabytes: int, rounds: int) -> dict[str, float | str]:
    data = b"\x5a" * (megabytes * MiB)

    def measure(pool: sky.ComputePool) -> float:
        assert size(b"warm") >> pool == 4
        rates = []
        for _ in range(rounds):
            started = time.perf_counter()
            assert size(data) >> pool == len(data)
            rates.append(megabytes / (time.perf_counter() - started))
        return _median(rates)

    out = {"kubernetes_mib_s": _one_node(paths.kubernetes(), measure)}
    print(f"[kubernetes]   {megabytes} MiB argument {out}", flush=True)
    out["ssh_mib_s"] = _one_node(paths.ssh(1), measure)
    print(f"[kubernetes]   {megabytes} MiB argument {out}", flush=True)
    return out


def render(data: dict[str, Any]) -> str:
    entry = data["pool_entry"]
    ns = sorted(entry["kubernetes"])
    lines = [
        "# Kubernetes against SSH (bench/kubernetes_vs_ssh.py)",
        "",
        f"One run on this machine ({data['cpus']} CPUs shared by client, control plane, fake "
        "kubelet and SSH hosts), " + ("quick mode" if data["quick"] else "full mode") + ".",
        "",
        "## Pool entry (seconds to open a pool of N one-CPU nodes)",
        "",
        "| N | Kubernetes | vs N=1 | SSH cold | vs N=1 | Kubernetes / SSH cold | SSH warm |"
        " Kubernetes close |",
        "|---|---|---|---|---|---|---|---|",
    ]
    k1 = entry["kubernetes"][ns[0]]["open_s"]
    s1 = entry["ssh-cold"][ns[0]]["open_s"]
    for n in ns:
        k = entry["kubernetes"][n]["open_s"]
        c = entry["ssh-cold"][n]["open_s"]
        w = entry["ssh-warm"][n]["open_s"]
        close = entry["kubernetes"][n]["close_s"]
        lines.append(
            f"| {n} | {k:.1f} | {k / k1:.2f}x | {c:.1f} | {c / s1:.2f}x | {k / c:.2f}x | "
            f"{w:.1f} | {close:.1f} |"
        )
    trip, moved = data["round_trip"], data["bulk"]
    lines += [
        "",
        "## Data path (1-node pool)",
        "",
        "| measure | Kubernetes | SSH | Kubernetes / SSH |",
        "|---|---|---|---|",
        _row(f"warm round trip, median of {data['calls']} calls", trip["kubernetes_ms"],
             trip["ssh_ms"], "{:.2f} ms"),
        _row(f"{data['megabytes']} MiB argument", moved["kubernetes_mib_s"], moved["ssh_mib_s"],
             "{:.0f} MiB/s"),
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def _row(title: str, kube: float | str, ssh: float | str, unit: str) -> str:
    def cell(value: float | str) -> str:
        return unit.format(value) if isinstance(value, float) else str(value)

    both = isinstance(kube, float) and isinstance(ssh, float)
    ratio = f"{kube / ssh:.2f}x" if both else "-"  # type: ignore[operator]
    return f"| {title} | {cell(kube)} | {cell(ssh)} | {ratio} |"


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(prog="bench/kubernetes_vs_ssh.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 1, 4; 32 MiB; fewer calls")
    parser.add_argument("--out", type=Path, default=RESULTS / "kubernetes.md")
    options = parser.parse_args(argv)
    ns = (1, 4) if options.quick else (1, 4, 16)
    megabytes = 32 if options.quick else 256
    calls = 50 if options.quick else 300
    state = Path(tempfile.mkdtemp(prefix="skyward-bench-kube-"))
    started = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, so the control plane and the hosts are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    paths = Paths(state, max(ns))
    try:
        data: dict[str, Any] = {
            "quick": options.quick,
            "cpus": os.cpu_count(),
            "calls": calls,
            "megabytes": megabytes,
            "pool_entry": pool_entry(paths, ns, rounds=1 if options.quick else 2),
            "round_trip": round_trip(paths, calls),
            "bulk": bulk(paths, megabytes, rounds=2 if options.quick else 3),
        }
    finally:
        paths.stop()
        shutil.rmtree(state, ignore_errors=True)
    data["seconds"] = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kubernetes.json").write_text(json.dumps(data, indent=1, default=str))
    report = render(data)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(report)
    print(report)
    print(f"[kubernetes] wrote {options.out} ({data['seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
