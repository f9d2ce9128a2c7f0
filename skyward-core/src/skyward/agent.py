"""The node agent: ``python -m skyward.agent``, one per node.

It listens on 127.0.0.1 only (the client reaches it through a local socket or an SSH
channel), announces its port with one ``SKYWARD-AGENT-READY <port>`` line on its original
stdout, then serves framed :mod:`skyward.messages`: tasks run on ``concurrency`` worker
threads; everything written to file descriptors 1 and 2 (by Python or by child processes)
streams back as log lines; resource samples stream back every few seconds.

The agent never outlives its client for long: if no frame arrives for
``--heartbeat-timeout`` seconds, or ``--lifetime`` passes, it kills its process group and
exits (``--on-expire=poweroff`` powers the machine off first, for cloud nodes).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from skyward import cluster, handshake, messages, wire
from skyward.agent_output import OutputCapture
from skyward.cluster import InstanceInfo
from skyward.errors import AgentAuthenticationError, SerializationError
from skyward.messages import EXIT_LIFETIME, EXIT_NO_HEARTBEAT, EXIT_REASON_FILE

POWEROFF_ENV = "SKYWARD_POWEROFF_CMD"
"""Overrides the command ``--on-expire=poweroff`` runs (tests point it at something harmless)."""
NODE_MARKER_ENV = "SKYWARD_NODE"
"""``<pool>/<node>`` in the environment of everything an agent starts."""
HANDSHAKE_TIMEOUT = 10.0
_PR_SET_CHILD_SUBREAPER = 36

_log = logging.getLogger("skyward.agent")
_LOG_BACKLOG = 10_000


class Agent:
    def __init__(self, options: argparse.Namespace, key: bytes) -> None:
        self.options = options
        self.key = key
        self.output: OutputCapture | None = None
        self._stopping = threading.Lock()
        self.info = InstanceInfo(
            node=options.node,
            total_nodes=options.total_nodes,
            accelerators=[a for a in options.accelerators.split(",") if a],
            head_addr=options.head_addr,
            head_port=options.head_port,
            job_id=options.job_id,
            worker=0,
            workers_per_node=options.concurrency,
        )
        self.started = time.monotonic()
        self.last_seen = time.monotonic()
        self.tasks: queue.Queue[messages.Task] = queue.Queue()
        self._lock = threading.Lock()
        self._current: wire.FrameWriter | None = None
        # Log lines written while no client is connected wait here.
        self._backlog: collections.deque[object] = collections.deque(maxlen=_LOG_BACKLOG)
        # Results stay until the client acknowledges them, so a connection that drops
        # after a result was written (but before it arrived) loses nothing.
        self._inflight: set[int] = set()
        self._retained: dict[int, messages.Result] = {}

    # -- outbound ---------------------------------------------------------------------

    def _send_current(self, message: object) -> None:
        with self._lock:
            writer = self._current
            if writer is None:
                self._backlog.append(message)
                return
        try:
            writer.send(message)
        except OSError:
            self._backlog.append(message)

    def _complete(self, result: messages.Result) -> None:
        if self.output is not None:
            # Lines the task printed travel before its result, so a caller that closes
            # the pool as soon as it has the result still sees all of them.
            self.output.drain()
        with self._lock:
            self._inflight.discard(result.id)
            self._retained[result.id] = result
            writer = self._current
        if writer is not None:
            # A failed write is fine: the result is retained for the next connection.
            with contextlib.suppress(OSError):
                writer.send(result)

    # -- connections ------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _greet(self, writer: wire.FrameWriter) -> None:
        """Make ``writer`` the current connection: Hello, then what the client missed."""
        with self._lock:
            self._current = writer
            retained = list(self._retained.values())
            writer.send(
                messages.Hello(
                    node=self.info.node,
                    pid=os.getpid(),
                    python=f"{sys.version_info.major}.{sys.version_info.minor}",
                    skyward_version=_version(),
                    inflight=tuple(sorted(self._inflight)),
                    completed=tuple(r.id for r in retained),
                )
            )
            backlog, self._backlog = list(self._backlog), collections.deque(maxlen=_LOG_BACKLOG)
            for message in [*retained, *backlog]:
                writer.send(message)

    def _connection(self, conn: socket.socket) -> None:
        writer = wire.FrameWriter(conn)
        reader = wire.FrameReader(conn)
        try:
            # Nothing from this peer is unpickled, and it cannot become the current
            # connection, until it proves it holds the pool's key.
            conn.settimeout(HANDSHAKE_TIMEOUT)
            try:
                handshake.accept(conn, self.key)
            except (AgentAuthenticationError, EOFError, OSError) as error:
                _log.warning("refused a connection: %s", error)
                return
            conn.settimeout(None)
            self._greet(writer)
            self.last_seen = time.monotonic()
            while True:
                message = reader.read()
                self.last_seen = time.monotonic()
                if isinstance(message, messages.Task):
                    with self._lock:
                        duplicate = message.id in self._inflight or message.id in self._retained
                        self._inflight.add(message.id)
                    if not duplicate:
                        self.tasks.put(message)
                elif isinstance(message, messages.Ack):
                    with self._lock:
                        for task_id in message.ids:
                            self._retained.pop(task_id, None)
                elif isinstance(message, messages.Shutdown):
                    self.shutdown(0, "the client closed the pool")
        except (EOFError, OSError):
            _log.info("client connection closed")
        finally:
            with self._lock:
                if self._current is writer:
                    self._current = None
            conn.close()

    # -- work -------------------------------------------------------------------------

    def worker(self, index: int) -> None:
        cluster.set_worker(index)
        while True:
            self._complete(self._run(self.tasks.get()))

    def _run(self, task: messages.Task) -> messages.Result:
        try:
            fn, args, kwargs = task.payload.open()
        except BaseException as error:
            return messages.Result(task.id, failure=messages.Failure.of(error))
        try:
            value = fn(*args, **kwargs)
        except BaseException as error:
            # Drop this frame from the traceback: the user's code starts one level down.
            return messages.Result(task.id, failure=messages.Failure.of(error, skip_frames=1))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        try:
            return messages.Result(task.id, value=messages.Payload.of(value))
        except SerializationError as error:
            name = getattr(fn, "__qualname__", fn)
            message = f"the result of {name!r} cannot be sent back: {error}"
            return messages.Result(
                task.id, failure=messages.Failure.of(SerializationError(message))
            )

    # -- watchdog and metrics ---------------------------------------------------------

    def watchdog(self) -> None:
        timeout = self.options.heartbeat_timeout
        lifetime = self.options.lifetime
        while True:
            time.sleep(min(0.5, timeout / 4))
            now = time.monotonic()
            if now - self.last_seen > timeout:
                self.expire(EXIT_NO_HEARTBEAT, f"no heartbeat for {timeout:g}s")
            if lifetime is not None and now - self.started > lifetime:
                self.expire(
                    EXIT_LIFETIME, f"the pool's lifetime ({lifetime:g}s left at start) ran out"
                )

    def expire(self, code: int, reason: str) -> None:
        _log.warning("expiring: %s", reason)
        if self.options.on_expire == "poweroff":
            command = os.environ.get(POWEROFF_ENV) or _default_poweroff()
            subprocess.run(command, shell=True, check=False, timeout=60)
        self.shutdown(code, reason)

    def shutdown(self, code: int, reason: str) -> None:
        """Stop everything a task started, flush what it printed, and exit. Once."""
        if not self._stopping.acquire(blocking=False):
            return  # another thread is already shutting down; it will exit the process
        with contextlib.suppress(OSError):
            Path(EXIT_REASON_FILE).write_text(f"{code} {reason}\n")
        _kill_descendants()
        sys.stdout.flush()
        sys.stderr.flush()
        if self.output is not None:
            self.output.drain(final=True)
        logging.shutdown()
        os._exit(code)

    def log_line(self, stream: str, line: str, timestamp: float) -> None:
        self._send_current(messages.Log(stream=stream, line=line, timestamp=timestamp))

    def sampler(self, interval: float) -> None:
        import psutil

        psutil.cpu_percent(interval=None)
        while True:
            time.sleep(interval)
            self._send_current(_sample(psutil))


def _default_poweroff() -> str:
    prefix = "" if os.geteuid() == 0 else "sudo -n "
    return f"{prefix}shutdown -h now || {prefix}poweroff"


def _become_subreaper() -> None:
    """Orphans of our descendants (daemons, double forks) become our children instead of
    init's, so :func:`_kill_descendants` still finds them. Linux only; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _kill_descendants() -> None:
    """Kill every process a task started, in whatever session or group it put itself,
    and whatever a previous agent of the same node left behind."""
    import psutil

    me = os.getpid()
    marker = os.environ.get(NODE_MARKER_ENV)
    victims: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        victims.update((c.pid, c) for c in psutil.Process(me).children(recursive=True))
    if marker:
        victims.update((p.pid, p) for p in _marked_processes(marker) if p.pid != me)
    for victim in victims.values():
        with contextlib.suppress(psutil.Error):
            victim.kill()
    psutil.wait_procs(list(victims.values()), timeout=3)


