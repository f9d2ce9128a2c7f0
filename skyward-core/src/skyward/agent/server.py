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
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs

from skyward import cluster, handshake, messages, refs, wire
from skyward.agent.children import (
    NODE_MARKER_ENV,
    become_subreaper,
    kill_descendants,
    stop_predecessors,
)
from skyward.agent.metrics import sample
from skyward.agent.output import OutputCapture
from skyward.agent.streams import Streams
from skyward.agent.workers import (
    EXECUTORS,
    ProcessSlot,
    TaskBoard,
    ThreadSlot,
    cancelled,
    make_slots,
)
from skyward.cluster import InstanceInfo
from skyward.errors import AgentAuthenticationError
from skyward.gpus import node_accelerators, plan_node
from skyward.messages import EXIT_LIFETIME, EXIT_NO_HEARTBEAT, EXIT_REASON_FILE

POWEROFF_ENV = "SKYWARD_POWEROFF_CMD"
"""Overrides the command ``--on-expire=poweroff`` runs (tests point it at something harmless)."""
HANDSHAKE_TIMEOUT = 10.0
_HANDOFF_AFTER = 0.05
"""Seconds a call run by a connection's reading thread may keep that connection unread;
past that, another thread reads it (and the watchdog looks this often)."""

_log = logging.getLogger("skyward.agent")
_LOG_BACKLOG = 10_000


