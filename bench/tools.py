"""The tools under test, as they run inside a driver process (see ``bench/driver.py``).

Each class is set up once (warm), then answers operations:

- ``latency(n)``: ``n`` sequential calls, nanoseconds each;
- ``batch(n)``: ``n`` calls at once over the tool's workers, nanoseconds for all;
- ``bulk(nbytes)``: one transfer of ``nbytes`` and a small answer, nanoseconds;
- ``cold()``: from nothing to a first result, nanoseconds (and phases for Skyward);
- ``profile(op, seconds, ...)``: Skyward only, see ``bench/profiling.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import hosts as hostlib
from bench import workloads
from bench.data_bench import SkywardData
from bench.floor_server import HEAD, SIZE, Reader

now = time.perf_counter_ns


class Tool:
    def setup(self, **config: Any) -> None:
        return None

    def close(self) -> None:
        return None


def _payload(nbytes: int) -> Any:
    import numpy as np

    return np.frombuffer(np.random.default_rng(7).bytes(nbytes), dtype=np.uint8)


# -- Skyward ----------------------------------------------------------------------------


class _Timeline:
    """Skyward events with the time they arrived: where a pool's opening went."""

    def __init__(self) -> None:
        self.start = now()
        self.marks: list[tuple[int, str, str, str]] = []

    def __call__(self, event: Any) -> None:
        kind = type(event).__name__
        instance = getattr(event, "instance_id", "") or ""
        step = getattr(event, "step", "") or ""
        if getattr(event, "cached", False):
            step += " (cached)"
        self.marks.append((now() - self.start, kind, instance, step))

    def phases(self, opened: int, first: int) -> dict[str, float]:
        """Seconds per phase along the critical path (the node that finished last).

        An interval between two events is named after the first: ``step X`` is the time
        from the start of step X to the next event.
        """
        provisioned = max(
            (t for t, kind, _, _ in self.marks if kind == "InstanceProvisioned"), default=0
        )
        out: dict[str, float] = {"provider (prepare, launch, describe)": provisioned / 1e9}
        nodes: dict[str, list[tuple[int, str, str]]] = {}
        for t, kind, instance, step in self.marks:
            if instance and kind.startswith("Bootstrap"):
                nodes.setdefault(instance, []).append((t, kind, step))
        completed = provisioned
        if nodes:
            slowest = max(nodes.values(), key=lambda marks: marks[-1][0])
            previous, label = provisioned, "connect (transport objects)"
            for t, kind, step in slowest:
                out[label] = out.get(label, 0.0) + (t - previous) / 1e9
                previous = t
                if kind == "BootstrapStarting":
                    label = "before the first step (SSH: handshake, probe, uv upload)"
                elif kind == "BootstrapProgress" and step == "server":
                    label = "start agent + connect client"
                elif kind == "BootstrapProgress":
                    label = f"step {step}"
            completed = slowest[-1][0]
        out["until open() returns"] = max(0.0, (opened - completed) / 1e9)
        out["first call"] = (first - opened) / 1e9
        return {k: v for k, v in out.items() if v > 0.0005 or k == "first call"}


