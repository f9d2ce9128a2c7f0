"""The five benchmarks, as the orchestrator runs them.

Each starts its tools' drivers (set up in parallel, then warm), interleaves the tools
round by round (A B C A B C ...), profiles the Skyward side after the peers are stopped,
and returns plain data for ``bench/report.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import Driver, DriverError, Summary, start_drivers, stop_drivers
from bench.data_bench import data
from bench.hosts import HostInfo

MiB = 2**20


@dataclass(frozen=True)
class Settings:
    quick: bool
    latency_rounds: int
    latency_calls: int
    throughput_calls: int
    throughput_rounds: int
    bulk_bytes: int
    bulk_rounds: int
    cold_rounds: int
    scale_nodes: tuple[int, ...]
    scale_rounds: int
    aws_nodes: tuple[int, ...]
    profile_seconds: float
    tensor_bytes: int = 256 * MiB
    tensor_rounds: int = 5

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                quick=True,
                latency_rounds=4,
                latency_calls=20,
                throughput_calls=600,
                throughput_rounds=2,
                bulk_bytes=32 * MiB,
                bulk_rounds=2,
                cold_rounds=1,
                scale_nodes=(1, 4),
                scale_rounds=1,
                aws_nodes=(1, 10),
                profile_seconds=0.4,
                tensor_bytes=32 * MiB,
                tensor_rounds=2,
            )
        return cls(
            quick=False,
            latency_rounds=20,
            latency_calls=100,
            throughput_calls=10_000,
            throughput_rounds=5,
            bulk_bytes=256 * MiB,
            bulk_rounds=7,
            cold_rounds=7,
            scale_nodes=(1, 4, 16),
            scale_rounds=3,
            aws_nodes=(1, 10, 100),
            profile_seconds=4.0,
        )

    @property
    def hosts_needed(self) -> int:
        return max(self.scale_nodes)


Spec = tuple[str, str, dict[str, Any]]


class Clock:
    """Seconds spent per stage of a benchmark (setup, measure, profile), for the log."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._last
        self._last = now


def _interleave(
    drivers: dict[str, Driver],
    order: list[str],
    rounds: int,
    op: str,
    convert: Callable[[Any], list[float]],
    failed: dict[str, str],
    **kwargs: Any,
) -> dict[str, list[float]]:
    """``rounds`` rounds of ``op`` on every tool in ``order``; a tool that fails is
    dropped (and named in ``failed``)."""
    values: dict[str, list[float]] = {name: [] for name in order if name in drivers}
    for r in range(rounds):
        # A B C, B C A, C A B, ...: every tool takes every position in turn, so what the
        # tool before leaves behind (freed memory, a busy kernel) falls on all alike
        shift = r % len(order)
        for name in order[shift:] + order[:shift]:
            if name not in drivers or name in failed:
                continue
            try:
                values[name].extend(convert(drivers[name].call(op, **kwargs)))
            except DriverError as error:
                failed[name] = str(error).strip().splitlines()[-1][:300]
    return {name: v for name, v in values.items() if v and name not in failed}