def _marked_processes(marker: str) -> list[Any]:
    """This user's processes whose environment carries ``marker`` (inherited from an
    agent of this node, unless a process scrubbed its environment)."""
    import psutil

    uid = os.getuid()
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            if process.info["uids"] is None or process.info["uids"].real != uid:
                continue
            if process.environ().get(NODE_MARKER_ENV) == marker:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _stop_predecessors(marker: str) -> None:
    """A restarted agent first stops what the dead one of the same node left running."""
    import psutil

    me = os.getpid()
    ancestors = {me}
    with contextlib.suppress(psutil.Error):
        ancestors.update(p.pid for p in psutil.Process(me).parents())
    leftovers = [p for p in _marked_processes(marker) if p.pid not in ancestors]
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(leftovers, timeout=3)


def _sample(psutil: Any) -> messages.Sample:
    memory = psutil.virtual_memory()
    gpu = _gpu_sample()
    return messages.Sample(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        memory_percent=float(memory.percent),
        memory_used_mb=(memory.total - memory.available) / 2**20,
        memory_total_mb=memory.total / 2**20,
        **gpu,
    )


def _gpu_sample() -> dict[str, float | None]:
    """First GPU's figures from ``nvidia-smi``; empty where there is no NVIDIA GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    query = "utilization.gpu,memory.used,memory.total,temperature.gpu"
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        util, used, total, temp = (float(v) for v in out.splitlines()[0].split(","))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}
    return {
        "gpu_utilization": util,
        "gpu_memory_used_mb": used,
        "gpu_memory_total_mb": total,
        "gpu_temperature": temp,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skyward-core")
    except PackageNotFoundError:
        return "unknown"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m skyward.agent")
    parser.add_argument("--node", type=int, required=True)
    parser.add_argument("--total-nodes", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--job-id", default="local")
    parser.add_argument("--head-addr", default="127.0.0.1")
    parser.add_argument("--head-port", type=int, default=0)
    parser.add_argument("--accelerators", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat-timeout", type=float, default=30.0)
    parser.add_argument("--lifetime", type=float, default=None)
    parser.add_argument("--metrics-interval", type=float, default=None)
    parser.add_argument("--on-expire", choices=("exit", "poweroff"), default="exit")
    parser.add_argument(
        "--env-stdin",
        action="store_true",
        help="accepted for compatibility: the key and environment always come on stdin",
    )
    return parser.parse_args(argv)


def _read_stdin() -> tuple[dict[str, str], bytes]:
    """The environment for the functions and the pool's key, from one JSON line."""
    line = sys.stdin.readline()
    try:
        data = json.loads(line)
        env, key = data["env"], bytes.fromhex(data["key"])
    except (ValueError, KeyError, TypeError) as error:
        raise SystemExit(
            "skyward.agent: expected the pool's key and environment as one JSON line on "
            f"stdin ({error})"
        ) from None
    if len(key) < handshake.KEY_BYTES:
        raise SystemExit("skyward.agent: the pool's key is too short")
    return {str(k): str(v) for k, v in env.items()}, key


