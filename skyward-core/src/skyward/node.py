"""The client's side of one node: a connection to its agent, and the tasks in flight on it."""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import attrs

from skyward import messages, wire
from skyward.errors import RemoteError, RemoteTraceback, SerializationError, WorkerLostError
from skyward.events import Error, LogLine, Metrics, SkywardEvent
from skyward.provider import AgentEndpoint, Instance, NodeTransport

__all__ = ["NodeClient", "rebuild_exception"]

_log = logging.getLogger("skyward.node")


def rebuild_exception(failure: messages.Failure) -> BaseException:
    """The remote exception, as its own type when that type exists here.

    The remote traceback hangs off it as ``__cause__`` (printed above the local one, as
    ``concurrent.futures`` does) and as ``remote_traceback``.
    """
    error: BaseException | None = None
    if failure.exception is not None:
        try:
            opened = failure.exception.open()
        except Exception:
            opened = None
        if isinstance(opened, BaseException):
            error = opened
    if error is None:
        error = RemoteError(failure.type_name, failure.message, failure.traceback)
    error.__cause__ = RemoteTraceback(failure.traceback)
    # Exceptions with __slots__ refuse the attribute; the cause still carries the text.
    with contextlib.suppress(AttributeError):
        error.remote_traceback = failure.traceback  # type: ignore[attr-defined]
    return error


class NodeClient:
    """Connection to one node agent: submit tasks, receive results, logs and samples."""

    def __init__(
        self,
        node: int,
        instance: Instance,
        transport: NodeTransport,
        endpoint: AgentEndpoint,
        emit: Callable[[SkywardEvent], None],
    ) -> None:
        self.node = node
        self.instance = instance
        self.transport = transport
        self.endpoint = endpoint
        self._emit = emit
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._lost: BaseException | None = None
        self._writer: wire.FrameWriter | None = None
        self._stream: Any = None

    # -- life -------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection, check the agent's greeting, start reading."""
        stream = self.transport.open_stream(self.endpoint)
        reader = wire.FrameReader(stream)
        hello = reader.read()
        if not isinstance(hello, messages.Hello):
            raise ConnectionError(f"node {self.node}: unexpected greeting {hello!r}")
        client_python = f"{sys.version_info.major}.{sys.version_info.minor}"
        if hello.python != client_python:
            stream.close()
            raise ConnectionError(
                f"node {self.node} runs Python {hello.python}, the client {client_python}"
            )
        self._stream = stream
        self._writer = wire.FrameWriter(stream)
        threading.Thread(
            target=self._read_loop, args=(reader,), daemon=True, name=f"skyward-node{self.node}"
        ).start()

    def close(self) -> None:
        """Ask the agent to stop and drop the connection. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.send(messages.Shutdown())
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
        self._fail_all(WorkerLostError(self.node, "the pool was shut down"))

    @property
    def alive(self) -> bool:
        return self._lost is None and not self._closing and self._writer is not None

    @property
    def inflight(self) -> int:
        return len(self._pending)

    # -- work -------------------------------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        """Send one task. Pickling errors raise here, before anything is sent."""
        task_id = next(self._ids)
        parts = wire.encode(messages.Task(task_id, messages.Payload.of((fn, args, kwargs))))
        future: Future[Any] = Future()
        with self._lock:
            if self._lost is not None:
                raise WorkerLostError(self.node, f"connection lost earlier: {self._lost}")
            if self._closing:
                raise WorkerLostError(self.node, "the pool is shutting down")
            self._pending[task_id] = future
        assert self._writer is not None
        try:
            self._writer.write(parts)
        except OSError as error:
            self._on_lost(error)
        return future

    def heartbeat(self) -> None:
        if self.alive and self._writer is not None:
            try:
                self._writer.send(messages.Heartbeat())
            except OSError as error:
                self._on_lost(error)

    # -- inbound ----------------------------------------------------------------------

    def _read_loop(self, reader: wire.FrameReader) -> None:
        try:
            while True:
                self._dispatch(reader.read())
        except (EOFError, OSError) as error:
            self._on_lost(error)
        except Exception as error:  # a frame we cannot read: the stream is unusable
            _log.exception("node %d: bad frame", self.node)
            self._on_lost(error)

    def _dispatch(self, message: object) -> None:
        if isinstance(message, messages.Result):
            with self._lock:
                future = self._pending.pop(message.id, None)
            if future is not None:
                self._resolve(future, message)
        elif isinstance(message, messages.Log):
            line = LogLine(self.node, self.instance.id, message.line, message.timestamp)
            self._emit(attrs.evolve(line, stream="stderr") if message.stream == "stderr" else line)
        elif isinstance(message, messages.Sample):
            self._emit(
                Metrics(
                    instance_id=self.instance.id,
                    node=self.node,
                    cpu_percent=message.cpu_percent,
                    memory_percent=message.memory_percent,
                    memory_used_mb=message.memory_used_mb,
                    memory_total_mb=message.memory_total_mb,
                    gpu_utilization=message.gpu_utilization,
                    gpu_memory_used_mb=message.gpu_memory_used_mb,
                    gpu_memory_total_mb=message.gpu_memory_total_mb,
                    gpu_temperature=message.gpu_temperature,
                )
            )

    def _resolve(self, future: Future[Any], result: messages.Result) -> None:
        if result.failure is not None:
            future.set_exception(rebuild_exception(result.failure))
            return
        assert result.value is not None
        try:
            future.set_result(result.value.open())
        except Exception as error:
            future.set_exception(
                SerializationError(
                    f"node {self.node}: the result cannot be unpickled here: {error!r}"
                )
            )

    def _on_lost(self, error: BaseException) -> None:
        with self._lock:
            if self._lost is not None:
                return
            self._lost = error
        if not self._closing:
            self._emit(Error(f"lost connection to node {self.node}: {error}", self.instance.id))
        self._fail_all(WorkerLostError(self.node, f"the node stopped answering ({error})"))

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)


def wait_for_heartbeats(clients: list[NodeClient], interval: float, stop: threading.Event) -> None:
    """Heartbeat loop: one thread for the whole pool."""
    while not stop.wait(interval):
        started = time.monotonic()
        for client in clients:
            client.heartbeat()
        if time.monotonic() - started > interval:
            _log.warning("heartbeats took longer than their interval")