def _summaries(values: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {name: {"values": v, "summary": Summary.of(v).as_dict()} for name, v in values.items()}


def _profile(
    drivers: dict[str, Driver], name: str, failed: dict[str, str], **kwargs: Any
) -> dict[str, Any] | None:
    if name not in drivers:
        return None
    try:
        result: dict[str, Any] = drivers[name].call("profile", **kwargs)
        return result
    except DriverError as error:
        failed[f"{name} (profile)"] = str(error).strip().splitlines()[-1][:300]
        return None


def _stop(drivers: dict[str, Driver], keep: set[str]) -> None:
    stop_drivers({n: d for n, d in drivers.items() if n not in keep})
    for name in [n for n in drivers if n not in keep]:
        drivers.pop(name)


# -- 1. warm round trip -----------------------------------------------------------------


LATENCY_LOCAL = {
    "skyward-local": "Skyward `Local` (`fn() >> pool`), process workers (default)",
    "skyward-local-thread": 'Skyward `Local`, `executor="thread"`',
    "skyward-local-handoff": "what-if: Skyward `Local` with a reader thread handing answers over",
    "floor": "floor: loopback TCP, cloudpickled call",
    "floor-byref": "what-if: the floor with the function pickled by reference",
    "mp": "`multiprocessing.Pool.apply`",
    "ray": "Ray `ray.get(f.remote())`",
    "dask": "Dask `client.submit(f).result()`",
}
LATENCY_SSH = {
    "skyward-ssh": "Skyward `SSH` (`fn() >> pool`)",
    "floor-paramiko": "floor through a paramiko direct-tcpip channel",
    "floor-ssh-L": "floor through OpenSSH `ssh -L`",
}


def latency(settings: Settings, hosts: list[HostInfo], logs: Path) -> dict[str, Any]:
    specs: list[Spec] = [
        ("skyward-local", "skyward-local", {}),
        ("skyward-local-thread", "skyward-local", {"executor": "thread"}),
        ("skyward-local-handoff", "skyward-local", {"caller_reads": False}),
        ("floor", "floor", {"via": "local"}),
        ("floor-byref", "floor", {"via": "local", "by_value": False}),
        ("mp", "mp", {"workers": 1}),
        ("ray", "ray", {"cpus": 1}),
        ("dask", "dask", {"workers": 1}),
        ("skyward-ssh", "skyward-ssh", {"hosts": hosts}),
        ("floor-paramiko", "floor", {"via": "paramiko", "hosts": hosts}),
        ("floor-ssh-L", "floor", {"via": "ssh-L", "hosts": hosts}),
    ]
    clock = Clock()
    drivers, failed = start_drivers(specs, logs / "latency")
    clock.lap("setup")
    try:
        order = [name for name, _, _ in specs]
        values = _interleave(
            drivers,
            order,
            settings.latency_rounds,
            "latency",
            lambda ns: [v / 1e3 for v in ns],  # microseconds
            failed,
            n=settings.latency_calls,
        )
        clock.lap("measure")
        _stop(drivers, {"skyward-local", "floor", "skyward-ssh", "floor-paramiko"})
        seconds = settings.profile_seconds
        profiles = {
            name: _profile(drivers, name, failed, workload="latency", seconds=seconds, n=100)
            for name in ("skyward-local", "floor", "skyward-ssh", "floor-paramiko")
        }
        clock.lap("profile")
    finally:
        stop_drivers(drivers)
    clock.lap("teardown")
    return {
        "stages": clock.stages,
        "tools": _summaries(values),
        "failed": failed,
        "profiles": {k: v for k, v in profiles.items() if v},
        "calls_per_round": settings.latency_calls,
        "rounds": settings.latency_rounds,
    }


# -- 2. throughput ----------------------------------------------------------------------


THROUGHPUT = {
    "skyward-local": "Skyward `Local`, 2 nodes: `gather(*calls) >> pool`, process workers",
    "skyward-local-thread": 'Skyward `Local`, 2 nodes, `executor="thread"`',
    "skyward-local-unordered": "Skyward `Local`, 2 nodes: `gather(*calls, ordered=False)`",
    "skyward-local-map": "Skyward `Local`, 2 nodes: `pool.map(f, range(n))`",
    "skyward-local-map-unordered": "Skyward `Local`, 2 nodes: `pool.map(..., ordered=False)`",
    "skyward-local-unchunked": "what-if: Skyward `Local`, 2 nodes, a task per call (no chunks)",
    "skyward-cpu-2": "CPU-bound pure Python (`cpu_spin`), 1 node x 2 process workers",
    "skyward-cpu-2-thread": 'the same with `executor="thread"` (one GIL)',
    "skyward-cpu-1": "the same on 1 worker",
    "floor": "floor, pipelined over 2 server processes",
    "ray": "Ray, `num_cpus=2`: `ray.get([f.remote(i) ...])`",
    "dask": "Dask, 2 workers: `client.gather(client.map(f, ...))`",
    "joblib-1": "joblib/loky, 2 workers, `batch_size=1`",
    "joblib-auto": 'joblib/loky, 2 workers, `batch_size="auto"`',
    "mp": "`multiprocessing.Pool(2).map` (default chunksize)",
}


def throughput(settings: Settings, hosts: list[HostInfo], logs: Path) -> dict[str, Any]:
    specs: list[Spec] = [
        ("skyward-local", "skyward-local", {"nodes": 2}),
        ("skyward-local-thread", "skyward-local", {"nodes": 2, "executor": "thread"}),
        ("skyward-local-unordered", "skyward-local", {"nodes": 2, "how": "gather-unordered"}),
        ("skyward-local-map", "skyward-local", {"nodes": 2, "how": "map"}),
        ("skyward-local-map-unordered", "skyward-local", {"nodes": 2, "how": "map-unordered"}),
        ("skyward-local-unchunked", "skyward-local", {"nodes": 2, "chunked": False}),
        ("skyward-cpu-2", "skyward-local", {"concurrency": 2, "cpu_bound": True}),
        (
            "skyward-cpu-2-thread",
            "skyward-local",
            {"concurrency": 2, "cpu_bound": True, "executor": "thread"},
        ),
        ("skyward-cpu-1", "skyward-local", {"cpu_bound": True}),
        ("floor", "floor", {"via": "local", "workers": 2}),
        ("ray", "ray", {"cpus": 2}),
        ("dask", "dask", {"workers": 2}),
        ("joblib-1", "joblib", {"batch_size": 1}),
        ("joblib-auto", "joblib", {"batch_size": "auto"}),
        ("mp", "mp", {"workers": 2}),
    ]
    n = settings.throughput_calls
    clock = Clock()
    drivers, failed = start_drivers(specs, logs / "throughput")
    clock.lap("setup")
    try:
        values = _interleave(
            drivers,
            [name for name, _, _ in specs],
            settings.throughput_rounds,
            "batch",
            lambda ns: [n / (ns / 1e9)],  # calls per second
            failed,
            n=n,
        )
        clock.lap("measure")
        _stop(drivers, {"skyward-local", "floor"})
        seconds = settings.profile_seconds
        profiles = {
            name: _profile(drivers, name, failed, workload="batch", seconds=seconds, n=min(n, 2000))
            for name in ("skyward-local", "floor")
        }
        clock.lap("profile")
    finally:
        stop_drivers(drivers)
    clock.lap("teardown")
    return {
        "stages": clock.stages,
        "tools": _summaries(values),
        "failed": failed,
        "profiles": {k: v for k, v in profiles.items() if v},
        "calls": n,
        "rounds": settings.throughput_rounds,
    }


# -- 3. bulk transfer -------------------------------------------------------------------


GCM = "aes128-gcm@openssh.com"
BULK = {
    "skyward-ssh": "Skyward `SSH`: `consume(array) >> pool`",
    "skyward-ssh-alt": "what-if: Skyward `SSH` with the other cipher",
    "skyward-ssh-unbatched": "what-if: Skyward `SSH` writing through paramiko's `sendall`",
    "tcp": "raw TCP straight to the host's address (no SSH)",
    "paramiko": "raw bytes through Skyward's SSH channel (paramiko direct-tcpip, batched writes)",
    "paramiko-alt": "what-if: the same with the other cipher",
    "ssh-L": "raw bytes through OpenSSH `ssh -L`",
    "ssh-cat": "`ssh host 'cat > /dev/null'` (a new ssh per transfer)",
}


def other_cipher() -> str:
    """The cipher of the what-if rows: the one Skyward's ``SSHConnection`` does not put
    first (AES-GCM when it prefers none, else paramiko's own default, aes128-ctr)."""
    from skyward.ssh import connection

    preferred = tuple(getattr(connection, "PREFERRED_CIPHERS", ()))
    return "aes128-ctr" if preferred and "gcm" in preferred[0] else GCM


def bulk(settings: Settings, hosts: list[HostInfo], logs: Path) -> dict[str, Any]:
    alt = other_cipher()
    specs: list[Spec] = [
        ("skyward-ssh", "skyward-ssh", {"hosts": hosts, "numpy": True}),
        ("tcp", "sink", {"via": "tcp", "hosts": hosts}),
        ("paramiko", "sink", {"via": "paramiko", "hosts": hosts}),
        ("ssh-L", "sink", {"via": "ssh-L", "hosts": hosts}),
        ("ssh-cat", "sink", {"via": "ssh-cat", "hosts": hosts}),
        ("skyward-ssh-alt", "skyward-ssh", {"hosts": hosts, "numpy": True, "cipher": alt}),
        ("skyward-ssh-unbatched", "skyward-ssh", {"hosts": hosts, "numpy": True, "batched": False}),
        ("paramiko-alt", "sink", {"via": "paramiko", "hosts": hosts, "cipher": alt}),
    ]
    labels = {
        **BULK,
        "skyward-ssh-alt": f"what-if: Skyward `SSH`, paramiko offering only {alt}",
        "paramiko-alt": f"what-if: raw paramiko offering only {alt}",
    }
    nbytes = settings.bulk_bytes
    clock = Clock()
    drivers, failed = start_drivers(specs, logs / "bulk")
    clock.lap("setup")
    try:
        # Each turn is an untimed transfer, then the timed one: the first transfer after
        # another tool's runs slower and erratically (the receiver's fresh 256 MiB of
        # memory, socket buffers growing again), for every tool, raw TCP most of all.
        values = _interleave(
            drivers,
            [name for name, _, _ in specs],
            settings.bulk_rounds,
            "bulk",
            lambda ns: [nbytes / MiB / (ns / 1e9)],  # MiB/s
            failed,
            nbytes=nbytes,
            repeat=2,
        )
        details = {}
        for name in ("paramiko", "paramiko-alt", "ssh-cat"):
            if name in drivers:
                details[name] = drivers[name].call("details")
        clock.lap("measure")
        _stop(drivers, {"skyward-ssh"})
        seconds = max(settings.profile_seconds, 2.0)
        profiles = {
            "skyward-ssh": _profile(
                drivers,
                "skyward-ssh",
                failed,
                workload="bulk",
                seconds=seconds,
                gil=False,
                nbytes=nbytes,
            ),
        }
        clock.lap("profile")
    finally:
        stop_drivers(drivers)
    clock.lap("teardown")
    return {
        "stages": clock.stages,
        "tools": _summaries(values),
        "failed": failed,
        "profiles": {k: v for k, v in profiles.items() if v},
        "details": details,
        "labels": labels,
        "bytes": nbytes,
        "rounds": settings.bulk_rounds,
    }


# -- 4. cold start ----------------------------------------------------------------------


COLD = {
    "skyward-none": "Skyward `Local`, no image (the client's interpreter)",
    "skyward-cached": "Skyward `Local`, `Image(pip=[...])` already built",
    "skyward-fresh": "Skyward `Local`, same image, fresh cache (venv built)",
    "floor": "floor: start a server process, connect, one call",
    "ray": "`ray.init()` + first `ray.get(f.remote())`",
    "dask": "Dask `LocalCluster(n_workers=1)` + `Client` + first result",
}


def cold(settings: Settings, hosts: list[HostInfo], logs: Path) -> dict[str, Any]:
    specs: list[Spec] = [
        ("skyward-none", "skyward-cold", {"image": "none"}),
        ("skyward-cached", "skyward-cold", {"image": "cached"}),
        ("skyward-fresh", "skyward-cold", {"image": "fresh"}),
        ("floor", "floor-cold", {}),
        # a first start warms OS caches; quick mode skips it (its figures are not the point)
        ("ray", "ray-cold", {"warm": not settings.quick}),
        ("dask", "dask-cold", {"warm": not settings.quick}),
    ]
    clock = Clock()
    drivers, failed = start_drivers(specs, logs / "cold")
    clock.lap("setup")
    phases: dict[str, list[dict[str, float]]] = {}
    closes: dict[str, list[float]] = {}

    def convert_for(name: str) -> Callable[[Any], list[float]]:
        def convert(result: dict[str, Any]) -> list[float]:
            if "phases" in result:
                phases.setdefault(name, []).append(result["phases"])
            closes.setdefault(name, []).append(result["close_s"])
            return [result["ns"] / 1e9]

        return convert

    try:
        values: dict[str, list[float]] = {}
        order = [name for name, _, _ in specs]
        for r in range(settings.cold_rounds):
            shift = r % len(order)
            for name in order[shift:] + order[:shift]:
                got = _interleave(drivers, [name], 1, "cold", convert_for(name), failed)
                for key, v in got.items():
                    values.setdefault(key, []).extend(v)
        clock.lap("measure")
    finally:
        stop_drivers(drivers)
    clock.lap("teardown")
    return {
        "stages": clock.stages,
        "tools": _summaries({k: v for k, v in values.items() if k not in failed}),
        "failed": failed,
        "phases": {name: _median_phases(p) for name, p in phases.items()},
        "close_s": {name: Summary.of(v).median for name, v in closes.items()},
        "rounds": settings.cold_rounds,
    }


def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    return {k: Summary.of([run.get(k, 0.0) for run in runs]).median for k in keys}


# -- 5. provisioning at scale -----------------------------------------------------------


def scale(settings: Settings, hosts: list[HostInfo], logs: Path) -> dict[str, Any]:
    specs: list[Spec] = [("ssh", "ssh-scale", {"hosts": hosts}), ("aws", "aws-calls", {})]
    clock = Clock()
    drivers, failed = start_drivers(specs, logs / "scale")
    clock.lap("setup")
    ns = [n for n in settings.scale_nodes if n <= len(hosts)]
    biggest = max(ns) if ns else 0
    out: dict[str, Any] = {
        "nodes": ns,
        "failed": failed,
        "rounds": settings.scale_rounds,
        "stages": clock.stages,
    }
    try:
        if "ssh" in drivers:
            ssh = drivers["ssh"]

            def run(indices: list[int], is_cold: bool) -> dict[str, Any]:
                result: dict[str, Any] = ssh.call(
                    "open", timeout=1800, indices=indices, cold=is_cold
                )
                return result

            try:
                # cold: hosts that never saw Skyward (their ~/.skyward removed), once; the
                # quick mode times the first host alone (same code path, half the time)
                singles = 1 if settings.quick else biggest
                cold_single = [run([i], True) for i in range(singles)]
                cold_pools = {n: run(list(range(n)), True) for n in ns}
                # warm: caches in place; rounds interleave singles and pools
                warm_single: list[list[dict[str, Any]]] = []
                warm_pools: dict[int, list[dict[str, Any]]] = {n: [] for n in ns}
                for _ in range(settings.scale_rounds):
                    warm_single.append([run([i], False) for i in range(biggest)])
                    for n in ns:
                        warm_pools[n].append(run(list(range(n)), False))
                out["ssh"] = _scale_table(ns, cold_single, cold_pools, warm_single, warm_pools)
                clock.lap("ssh")
            except DriverError as error:
                failed["ssh"] = str(error).strip().splitlines()[-1][:300]
        if "aws" in drivers:
            try:
                out["aws"] = {
                    n: drivers["aws"].call("launch", timeout=900, nodes=n)
                    for n in settings.aws_nodes
                }
                clock.lap("aws")
            except DriverError as error:
                failed["aws"] = str(error).strip().splitlines()[-1][:300]
    finally:
        stop_drivers(drivers)
    clock.lap("teardown")
    return out


def _scale_table(
    ns: list[int],
    cold_single: list[dict[str, Any]],
    cold_pools: dict[int, dict[str, Any]],
    warm_single: list[list[dict[str, Any]]],
    warm_pools: dict[int, list[dict[str, Any]]],
) -> dict[str, Any]:
    rows = {}
    for n in ns:
        warm = [r["ns"] / 1e9 for r in warm_pools[n]]
        slowest_warm = [max(r["ns"] for r in one[:n]) / 1e9 for one in warm_single]
        rows[n] = {
            "cold_s": cold_pools[n]["ns"] / 1e9,
            "cold_slowest_single_s": max(r["ns"] for r in cold_single[:n]) / 1e9,
            "cold_singles_timed": min(n, len(cold_single)),
            "cold_phases": cold_pools[n]["phases"],
            "warm": Summary.of(warm).as_dict(),
            "warm_slowest_single": Summary.of(slowest_warm).as_dict(),
            "warm_phases": _median_phases([r["phases"] for r in warm_pools[n]]),
            "cold_machine_busy": cold_pools[n]["machine_busy"],
            "cold_client_cpu_s": cold_pools[n]["client_cpu_s"],
            "warm_machine_busy": Summary.of([r["machine_busy"] for r in warm_pools[n]]).median,
            "warm_client_cpu_s": Summary.of([r["client_cpu_s"] for r in warm_pools[n]]).median,
            "close_s": Summary.of([r["close_s"] for r in warm_pools[n]]).median,
        }
    return {"rows": rows}


# -- 6. tensors ------------------------------------------------------------------------


TENSORS = {
    "numpy argument": "numpy array as an argument (`f(array) >> pool`)",
    "torch argument": "torch CPU tensor as an argument",
    "numpy result": "numpy array as a result",
    "torch result": "torch CPU tensor as a result",
}


def tensors(settings: Settings, hosts: list[HostInfo], logs: Path) -> dict[str, Any]:
    """A torch CPU tensor against a numpy array of the same size, both directions, on
    one Local pool; rounds interleave the four rows."""
    clock = Clock()
    drivers, failed = start_drivers([("tensors", "skyward-tensors", {})], logs / "tensors")
    clock.lap("setup")
    values: dict[str, list[float]] = {}
    try:
        if "tensors" in drivers:
            try:
                values = drivers["tensors"].call(
                    "transfer",
                    timeout=1800,
                    nbytes=settings.tensor_bytes,
                    rounds=settings.tensor_rounds,
                )
            except DriverError as error:
                failed["tensors"] = str(error).strip().splitlines()[-1][:300]
        clock.lap("measure")
    finally:
        stop_drivers(drivers)
    clock.lap("teardown")
    return {
        "stages": clock.stages,
        "tools": _summaries(values),
        "failed": failed,
        "bytes": settings.tensor_bytes,
        "rounds": settings.tensor_rounds,
    }


BENCHMARKS: dict[str, Callable[[Settings, list[HostInfo], Path], dict[str, Any]]] = {
    "latency": latency,
    "throughput": throughput,
    "bulk": bulk,
    "cold": cold,
    "scale": scale,
    "tensors": tensors,
    "data": data,
}


def settings_dict(settings: Settings) -> dict[str, Any]:
    return asdict(settings)


def timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    result = fn()
    result["seconds"] = time.monotonic() - started
    return result