class Agent:
    def __init__(self, options: argparse.Namespace, key: bytes) -> None:
        self.options = options
        self.key = key
        self.output: OutputCapture | None = None
        self._stopping = threading.Lock()
        gpus, slots = plan_node(options.concurrency, options.mig_profile)
        envs = [{"SKYWARD_WORKER": str(slot.worker), **slot.env()} for slot in slots]
        # What the node really has; the client's view (its offer) when it cannot tell.
        seen = node_accelerators(gpus, options.mig_profile)
        self.info = InstanceInfo(
            node=options.node,
            total_nodes=options.total_nodes,
            accelerators=list(seen) or [a for a in options.accelerators.split(",") if a],
            head_addr=options.head_addr,
            head_port=options.head_port,
            job_id=options.job_id,
            worker=0,
            workers_per_node=len(envs),
        )
        self.slots = make_slots(self.info, options.executor, envs)
        self.board = TaskBoard(len(self.slots))
        self.started = time.monotonic()
        self.last_seen = time.monotonic()
        self._lock = threading.Lock()
        self._current: wire.FrameWriter | None = None
        # Log lines written while no client is connected wait here.
        self._backlog: collections.deque[object] = collections.deque(maxlen=_LOG_BACKLOG)
        # Results stay until the client acknowledges them, so a connection that drops
        # after a result was written (but before it arrived) loses nothing.
        self._inflight: set[int] = set()
        self._retained: dict[int, messages.Result] = {}
        self.streams = Streams(self._send_item)
        # One thread worker: its calls run in the thread that read them while it is idle
        # (no hand-off on a call's way in); see _run_here.
        self._run_inline = options.executor == "thread" and len(self.slots) == 1
        self._inline_lock = threading.Lock()
        self._inline: _Inline | None = None

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

    def _send_item(self, item: object) -> None:
        # No backlog: the stream keeps its unconsumed items and replays them on greeting.
        with self._lock:
            writer = self._current
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.send(item)

    def _complete(self, result: messages.Result) -> None:
        if self.output is not None:
            # Lines the task printed travel before its result, so a caller that closes
            # the pool as soon as it has the result still sees all of them.
            self.output.drain()
        with self._lock:
            if result.id not in self._inflight:
                return  # answered already (a thread that ran on past its timeout)
            self._inflight.discard(result.id)
            self._retained[result.id] = result
            writer = self._current
        self.streams.end(result.id)
        if writer is not None:
            # A failed write is fine: the result is retained for the next connection.
            with contextlib.suppress(OSError):
                writer.send(result)

    # -- connections ------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            if conn.family == socket.AF_INET:
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
                    workers=len(self.slots),
                    executor=self.options.executor,
                    refs=refs.stored(),
                )
            )
            backlog, self._backlog = list(self._backlog), collections.deque(maxlen=_LOG_BACKLOG)
            # A stream's items before its end (a retained result), as they were produced.
            for message in [*self.streams.replay(), *retained, *backlog]:
                writer.send(message)

    def _connection(self, conn: socket.socket) -> None:
        writer = wire.FrameWriter(conn)
        reader = wire.FrameReader(conn)
        try:
            # Nothing from this peer is unpickled, and it cannot become the current
            # connection, until it proves it holds the pool's key.
            conn.settimeout(HANDSHAKE_TIMEOUT)
            handshake.accept(conn, self.key)
        except (AgentAuthenticationError, EOFError, OSError) as error:
            _log.warning("refused a connection: %s", error)
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        self._read_on(conn, reader, writer, greet=True)

    def _read_on(
        self,
        conn: socket.socket,
        reader: wire.FrameReader,
        writer: wire.FrameWriter,
        *,
        greet: bool = False,
    ) -> None:
        """Read the client's frames until the connection ends, or until this thread ran a
        call that took long enough for another thread to take over the reading (see
        ``_run_here``). ``greet``: make it the current connection first."""
        handed = False
        try:
            if greet:
                conn.settimeout(None)
                self._greet(writer)
                self.last_seen = time.monotonic()
            while True:
                message = reader.read()
                self.last_seen = time.monotonic()
                if isinstance(message, messages.Task):
                    task = self._accept(message)
                    if task is not None and not self._run_here(task, conn, reader, writer):
                        handed = True
                        return
                elif isinstance(message, messages.Ack):
                    with self._lock:
                        for task_id in message.ids:
                            self._retained.pop(task_id, None)
                    self.streams.forget(message.ids)
                elif isinstance(message, messages.Credit):
                    self.streams.on_message(message)
                elif isinstance(message, messages.Cancel):
                    self._cancel(message)
                elif isinstance(message, messages.Put):
                    refs.store(message.id, message.payload)
                elif isinstance(message, messages.Release):
                    refs.remove(message.ids)
                    for slot in self.slots:
                        slot.release_refs(message.ids)
                elif isinstance(message, messages.Shutdown):
                    self.shutdown(0, "the client closed the pool")
        except (EOFError, OSError):
            _log.info("client connection closed")
        finally:
            if not handed:
                with self._lock:
                    if self._current is writer:
                        self._current = None
                conn.close()

    def _run_here(
        self,
        task: messages.Task,
        conn: socket.socket,
        reader: wire.FrameReader,
        writer: wire.FrameWriter,
    ) -> bool:
        """Run ``task`` (claimed on the board) in this, the connection's reading thread,
        and answer it. The connection stays unread meanwhile, unless the call runs past
        ``_HANDOFF_AFTER``: then the watchdog starts another thread that reads it (a
        cancellation, a stream's credit, the heartbeat, a shutdown are never held up
        longer). Returns whether this thread still reads the connection."""
        inline = _Inline(time.monotonic(), conn, reader, writer)
        with self._inline_lock:
            self._inline = inline
        slot = self.slots[0]
        assert isinstance(slot, ThreadSlot)
        try:
            slot.run_here(task, self._complete)
        finally:
            with self._inline_lock:
                self._inline = None
            self.board.unclaim(slot.info.worker)
        return not inline.handed

    def _hand_off(self, now: float) -> None:
        """Let another thread read a connection whose reading thread runs a long call."""
        with self._inline_lock:
            inline = self._inline
            if inline is None or inline.handed or now - inline.since < _HANDOFF_AFTER:
                return
            inline.handed = True
        self.last_seen = now  # its frames are read again from now on
        threading.Thread(
            target=self._read_on, args=(inline.conn, inline.reader, inline.writer), daemon=True
        ).start()

    # -- work -------------------------------------------------------------------------

    def fork_workers(self, close: list[int]) -> None:
        """Process workers start as forks of the agent, which has imported what they need;
        only while it has no other thread (else they start as new interpreters)."""
        if threading.active_count() > 1:
            _log.warning("threads already running: worker processes start as interpreters")
            return
        for slot in self.slots:
            if isinstance(slot, ProcessSlot):
                slot.fork(close)

    def start_workers(self) -> None:
        for slot in self.slots:
            slot.start(self.board, self._complete, self.streams)

    def _accept(self, task: messages.Task) -> messages.Task | None:
        """Take a task in; returns it when the calling (reading) thread is to run it."""
        with self._lock:
            duplicate = task.id in self._inflight or task.id in self._retained
            self._inflight.add(task.id)
        if duplicate:
            return None
        if task.window > 0:
            self.streams.open(task)
        if task.worker is not None and not 0 <= task.worker < len(self.slots):
            error = ValueError(f"this node has workers 0..{len(self.slots) - 1}, not {task.worker}")
            self._complete(messages.Result(task.id, failure=messages.Failure.of(error)))
            return None
        # A stream runs on its slot's thread: its items wait on credit this thread reads.
        if self._run_inline and not task.window and self.board.claim(task) is not None:
            return task
        self.board.put(task)
        return None

    def _cancel(self, message: messages.Cancel) -> None:
        """Nobody wants task ``message.id``: drop it if queued, stop a stream at its next
        item, and with ``force`` kill the worker process running it (a thread runs on)."""
        self.streams.on_message(message)
        if self.board.cancel(message.id) is not None:
            self._complete(cancelled(message.id))
        elif message.force:
            for slot in self.slots:
                slot.cancel(message.id)

    # -- watchdog and metrics ---------------------------------------------------------

    def watchdog(self) -> None:
        timeout = self.options.heartbeat_timeout
        lifetime = self.options.lifetime
        tick = min(_HANDOFF_AFTER if self._run_inline else 0.5, timeout / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            if self._run_inline:
                self._hand_off(now)
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
        kill_descendants()
        refs.remove_all()
        sys.stdout.flush()
        sys.stderr.flush()
        if self.output is not None:
            self.output.drain(final=True)
        logging.shutdown()
        os._exit(code)

    def log_line(self, stream: str, line: str, timestamp: float) -> None:
        self._send_current(messages.Log(stream=stream, line=line, timestamp=timestamp))

    def sampler(self, interval: float) -> None:
        # psutil is imported here, a moment after the node is ready, not while its first
        # call runs; the first sample covers that moment instead of the whole interval.
        time.sleep(min(interval, 1.0))
        import psutil

        psutil.cpu_percent(interval=None)
        while True:
            time.sleep(interval)
            self._send_current(sample(psutil))


@attrs.define
class _Inline:
    """A call run by the thread that reads its connection (see ``Agent._run_here``)."""

    since: float
    conn: socket.socket
    reader: wire.FrameReader
    writer: wire.FrameWriter
    handed: bool = False
    """Another thread reads the connection now."""


def _default_poweroff() -> str:
    prefix = "" if os.geteuid() == 0 else "sudo -n "
    return f"{prefix}shutdown -h now || {prefix}poweroff"


def _version() -> str:
    # Not importlib.metadata: importing it (and scanning sys.path) cost more than the
    # rest of the greeting, on every cold start's path to its first call.
    import skyward

    return skyward.__version__


def _concurrency(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m skyward.agent")
    parser.add_argument("--node", type=int, required=True)
    parser.add_argument("--total-nodes", type=int, required=True)
    parser.add_argument("--concurrency", type=_concurrency, default=1)
    parser.add_argument("--executor", choices=EXECUTORS, default="thread")
    parser.add_argument("--mig-profile", default=None)
    parser.add_argument("--job-id", default="local")
    parser.add_argument("--head-addr", default="127.0.0.1")
    parser.add_argument("--head-port", type=int, default=0)
    parser.add_argument("--accelerators", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--unix-socket",
        default=None,
        help="listen on this unix socket (only its owner can reach it) instead of TCP",
    )
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


def _listen(options: argparse.Namespace) -> tuple[socket.socket, int]:
    """127.0.0.1 only; or a unix socket that only this user can open (0600, in a 0700
    directory), where the machine is the client's own. Returns the port (0 for unix)."""
    if options.unix_socket:
        path = Path(options.unix_socket)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        path.unlink(missing_ok=True)  # a dead predecessor's
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        listener.listen(16)
        return listener, 0
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", options.port))
    listener.listen(16)
    port: int = listener.getsockname()[1]
    return listener, port


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
    stop_predecessors(marker)
    # Everything the tasks start inherits this, so a later agent of the same node (after a
    # crash) and ``shutdown`` find it even when it left our session.
    os.environ[NODE_MARKER_ENV] = marker
    become_subreaper()
    # A Ctrl-C meant for the client must not reach the agent; the client stops it itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Where sky.put values are kept: the node's directory, shared with the worker processes.
    os.environ[refs.REFS_DIR_ENV] = str(refs.directory())
    refs.remove_all()  # a crashed predecessor's: its client sends what it needs again
    agent = Agent(options, key)
    cluster.set_node_info(agent.info)

    def on_sigterm(signum: int, frame: object) -> None:
        threading.Thread(
            target=agent.shutdown, args=(128 + signum, "stopped by SIGTERM"), daemon=True
        ).start()

    signal.signal(signal.SIGTERM, on_sigterm)

    listener, port = _listen(options)

    # Before the workers: they inherit it. Its threads start after the first workers are
    # forked (a fork of a process with threads inherits their locks).
    agent.output = OutputCapture(agent.log_line, start=False)
    agent.fork_workers([listener.fileno(), *agent.output.private_fds])
    agent.output.start()
    # The workers get ready while the client connects and proves its key: a call that
    # arrives first waits on the board for its worker.
    agent.start_workers()
    original_stdout = agent.output.original_stdout
    os.write(original_stdout, f"{messages.READY_PREFIX} {port} {os.getpid()}\n".encode())
    os.close(original_stdout)
    _log.info("node %d listening on 127.0.0.1:%d", options.node, port)

    threading.Thread(target=agent.watchdog, daemon=True, name="watchdog").start()
    if options.metrics_interval:
        threading.Thread(
            target=agent.sampler, args=(options.metrics_interval,), daemon=True, name="metrics"
        ).start()
    agent.serve(listener)