class SkywardBase(Tool):
    pool: Any = None

    def _open(
        self,
        provider: Any,
        nodes: int,
        concurrency: int = 1,
        image: Any = None,
        executor: str = "process",
    ) -> None:
        import skyward as sky

        self.fn = sky.compute(workloads.noop)
        self.fn_i = sky.compute(workloads.noop_i)
        self.consume = sky.compute(workloads.consume)
        self.pool = sky.ComputePool(
            provider=provider,
            nodes=nodes,
            concurrency=concurrency,
            image=image,
            executor=executor,
            display="quiet",
            collect_metrics=False,
        )
        self.pool.open()
        for _ in range(50):
            self.fn() >> self.pool

    def latency(self, n: int) -> list[int]:
        fn, pool, out = self.fn, self.pool, []
        for _ in range(n):
            t = now()
            fn() >> pool
            out.append(now() - t)
        return out

    cpu_bound = False
    """Run ``cpu_spin`` instead of a no-op: a tenth of the calls, time scaled by ten, so
    the rate stays comparable with the no-op rows without a ten-fold wait."""
    how = "gather"
    """How a batch is sent: ``gather``, ``gather-unordered`` (``ordered=False``), ``map``
    or ``map-unordered``."""

    def batch(self, n: int) -> int:
        import skyward as sky

        fn, pool = self.fn_i, self.pool
        scale = 1
        if self.cpu_bound:
            fn, scale = sky.compute(workloads.cpu_spin), 10
            n = max(1, n // scale)
        t = now()
        if self.how == "gather":
            results = sky.gather(*[fn(i) for i in range(n)]) >> pool
        elif self.how == "gather-unordered":
            results = list(sky.gather(*[fn(i) for i in range(n)], ordered=False) >> pool)
        else:
            results = list(pool.map(fn, range(n), ordered=self.how == "map"))
        elapsed = now() - t
        assert len(results) == n
        return elapsed * scale

    def bulk(self, nbytes: int, repeat: int = 1) -> int:
        """``repeat`` transfers back to back; the time of the last."""
        array = self._array(nbytes)
        elapsed = 0
        for _ in range(repeat):
            t = now()
            got = self.consume(array) >> self.pool
            elapsed = now() - t
            assert got == nbytes, got
        return elapsed

    def _array(self, nbytes: int) -> Any:
        if getattr(self, "_arr", None) is None or self._arr.nbytes != nbytes:
            self._arr = _payload(nbytes)
        return self._arr

    def agent_pids(self) -> list[int]:
        raise NotImplementedError

    def extra_pids(self) -> dict[str, int]:
        return {}

    def profile(
        self, workload: str, seconds: float, gil: bool = True, **kwargs: Any
    ) -> dict[str, Any]:
        from bench.profiling import profile

        pids = {"client": os.getpid()}
        for i, pid in enumerate(self.agent_pids()):
            pids[f"agent{i}"] = pid
        extra = self.extra_pids()
        pids.update(extra)
        if workload == "latency":
            n = kwargs.get("n", 200)

            def work() -> int:
                self.latency(n)
                return n
        elif workload == "batch":
            n = kwargs["n"]

            def work() -> int:
                self.batch(n)
                return n
        else:
            nbytes = kwargs["nbytes"]

            def work() -> int:
                self.bulk(nbytes)
                return 1

        return profile(pids, work, seconds, gil=gil, cpu_only=tuple(extra))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def _agents_of(processes: list[Any]) -> list[int]:
    found = []
    for process in processes:
        with contextlib.suppress(Exception):
            if "skyward.agent" in process.cmdline():
                found.append(process.pid)
    return sorted(found)


class SkywardLocal(SkywardBase):
    def setup(
        self,
        nodes: int = 1,
        concurrency: int = 1,
        executor: str = "process",
        cpu_bound: bool = False,
        chunked: bool = True,
        caller_reads: bool = True,
        how: str = "gather",
        **_: Any,
    ) -> None:
        import skyward as sky

        self.how = how
        if not chunked:  # what-if: a task per call (this driver process only)
            from skyward import chunks

            chunks.ENABLED = False
        if not caller_reads:  # what-if: the reader thread hands every answer over
            from skyward import node

            node.CALLER_READS = False
        self.cpu_bound = cpu_bound
        self._open(sky.Local(), nodes, concurrency, executor=executor)

    def agent_pids(self) -> list[int]:
        import psutil

        return _agents_of(psutil.Process().children(recursive=True))


def ssh_provider(hosts: list[hostlib.HostInfo]) -> Any:
    import skyward as sky

    return sky.SSH(
        hosts=[
            sky.SSHHost(h["address"], user=h["user"], port=h["port"], identity_file=h["key"])
            for h in hosts
        ],
        known_hosts=hosts[0]["known_hosts"],
    )


def prefer_cipher(cipher: str) -> None:
    """What-if: make paramiko offer ``cipher`` only (in this driver process only)."""
    import paramiko

    paramiko.Transport._preferred_ciphers = (cipher,)


class SkywardSSH(SkywardBase):
    def setup(
        self,
        hosts: list[hostlib.HostInfo],
        nodes: int = 1,
        numpy: bool = False,
        cipher: str | None = None,
        batched: bool = True,
        **_: Any,
    ) -> None:
        import skyward as sky

        if cipher:
            prefer_cipher(cipher)
        if not batched:  # what-if: every write through paramiko's own Channel.sendall
            from skyward.ssh import bulk

            bulk.BULK_MIN = 1 << 62
        image = None
        if numpy:  # the bulk benchmark sends an ndarray: the node needs the client's numpy
            import numpy as np

            image = sky.Image(pip=[f"numpy=={np.__version__}"])
        self.hosts = hosts[:nodes]
        self._open(ssh_provider(self.hosts), nodes, image=image)

    def agent_pids(self) -> list[int]:
        import psutil

        users = {h["user"] for h in self.hosts}
        mine = []
        for process in psutil.process_iter(["username"]):
            if process.info["username"] in users:
                mine.append(process)
        return _agents_of(mine)

    def extra_pids(self) -> dict[str, int]:
        """The host side of the SSH connection: sshd running as the host's user; and the
        agents' worker processes (the calls run there: CPU time only, like sshd's)."""
        import psutil

        users = {h["user"] for h in self.hosts}
        found: dict[str, int] = {}
        workers = 0
        for process in psutil.process_iter(["username", "name", "cmdline"]):
            if process.info["username"] not in users:
                continue
            if process.info["name"] == "sshd":
                found[f"sshd{len(found) - workers}"] = process.pid
            elif "skyward.agent.worker" in (process.info["cmdline"] or []):
                found[f"worker{workers}"] = process.pid
                workers += 1
        return found


# -- the floor --------------------------------------------------------------------------


class FloorConnection:
    """One persistent connection to a floor server: cloudpickled calls, in order."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.reader = Reader(stream)

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...] = ()) -> Any:
        import cloudpickle

        data = cloudpickle.dumps((fn, args, {}), protocol=5)
        self.stream.sendall(HEAD.pack(len(data)) + data)
        (size,) = HEAD.unpack(self.reader.take(HEAD.size))
        return pickle.loads(self.reader.take(size))

    def pipeline(self, fn: Callable[..., Any], count: int, offset: int = 0) -> None:
        """``count`` calls written back to back by one thread, answers read by this one."""
        import cloudpickle

        def write() -> None:
            for i in range(offset, offset + count):
                data = cloudpickle.dumps((fn, (i,), {}), protocol=5)
                self.stream.sendall(HEAD.pack(len(data)) + data)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        for _ in range(count):
            (size,) = HEAD.unpack(self.reader.take(HEAD.size))
            pickle.loads(self.reader.take(size))
        writer.join()


class Floor(Tool):
    """``via``: ``local`` (loopback socket to a server process here), ``paramiko`` (a
    direct-tcpip channel of Skyward's own SSHConnection to a server on the host) or
    ``ssh-L`` (an OpenSSH ``-L`` forward to that server)."""

    def setup(
        self,
        via: str = "local",
        workers: int = 1,
        hosts: list[hostlib.HostInfo] | None = None,
        by_value: bool = True,
        **_: Any,
    ) -> None:
        import cloudpickle

        if by_value:  # what Skyward does for this module (it is not in site-packages)
            cloudpickle.register_pickle_by_value(workloads)
        self.servers: list[Any] = []
        self.forwards: list[Any] = []
        self.connections: list[FloorConnection] = []
        self.ssh: Any = None
        for _ in range(workers):
            if via == "local":
                server, port = hostlib.start_local_server("call")
                self.servers.append(server)
                stream: Any = hostlib.connect_socket("127.0.0.1", port)
            else:
                assert hosts
                host = hosts[0]
                server, port = hostlib.start_remote_server(host, "call")
                self.servers.append(server)
                if via == "paramiko":
                    stream = self._tunnel(host, port)
                else:
                    forward, local = hostlib.start_forward(host, port)
                    self.forwards.append(forward)
                    stream = hostlib.connect_socket("127.0.0.1", local)
            self.connections.append(FloorConnection(stream))
        for _ in range(50):
            for connection in self.connections:
                connection.call(workloads.noop)

    def _tunnel(self, host: hostlib.HostInfo, port: int) -> Any:
        from skyward.ssh.connection import SSHConnection
        from skyward.ssh.hosts import SSHHost
        from skyward.ssh.keys import KnownHosts

        if self.ssh is None:
            target = SSHHost(
                host["address"], user=host["user"], port=host["port"], identity_file=host["key"]
            )
            self.ssh = SSHConnection(target, KnownHosts((Path(host["known_hosts"]),)))
        return self.ssh.open_tunnel(port)

    def latency(self, n: int) -> list[int]:
        connection, fn, out = self.connections[0], workloads.noop, []
        for _ in range(n):
            t = now()
            connection.call(fn)
            out.append(now() - t)
        return out

    def batch(self, n: int) -> int:
        k = len(self.connections)
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        threads = [
            threading.Thread(target=c.pipeline, args=(workloads.noop_i, share, i * n))
            for i, (c, share) in enumerate(zip(self.connections, shares, strict=True))
        ]
        t = now()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return now() - t

    def server_pids(self) -> list[int]:
        import psutil

        pids = []
        for server in self.servers:
            process = psutil.Process(server.pid)
            # runuser -> python for remote servers
            children = process.children(recursive=True)
            pids.append(children[-1].pid if children else server.pid)
        return pids

    def profile(
        self, workload: str, seconds: float, gil: bool = True, **kwargs: Any
    ) -> dict[str, Any]:
        """CPU per call on both sides, sampled like Skyward's."""
        from bench.profiling import profile

        pids = {"client": os.getpid()}
        for i, pid in enumerate(self.server_pids()):
            pids[f"server{i}"] = pid
        n = kwargs.get("n", 200)

        def work() -> int:
            if workload == "latency":
                self.latency(n)
            else:
                self.batch(n)
            return n

        return profile(pids, work, seconds, gil=gil)

    def close(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.stream.close()
        if self.ssh is not None:
            self.ssh.close()
        for forward in self.forwards:
            forward.kill()
            forward.wait(10)
        for server in self.servers:
            hostlib.stop_server(server)


# -- peers ------------------------------------------------------------------------------


class MPPool(Tool):
    def setup(self, workers: int = 1, **_: Any) -> None:
        import multiprocessing

        self.pool = multiprocessing.Pool(workers)
        for _ in range(50):
            self.pool.apply(workloads.noop)

    def latency(self, n: int) -> list[int]:
        apply, fn, out = self.pool.apply, workloads.noop, []
        for _ in range(n):
            t = now()
            apply(fn)
            out.append(now() - t)
        return out

    def batch(self, n: int) -> int:
        t = now()
        self.pool.map(workloads.noop_i, range(n))
        return now() - t

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class Ray(Tool):
    def setup(self, cpus: int = 1, **_: Any) -> None:
        import ray

        self.ray = ray
        self.cpus = cpus
        self.f = ray.remote(workloads.noop)
        self.fi = ray.remote(workloads.noop_i)
        self._init()
        ray.get([self.fi.remote(i) for i in range(200)])
        for _ in range(50):
            ray.get(self.f.remote())

    def _init(self) -> None:
        self.ray.init(
            num_cpus=self.cpus,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )

    def latency(self, n: int) -> list[int]:
        get, f, out = self.ray.get, self.f, []
        for _ in range(n):
            t = now()
            get(f.remote())
            out.append(now() - t)
        return out

    def batch(self, n: int) -> int:
        fi = self.fi
        t = now()
        self.ray.get([fi.remote(i) for i in range(n)])
        return now() - t

    def close(self) -> None:
        self.ray.shutdown()


class Dask(Tool):
    def setup(self, workers: int = 1, **_: Any) -> None:
        self.workers = workers
        self._start()
        self.client.gather(self.client.map(workloads.noop_i, range(200), pure=False))
        for _ in range(50):
            self.client.submit(workloads.noop, pure=False).result()

    def _start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster)

    def latency(self, n: int) -> list[int]:
        submit, fn, out = self.client.submit, workloads.noop, []
        for _ in range(n):
            t = now()
            submit(fn, pure=False).result()
            out.append(now() - t)
        return out

    def batch(self, n: int) -> int:
        client = self.client
        t = now()
        client.gather(client.map(workloads.noop_i, range(n), pure=False))
        return now() - t

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class Joblib(Tool):
    def setup(self, batch_size: Any = 1, workers: int = 2, **_: Any) -> None:
        from joblib import Parallel, delayed

        self.delayed = delayed
        self.parallel = Parallel(n_jobs=workers, backend="loky", batch_size=batch_size)
        self.batch(500)

    def batch(self, n: int) -> int:
        delayed, fn = self.delayed, workloads.noop_i
        t = now()
        self.parallel(delayed(fn)(i) for i in range(n))
        return now() - t

    def close(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)


# -- bulk transfer baselines ------------------------------------------------------------


class Sink(Tool):
    """Raw bytes to a sink on the host: ``via`` ``tcp`` (straight to the host's address),
    ``paramiko`` (a channel of Skyward's SSHConnection), ``ssh-L`` (OpenSSH forward) or
    ``ssh-cat`` (``ssh host 'cat > /dev/null'``, a new ssh process per transfer)."""

    def setup(
        self, via: str, hosts: list[hostlib.HostInfo], cipher: str | None = None, **_: Any
    ) -> None:
        if cipher:
            prefer_cipher(cipher)
        self.via = via
        self.host = hosts[0]
        self.server: Any = None
        self.forward: Any = None
        self.ssh: Any = None
        self.info: dict[str, Any] = {}
        self._arr: Any = None
        if via == "ssh-cat":
            self.info.update(self._ssh_probe())
            return
        bind = self.host["address"] if via == "tcp" else "127.0.0.1"
        self.server, port = hostlib.start_remote_server(self.host, "sink", bind=bind)
        if via == "tcp":
            self.stream: Any = hostlib.connect_socket(self.host["address"], port)
        elif via == "paramiko":
            from skyward.ssh.connection import SSHConnection
            from skyward.ssh.hosts import SSHHost
            from skyward.ssh.keys import KnownHosts

            h = self.host
            target = SSHHost(h["address"], user=h["user"], port=h["port"], identity_file=h["key"])
            self.ssh = SSHConnection(target, KnownHosts((Path(h["known_hosts"]),)))
            self.stream = self.ssh.open_tunnel(port)
            transport = self.ssh.ensure()
            cipher = str(transport.local_cipher)
            aead = "gcm" in cipher  # the MAC is part of the cipher
            self.info["cipher"] = cipher if aead else f"{cipher} / {transport.local_mac}"
        else:
            self.forward, local = hostlib.start_forward(self.host, port)
            self.stream = hostlib.connect_socket("127.0.0.1", local)
        self.reader = Reader(self.stream)

    def _ssh_probe(self) -> dict[str, Any]:
        """How long ``ssh host true`` takes, and the cipher OpenSSH negotiates."""
        times = []
        for _ in range(3):
            t = now()
            subprocess.run(hostlib.ssh_command(self.host, "true"), check=True, timeout=60)
            times.append((now() - t) / 1e6)
        verbose = subprocess.run(
            hostlib.ssh_command(self.host, "true", extra=["-v"]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        cipher = ""
        for line in verbose.stderr.splitlines():
            if "kex: client->server cipher:" in line:
                cipher = line.split("cipher:", 1)[1].split(" MAC:")[0].strip()
        return {"ssh_true_ms": sorted(times)[1], "openssh_cipher": cipher}

    def bulk(self, nbytes: int, repeat: int = 1) -> int:
        """``repeat`` transfers back to back; the time of the last."""
        elapsed = 0
        for _ in range(repeat):
            elapsed = self._transfer(nbytes)
        return elapsed

    def _transfer(self, nbytes: int) -> int:
        if self._arr is None or self._arr.nbytes != nbytes:
            self._arr = _payload(nbytes)
        view = memoryview(self._arr).cast("B")
        if self.via == "ssh-cat":
            command = hostlib.ssh_command(self.host, "cat > /dev/null")
            t = now()
            process = subprocess.Popen(command, stdin=subprocess.PIPE)
            assert process.stdin is not None
            process.stdin.write(view)
            process.stdin.close()
            code = process.wait(600)
            elapsed = now() - t
            assert code == 0, code
            return elapsed
        t = now()
        self.stream.sendall(SIZE.pack(nbytes))
        self.stream.sendall(view)
        (got,) = SIZE.unpack(self.reader.take(SIZE.size))
        elapsed = now() - t
        assert got == nbytes
        return elapsed

    def details(self) -> dict[str, Any]:
        return self.info

    def close(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
        if self.forward is not None:
            self.forward.kill()
            self.forward.wait(10)
        hostlib.stop_server(self.server)


# -- cold start -------------------------------------------------------------------------


class SkywardCold(Tool):
    """``image``: ``none`` (the client's interpreter), ``cached`` (a package image whose
    venv is already built) or ``fresh`` (the same image in a new cache: a venv is built)."""

    IMAGE_PIP = ("humanize==4.11.0",)

    def setup(self, image: str = "none", **_: Any) -> None:
        import skyward as sky

        self.mode = image
        self.fn = sky.compute(workloads.noop)
        self.image = None if image == "none" else sky.Image(pip=list(self.IMAGE_PIP))
        self.cache = Path(tempfile.mkdtemp(prefix="skyward-bench-cache-"))
        self.cold()  # builds the cached venv, warms uv's wheel cache and the imports

    def cold(self) -> dict[str, Any]:
        import skyward as sky

        cache = self.cache
        if self.mode == "fresh":
            cache = Path(tempfile.mkdtemp(prefix="skyward-bench-fresh-"))
        timeline = _Timeline()
        try:
            pool = sky.ComputePool(
                provider=sky.Local(cache_dir=str(cache)),
                nodes=1,
                image=self.image,
                display="quiet",
                collect_metrics=False,
                on_event=timeline,
            )
            start = now()
            timeline.start = start
            pool.open()
            opened = now()
            try:
                self.fn() >> pool
                first = now()
            finally:
                pool.close()
            closed = now()
        finally:
            if self.mode == "fresh":
                shutil.rmtree(cache, ignore_errors=True)
        return {
            "ns": first - start,
            "close_s": (closed - first) / 1e9,
            "phases": timeline.phases(opened - start, first - start),
        }

    def close(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)


class FloorCold(Tool):
    """The least a cold start can cost: start a Python process (the floor server, which
    imports cloudpickle), connect to it, make one call."""

    def setup(self, **_: Any) -> None:
        import cloudpickle

        cloudpickle.register_pickle_by_value(workloads)
        self.cold()

    def cold(self) -> dict[str, Any]:
        t = now()
        server, port = hostlib.start_local_server("call")
        try:
            connection = FloorConnection(hostlib.connect_socket("127.0.0.1", port))
            connection.call(workloads.noop)
            first = now()
            connection.stream.close()
        finally:
            hostlib.stop_server(server)
        return {"ns": first - t, "close_s": (now() - first) / 1e9}


class RayCold(Tool):
    def setup(self, warm: bool = True, **_: Any) -> None:
        import ray

        self.ray = ray
        self.f = ray.remote(workloads.noop)
        if warm:
            self.cold()

    def cold(self) -> dict[str, Any]:
        t = now()
        self.ray.init(
            num_cpus=1, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
        )
        self.ray.get(self.f.remote())
        first = now()
        self.ray.shutdown()
        return {"ns": first - t, "close_s": (now() - first) / 1e9}


class DaskCold(Tool):
    def setup(self, warm: bool = True, **_: Any) -> None:
        import distributed  # noqa: F401  (imports are not part of a cold start)

        if warm:
            self.cold()

    def cold(self) -> dict[str, Any]:
        from distributed import Client, LocalCluster

        t = now()
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
        client.submit(workloads.noop, pure=False).result()
        first = now()
        client.close()
        cluster.close()
        return {"ns": first - t, "close_s": (now() - first) / 1e9}


# -- provisioning at scale --------------------------------------------------------------


class _CPUWindow:
    """This process's CPU seconds and the whole machine's busy share over a window."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.process = psutil.Process()
        self.mine = self._mine()
        self.machine = psutil.cpu_times()

    def _mine(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def close(self) -> dict[str, float]:
        after = self.psutil.cpu_times()
        total = sum(after) - sum(self.machine)
        idle = (after.idle - self.machine.idle) + (after.iowait - self.machine.iowait)
        return {
            "client_cpu_s": self._mine() - self.mine,
            "machine_busy": (total - idle) / total if total > 0 else 0.0,
        }


class SSHScale(Tool):
    def setup(self, hosts: list[hostlib.HostInfo], **_: Any) -> None:
        import skyward as sky

        self.hosts = hosts
        self.fn = sky.compute(workloads.noop)
        self.open([0])  # imports and the client's wheel cache: not part of any figure

    def open(self, indices: list[int], cold: bool = False) -> dict[str, Any]:
        import skyward as sky

        chosen = [self.hosts[i] for i in indices]
        if cold:
            for host in chosen:
                hostlib.run_as(host, "rm -rf .skyward")
        timeline = _Timeline()
        pool = sky.ComputePool(
            provider=ssh_provider(chosen),
            nodes=len(chosen),
            display="quiet",
            collect_metrics=False,
            on_event=timeline,
        )
        start = now()
        timeline.start = start
        window = _CPUWindow()
        pool.open()
        opened = now()
        try:
            self.fn() >> pool
            first = now()
            cpu = window.close()
        finally:
            pool.close()
        closed = now()
        return {
            "ns": first - start,
            "close_s": (closed - first) / 1e9,
            "phases": timeline.phases(opened - start, first - start),
            **cpu,
        }


class AWSCalls(Tool):
    """AWS-on-moto: API calls a launch of N nodes makes (``tests/aws_fakes.py``)."""

    def setup(self, **_: Any) -> None:
        from tests.aws_fakes import MotoServer, PricingServer

        self.moto = MotoServer().start()
        self.pricing = PricingServer().start()
        self.tmp = Path(tempfile.mkdtemp(prefix="skyward-bench-aws-"))
        for name in list(os.environ):
            if name.startswith(("AWS_", "SKYWARD_CACHE_DIR")):
                del os.environ[name]
        (self.tmp / "cache").mkdir()
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": self.moto.url,
                "AWS_ENDPOINT_URL_PRICING": self.pricing.url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(self.tmp / "aws-config-absent"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.tmp / "aws-credentials-absent"),
                "AWS_EC2_METADATA_DISABLED": "true",
                "SKYWARD_CACHE_DIR": str(self.tmp / "cache"),
            }
        )

    def launch(self, nodes: int) -> dict[str, Any]:
        import skyward as sky
        from skyward.provider import LaunchRequest
        from skyward.selection import offers_for, rank_offers
        from skyward.spec import build_spec

        self.moto.reset()
        self.pricing.reset()
        for region in ("us-east-1", "us-west-2"):
            self.moto.seed_public_parameters(region)
        self.moto.reset_calls()
        provider = sky.AWS(ssh_cidr="127.0.0.1/32").create()  # type: ignore[attr-defined]
        spec = build_spec(nodes=nodes, cpu=2, allocation="on-demand")
        offers = rank_offers(offers_for(provider, spec), spec)
        offer_calls = len(self.moto.calls) + self.pricing.count()
        self.moto.reset_calls()
        pool_id = f"sky-bench{nodes}"
        t = now()
        infra = provider.prepare(spec, pool_id)
        request = LaunchRequest(
            pool_id=pool_id,
            offer=offers[0],
            count=nodes,
            spec=spec,
            tags={"skyward:managed": "true", "skyward:pool": pool_id},
        )
        instances = list(provider.launch(infra, request))
        elapsed = now() - t
        launch = [c.action for c in self.moto.calls]
        self.moto.reset_calls()
        provider.terminate(instances)
        provider.teardown(infra)
        teardown = [c.action for c in self.moto.calls]
        return {
            "nodes": len(instances),
            "offer_calls": offer_calls,
            "launch_calls": len(launch),
            "launch_actions": launch,
            "teardown_calls": len(teardown),
            "launch_s_on_moto": elapsed / 1e9,
        }

    def close(self) -> None:
        self.moto.stop()
        self.pricing.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class SkywardTensors(Tool):
    """A Local pool (process workers) moving torch tensors and numpy arrays both ways."""

    def setup(self, **_: Any) -> None:
        import skyward as sky

        self.pool = sky.ComputePool(provider=sky.Local(), display="quiet", collect_metrics=False)
        self.pool.open()

    def transfer(self, nbytes: int, rounds: int) -> dict[str, list[float]]:
        from bench.tensors import measure

        return measure(self.pool, nbytes, rounds)

    def close(self) -> None:
        self.pool.close()


KINDS: dict[str, type[Tool]] = {
    "skyward-local": SkywardLocal,
    "skyward-ssh": SkywardSSH,
    "floor": Floor,
    "mp": MPPool,
    "ray": Ray,
    "dask": Dask,
    "joblib": Joblib,
    "sink": Sink,
    "skyward-cold": SkywardCold,
    "floor-cold": FloorCold,
    "ray-cold": RayCold,
    "dask-cold": DaskCold,
    "ssh-scale": SSHScale,
    "aws-calls": AWSCalls,
    "skyward-tensors": SkywardTensors,
    "skyward-data": SkywardData,  # type: ignore[dict-item]  # the same duck-typed interface
}
