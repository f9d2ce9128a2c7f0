"""Shared pieces of the harness: paths, statistics, and driver processes.

Every tool under test lives in its own *driver* process (``python -m bench.driver``) that
keeps the tool warm and runs operations on request. The orchestrator (``bench/run.py``)
talks to the drivers one at a time, so a tool's client never shares a process, a GIL or
an event loop with another tool's, and rounds can interleave the tools: A B C A B C...
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"


def bench_env() -> dict[str, str]:
    """The environment of drivers and everything they start: the repo root importable (so
    ``bench.workloads`` imports by reference in Ray, Dask, joblib and multiprocessing
    workers), quiet pools, no metrics."""
    env = dict(os.environ)
    paths = [str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- statistics -------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (``q`` in 0..1) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Summary:
    median: float
    p10: float
    p90: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(
            statistics.median(values) if values else float("nan"),
            quantile(values, 0.10),
            quantile(values, 0.90),
            len(values),
        )

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "p10": self.p10, "p90": self.p90, "n": self.n}


# -- machine ----------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    import psutil

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("skyward-core", "cloudpickle", "paramiko", "ray", "distributed", "joblib"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    try:
        out = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
        found["OpenSSH"] = out.stderr.strip().split(",")[0]
    except OSError:
        found["OpenSSH"] = "not installed"
    return found


# -- drivers ----------------------------------------------------------------------------


class DriverError(RuntimeError):
    pass


@dataclass
class Driver:
    """One tool in its own process; ``call(op, **kwargs)`` runs ``op`` there."""

    name: str
    kind: str
    config: dict[str, Any]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    conn: Connection | None = field(default=None, init=False)
    _pending: bool = field(default=False, init=False)

    def start(self) -> Driver:
        parent, child = socket.socketpair()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.driver", str(child.fileno())],
            cwd=ROOT,
            env=bench_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=[child.fileno()],
        )
        log.close()
        child.close()
        self.conn = Connection(parent.detach())
        return self

    def send(self, op: str, /, **kwargs: Any) -> None:
        assert self.conn is not None
        self.conn.send((op, kwargs))
        self._pending = True

    def wait(self, timeout: float = 600.0) -> Any:
        assert self.conn is not None
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if self.process.poll() is not None:
                self._pending = False
                raise DriverError(
                    f"{self.name}: driver exited ({self.process.returncode}); "
                    f"log: {self.log_path}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise DriverError(f"{self.name}: no answer in {timeout:.0f}s; log: {self.log_path}")
        self._pending = False
        status, value = self.conn.recv()
        if status != "ok":
            raise DriverError(f"{self.name}: {value}")
        return value

    def call(self, op: str, /, timeout: float = 600.0, **kwargs: Any) -> Any:
        self.send(op, **kwargs)
        return self.wait(timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Close the tool (best effort), end the driver process and anything it left."""
        if self.process is None:
            return
        import psutil

        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        try:
            if self.process.poll() is None and not self._pending:
                self.call("exit", timeout=60)
        except (DriverError, OSError, EOFError):
            pass
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for leftover in descendants:  # worker pools a tool failed to shut down
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        if self.conn is not None:
            self.conn.close()
        self.process = None


def start_drivers(
    specs: Sequence[tuple[str, str, dict[str, Any]]], log_dir: Path, setup_timeout: float = 600.0
) -> tuple[dict[str, Driver], dict[str, str]]:
    """Start one driver per ``(name, kind, config)`` and set them all up in parallel.

    Returns the drivers that are ready, and ``name -> error`` for those that are not (a
    tool whose package is missing, say); failed drivers are stopped.
    """
    drivers = {
        name: Driver(name, kind, config, log_dir / f"{name}.log").start()
        for name, kind, config in specs
    }
    for driver in drivers.values():
        driver.send("setup", kind=driver.kind, **driver.config)
    ready, failed = {}, {}
    for name, driver in drivers.items():
        try:
            driver.wait(setup_timeout)
            ready[name] = driver
        except DriverError as error:
            failed[name] = str(error).splitlines()[-1][:300]
            driver.stop()
    return ready, failed


def stop_drivers(drivers: dict[str, Driver]) -> None:
    for driver in drivers.values():
        driver.stop()