def main(argv: list[str] | None = None) -> None:
    options = _parse(argv)
    logging.basicConfig(
        filename="agent.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    env, key = _read_stdin()
    os.environ.update(env)
    Path(EXIT_REASON_FILE).unlink(missing_ok=True)  # a predecessor's, in the same directory
    marker = f"{options.job_id}/{options.node}"
    _stop_predecessors(marker)
    # Everything the tasks start inherits this, so a later agent of the same node (after a
    # crash) and ``shutdown`` find it even when it left our session.
    os.environ[NODE_MARKER_ENV] = marker
    _become_subreaper()
    # A Ctrl-C meant for the client must not reach the agent; the client stops it itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    agent = Agent(options, key)
    cluster.set_node_info(agent.info)

    def on_sigterm(signum: int, frame: object) -> None:
        threading.Thread(
            target=agent.shutdown, args=(128 + signum, "stopped by SIGTERM"), daemon=True
        ).start()

    signal.signal(signal.SIGTERM, on_sigterm)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", options.port))
    listener.listen(16)
    port = listener.getsockname()[1]

    agent.output = OutputCapture(agent.log_line)
    original_stdout = agent.output.original_stdout
    os.write(original_stdout, f"{messages.READY_PREFIX} {port} {os.getpid()}\n".encode())
    os.close(original_stdout)
    _log.info("node %d listening on 127.0.0.1:%d", options.node, port)

    threading.Thread(target=agent.watchdog, daemon=True, name="watchdog").start()
    for index in range(options.concurrency):
        threading.Thread(target=agent.worker, args=(index,), daemon=True, name=f"w{index}").start()
    if options.metrics_interval:
        threading.Thread(
            target=agent.sampler, args=(options.metrics_interval,), daemon=True, name="metrics"
        ).start()
    agent.serve(listener)


if __name__ == "__main__":
    main()
