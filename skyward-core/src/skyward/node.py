"""The client's side of one node: a connection to its agent, and the tasks in flight on it.

When the connection drops, the client reconnects (through the transport, which may
re-establish SSH) for as long as the agent's watchdog would wait. The agent's greeting
says which tasks it has; the others never arrived and are sent again, so a task is
neither lost nor run twice. If the agent itself died, it is restarted and the tasks it
was running fail with :class:`~skyward.errors.WorkerLostError`.

Cancelling a task's future (``future.cancel()``) sends :class:`~skyward.messages.Cancel`:
the agent drops the task if it is queued and kills the worker process running it; a result
that arrives anyway is dropped (and acknowledged, so the agent forgets it too).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from typing import Any

import attrs

from skyward import handshake, messages, wire
from skyward.errors import RemoteError, RemoteTraceback, SerializationError, WorkerLostError
from skyward.events import Error, GpuMetrics, LogLine, Metrics, SkywardEvent
from skyward.provider import AgentConfig, AgentEndpoint, Instance, NodeTransport

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


CALLER_READS = True
"""A caller waiting for a lone call's answer reads it from the connection itself (see
:meth:`NodeClient.read_until`); False: the reader thread always does (for benchmarks)."""

_IDLE_LOOK = 0.05
"""Seconds the reader thread waits while a caller reads before it looks again."""

STREAM_WINDOW = 64
"""Items a node may send ahead of what a stream's consumer took (see :class:`_Stream`)."""

_END = object()


@attrs.define
class _Stream:
    """The client's side of a streamed call: items received, not yet consumed.

    The node sends at most ``window`` items beyond the last :class:`~messages.Credit`,
    and a credit goes out each time the consumer takes half a window, so this queue never
    holds more than ``window`` items however slowly they are consumed. Each entry is the
    items of one :class:`~messages.Item` frame (several when they queued up on the node).
    """

    window: int
    queue: queue.SimpleQueue[Any] = attrs.field(factory=queue.SimpleQueue)
    received: int = 0
    """Sequence number of the next item expected (replays below it are dropped)."""
    granted: int = 0
    """The last credit sent (items consumed then)."""
    cancelled: bool = False

    def deliver(self, item: messages.Item) -> None:
        """Queue the frame's items (one entry for all of them) not already here."""
        known = self.received - item.seq
        if known >= 1 + len(item.more):
            return  # replayed after a reconnect: already here
        values = item.values
        self.received = item.end
        self.queue.put(values[known:] if known > 0 else values)


@attrs.define
class _Pending:
    future: Future[Any]
    parts: wire.Parts
    stream: _Stream | None = None
    refs: tuple[Any, ...] = ()
    """The :class:`~skyward.refs.Ref` values the task names: on the node before it."""


class NodeClient:
    """Connection to one node agent: submit tasks, receive results, logs and samples."""

    def __init__(
        self,
        node: int,
        instance: Instance,
        transport: NodeTransport,
        endpoint: AgentEndpoint,
        emit: Callable[[SkywardEvent], None],
        config: AgentConfig,
        *,
        reconnect: bool = True,
    ) -> None:
        self.node = node
        self.instance = instance
        self.transport = transport
        self.endpoint = endpoint
        self.config = config
        self.reconnect = reconnect
        self._emit = emit
        self._ids = itertools.count(1)
        self._tasks = 0
        self._pending: dict[int, _Pending] = {}
        self._acks: list[int] = []
        self._cancelled: set[int] = set()
        """Tasks cancelled here whose answer has not arrived (Cancel is sent again after a
        reconnect while the agent still has them)."""
        self._lock = threading.Lock()
        self._closing = False
        self._dead: BaseException | None = None
        self._writer: wire.FrameWriter | None = None
        self._stream: Any = None
        self._agent_pid: int | None = None
        self._generation = 0
        self.workers = 1
        """Workers on the node, as its agent said in its greeting."""
        self._reading_done = threading.Event()
        # Who reads the connection (a socket): the reader thread, or a caller waiting for
        # its own answer (see read_until); never both.
        self._role = threading.Condition(threading.Lock())
        self._caller_reading = False
        self._thread_reading = False
        self._shared: tuple[wire.FrameReader, Any, int] | None = None
        # sky.put values the agent holds (by id). Held while a Put is written, so a task
        # that names a ref never overtakes the Put that carries it.
        self._refs: set[str] = set()
        self._refs_lock = threading.RLock()
        self._bytes_before = 0
        self._restart_cause: str | None = None
        # A restarted agent gets what is left of this one's lifetime, not a fresh one.
        self._lifetime_end = None if config.lifetime is None else time.monotonic() + config.lifetime

    # -- life -------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection, check the agent's greeting, start reading."""
        self._attach(self.transport.open_stream(self.endpoint), first=True)

    def _attach(self, stream: Any, *, first: bool) -> None:
        try:
            # Prove we hold the pool's key, and make the agent prove it: nothing is
            # unpickled from a peer that cannot.
            handshake.prove(stream, self.config.key)
        except BaseException:
            stream.close()
            raise
        reader = wire.FrameReader(stream)
        hello = reader.read()
        if not isinstance(hello, messages.Hello):
            stream.close()
            raise ConnectionError(f"node {self.node}: unexpected greeting {hello!r}")
        client_python = f"{sys.version_info.major}.{sys.version_info.minor}"
        if hello.python != client_python:
            stream.close()
            raise ConnectionError(
                f"node {self.node} runs Python {hello.python}, the client {client_python}"
            )
        writer = wire.FrameWriter(stream)
        self.workers = hello.workers
        with self._lock:
            restarted = not first and hello.pid != self._agent_pid
            self._agent_pid = hello.pid
            if self._writer is not None:
                self._bytes_before += self._writer.written
            self._stream, self._writer = stream, writer
            self._generation += 1
            generation = self._generation
            self._reading_done.clear()
            if restarted:
                lost, self._pending = self._pending, {}
                resend: list[_Pending] = []
                self._cancelled.clear()
                cancel_again: list[int] = []
            else:
                known = set(hello.inflight) | set(hello.completed)
                lost = {}
                resend = [p for i, p in self._pending.items() if i not in known]
                # A cancelled task the agent never got is gone; a finished one's result
                # comes again and is dropped; one still running is cancelled again.
                self._cancelled &= known
                cancel_again = sorted(self._cancelled & set(hello.inflight))
        if lost:
            cause = self._restart_cause or self._exit_cause()
            for pending in lost.values():
                _settle(
                    pending.future.set_exception,
                    WorkerLostError(
                        self.node,
                        "the node agent stopped while running this task; it was restarted "
                        "and the task was not retried (it may have run partly)",
                        cause,
                    ),
                )
        with self._refs_lock:
            # What the agent really holds: a Put lost with the old connection is sent again.
            self._refs = set() if restarted else set(hello.refs)
        # A socket, or a stream that can be polled like one (an SSH channel): a caller may
        # read it (read_until). Anything else keeps a thread that always reads.
        shared = callable(getattr(stream, "fileno", None)) and callable(
            getattr(stream, "shutdown", None)
        )
        self._shared = (reader, stream, generation) if shared else None
        threading.Thread(
            target=self._read_loop,
            args=(reader, generation, stream if shared else None),
            daemon=True,
            name=f"skyward-node{self.node}",
        ).start()
        for pending in resend:  # never reached the agent: safe to send again
            with self._refs_lock:
                self._send_refs(pending.refs, writer)
                writer.write(pending.parts)
        with self._lock:
            streams = [(i, p.stream) for i, p in self._pending.items() if p.stream is not None]
        for task_id, open_stream in streams:  # credit and cancellation may have been lost
            if open_stream.granted:
                writer.send(messages.Credit(task_id, open_stream.granted))
            if open_stream.cancelled:
                writer.send(messages.Cancel(task_id))
        for task_id in cancel_again:
            writer.send(messages.Cancel(task_id, force=True))

    def close(self, grace: float = 5.0) -> None:
        """Ask the agent to stop and drop the connection. Idempotent.

        The agent flushes what its tasks printed and then closes its side; waiting up to
        ``grace`` seconds for that means no output line is lost at close.
        """
        if self._closing:
            return
        self._closing = True
        if self._writer is not None:
            try:
                self._writer.send(messages.Shutdown())
            except (OSError, EOFError):
                pass
            else:
                self._reading_done.wait(grace)
        if self._stream is not None:
            with contextlib.suppress(OSError, EOFError):
                self._stream.close()
        self._fail_all(WorkerLostError(self.node, "the pool was shut down"))

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called (read fresh: another thread sets it)."""
        return self._closing

    @property
    def alive(self) -> bool:
        """False once the node is given up on (or closed); reconnecting counts as alive."""
        return self._dead is None and not self._closing

    @property
    def inflight(self) -> int:
        return len(self._pending)

    # -- work -------------------------------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        """Send one task. Pickling errors raise here, before anything is sent."""
        return self.submit_payload(messages.Payload.call(fn, args, kwargs))

    def submit_payload(
        self,
        payload: messages.Payload,
        *,
        worker: int | None = None,
        timeout: float | None = None,
        future: Future[Any] | None = None,
    ) -> Future[Any]:
        """Send one task already pickled as ``(fn, args, kwargs)``: to ``worker`` of this
        node, or whichever is free first; ``timeout`` bounds how long it may run. The
        answer settles ``future`` when given (a new one otherwise), which is returned."""
        _, settled = self._submit(payload, worker, timeout, None, future)
        return settled

    def submit_stream(
        self, payload: messages.Payload, *, window: int = STREAM_WINDOW, timeout: float | None
    ) -> tuple[Future[Any], Iterator[Any]]:
        """Send a call of a generator function; its items come through the iterator as the
        node yields them, at most ``window`` ahead of the consumer. The future settles when
        the stream ends (the generator returned, raised, or the iterator was closed)."""
        if window < 1:
            raise ValueError(f"a stream's window must be at least 1, not {window}")
        stream = _Stream(window)
        task_id, future = self._submit(payload, None, timeout, stream)
        future.add_done_callback(lambda _: stream.queue.put(_END))
        return future, self._iterate(task_id, stream, future)

    def _iterate(self, task_id: int, stream: _Stream, future: Future[Any]) -> Iterator[Any]:
        consumed = 0
        ended = False
        # Items of the frame taken from the queue last, not yet consumed.
        arrived: collections.deque[messages.Payload] = collections.deque()
        try:
            while True:
                if not arrived:
                    if consumed > stream.granted and stream.queue.empty():
                        # About to wait: the node may be held back by bytes, not by items.
                        stream.granted = consumed
                        self._send_quietly(messages.Credit(task_id, consumed))
                    got = stream.queue.get()
                    if got is _END:
                        ended = True
                        future.result()  # the generator's exception, where it was raised
                        return
                    arrived.extend(got)
                payload = arrived.popleft()
                try:
                    value = payload.open()
                except Exception as error:
                    raise SerializationError(
                        f"node {self.node}: item {consumed} of the stream cannot be "
                        f"unpickled here: {error!r}"
                    ) from error
                consumed += 1
                if consumed - stream.granted >= max(1, stream.window // 2):
                    stream.granted = consumed
                    self._send_quietly(messages.Credit(task_id, consumed))
                yield value
        except KeyboardInterrupt:
            # Interrupted while waiting for an item: stop the call where it stands (a
            # generator busy between items may not reach its next one for a long time).
            future.cancel()
            raise
        finally:
            if not ended and not future.done():
                # Closed early (break, close(), garbage collected): stop the generator
                # at its next item, so its own cleanup runs.
                stream.cancelled = True
                self._send_quietly(messages.Cancel(task_id))

    def _send_quietly(self, message: object) -> None:
        """A control frame; while reconnecting it is lost and ``_attach`` sends it again."""
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(OSError, EOFError):
                writer.send(message)

    def _submit(
        self,
        payload: messages.Payload,
        worker: int | None,
        timeout: float | None,
        stream: _Stream | None,
        future: Future[Any] | None = None,
    ) -> tuple[int, Future[Any]]:
        task_id = next(self._ids)
        self._tasks = task_id
        window = 0 if stream is None else stream.window
        task = messages.Task(task_id, payload, worker=worker, timeout=timeout, window=window)
        parts = wire.encode(task)
        if future is None:
            future = Future()
        future.add_done_callback(lambda done: self._on_done(task_id, done))
        with self._lock:
            if self._dead is not None:
                raise WorkerLostError(self.node, f"the node is unreachable: {self._dead}")
            if self._closing:
                raise WorkerLostError(self.node, "the pool is shutting down")
            self._pending[task_id] = _Pending(future, parts, stream, payload.refs)
            writer = self._writer
        if writer is not None:
            # While reconnecting the write fails; the greeting will show the task missing
            # and it is sent then (its refs first).
            # Inside wire.holding() (a pool sending a batch) the call waits to go out
            # with the next ones; a Put is never held, and sends what is held first.
            with contextlib.suppress(OSError, EOFError), self._refs_lock:
                self._send_refs(payload.refs, writer)
                writer.write(parts, hold=True)
        return task_id, future

    def _on_done(self, task_id: int, future: Future[Any]) -> None:
        """``future.cancel()`` (the caller gave up on the task): tell the agent to stop it."""
        if not future.cancelled():
            return
        with self._lock:
            pending = self._pending.pop(task_id, None)
            if pending is None:
                return  # answered already
            self._cancelled.add(task_id)
        if pending.stream is not None:
            pending.stream.cancelled = True
        self._send_quietly(messages.Cancel(task_id, force=True))

    def _send_refs(self, refs: tuple[Any, ...], writer: wire.FrameWriter) -> None:
        """Put each ref the node lacks (the caller holds ``_refs_lock``)."""
        for ref in refs:
            if ref.id in self._refs:
                continue
            parts = wire.encode(messages.Put(ref.id, messages.Payload(*ref.pickled())))
            writer.write(parts)
            self._refs.add(ref.id)
            ref.held_by(self)

    def release_refs(self, ids: tuple[str, ...]) -> None:
        """``ref.release()``: the agent (and its workers) forget these refs."""
        with self._refs_lock:
            held = tuple(i for i in ids if i in self._refs)
            self._refs.difference_update(held)
        if held:
            self._send_quietly(messages.Release(held))

    @property
    def tasks_sent(self) -> int:
        """Tasks submitted to this node so far (a chunk of calls is one; for tests and
        benches)."""
        return self._tasks

    @property
    def bytes_sent(self) -> int:
        """Bytes written to the node's connections (every frame; for tests and benches)."""
        writer = self._writer
        return self._bytes_before + (0 if writer is None else writer.written)

    def heartbeat(self) -> None:
        """Tell the agent we are here, acknowledging results received since last time."""
        writer = self._writer
        if not self.alive or writer is None:
            return
        with self._lock:
            acks, self._acks = self._acks, []
        message: object = messages.Ack(tuple(acks)) if acks else messages.Heartbeat()
        try:
            writer.send(message)
        except (OSError, EOFError):
            with self._lock:
                self._acks = acks + self._acks

    # -- inbound ----------------------------------------------------------------------

    def _read_loop(self, reader: wire.FrameReader, generation: int, polled: Any) -> None:
        """The connection's reader thread, until the connection is lost; ``polled``: the
        stream when callers may read it too (else ``None``)."""
        try:
            if polled is None:
                while True:
                    self._dispatch(reader.read())
            else:
                self._read_beside_callers(reader, polled)
        except (EOFError, OSError) as error:
            self._on_lost(error, generation)
        except Exception as error:  # a frame we cannot read: the stream is unusable
            _log.exception("node %d: bad frame", self.node)
            self._on_lost(error, generation)
        finally:
            if generation == self._generation:
                self._reading_done.set()

    def _read_beside_callers(self, reader: wire.FrameReader, stream: Any) -> None:
        """Read a pollable connection only while no caller does: wait for it to be
        readable before taking it, so a caller that arrives meanwhile reads its own answer
        (see :meth:`read_until`)."""
        while True:
            with self._role:
                while self._caller_reading:
                    # A caller that leaves frames for others wakes us; otherwise we look
                    # again soon (a log line may wait that long), which spares a wake-up
                    # per call of a caller making one call after another.
                    self._role.wait(_IDLE_LOOK)
            if not reader.buffered():
                try:
                    select.select([stream], [], [])
                except ValueError:  # closed under us
                    raise EOFError("connection closed") from None
            if not self._take_reading():
                continue  # a caller reads what arrived
            try:
                # What woke us may have been read by a caller since: read only what is
                # there, so a caller is never kept waiting behind an empty read.
                while reader.ready():
                    self._dispatch(reader.read())
            finally:
                with self._role:
                    self._thread_reading = False
                    self._role.notify_all()

    def _take_reading(self) -> bool:
        """The reader thread takes the connection, unless a caller took it meanwhile."""
        with self._role:
            if self._caller_reading:
                return False
            self._thread_reading = True
            return True

    def read_until(self, future: Future[Any]) -> None:
        """Wait for ``future`` by reading the connection on this thread, when nobody else
        reads it: the answer wakes this thread, not a reader thread that would then wake
        it (one thread hand-off fewer on a lone call's way back). Frames for other calls,
        logs and samples read meanwhile are handled as the reader thread would.

        Returns early (the caller then waits on the future as usual) when another thread
        is reading or the connection is not a plain socket."""
        shared = self._shared
        if shared is None or not CALLER_READS:
            return
        reader, stream, generation = shared
        with self._role:
            if self._caller_reading or self._thread_reading or generation != self._generation:
                return
            self._caller_reading = True
        try:
            while not future.done():
                self._dispatch(reader.read())
        except (EOFError, OSError):
            self._break(stream)  # the reader thread sees it too and reconnects
        except BaseException:
            # Interrupted inside a frame (Ctrl-C): where the stream stands is unknown.
            # Drop the connection; the reconnect resends what the agent lacks.
            self._break(stream)
            raise
        finally:
            with self._role:
                self._caller_reading = False
                if self._pending or reader.buffered():
                    self._role.notify_all()

    @staticmethod
    def _break(stream: Any) -> None:
        # Shut down, not closed: another thread may be in select() on its descriptor.
        with contextlib.suppress(OSError, EOFError):
            stream.shutdown(socket.SHUT_RDWR)

    def _dispatch(self, message: object) -> None:
        if isinstance(message, messages.Result):
            with self._lock:
                pending = self._pending.pop(message.id, None)
                self._acks.append(message.id)  # a cancelled task's too: the agent forgets it
                self._cancelled.discard(message.id)
            if pending is not None and not pending.future.done():
                self._resolve(pending.future, message)
        elif isinstance(message, messages.Item):
            with self._lock:
                pending = self._pending.get(message.id)
            if pending is not None and pending.stream is not None:
                pending.stream.deliver(message)
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
                    gpus=tuple(
                        GpuMetrics(
                            index=g.index,
                            utilization=g.utilization,
                            memory_used_mb=g.memory_used_mb,
                            memory_total_mb=g.memory_total_mb,
                            temperature=g.temperature,
                        )
                        for g in message.gpus
                    ),
                )
            )

    def _resolve(self, future: Future[Any], result: messages.Result) -> None:
        if result.failure is not None:
            _settle(future.set_exception, rebuild_exception(result.failure))
            return
        assert result.value is not None
        try:
            value = result.value.open()
        except Exception as error:
            _settle(
                future.set_exception,
                SerializationError(
                    f"node {self.node}: the result cannot be unpickled here: {error!r}"
                ),
            )
            return
        _settle(future.set_result, value)

    # -- losing and finding the agent -------------------------------------------------

    def _on_lost(self, error: BaseException, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._closing or self._dead is not None:
                return
            self._writer = None
        if not self.reconnect:
            self._give_up(error)
            return
        self._emit(Error(f"lost connection to node {self.node} ({error}); reconnecting"))
        threading.Thread(
            target=self._reconnect, args=(error,), daemon=True, name=f"skyward-rc{self.node}"
        ).start()

    def _reconnect(self, cause: BaseException) -> None:
        # Past the agent's watchdog there is nothing left to reconnect to.
        deadline = time.monotonic() + self.config.heartbeat_timeout
        delay = 0.1
        while not self._closing and time.monotonic() < deadline:
            try:
                stream = self.transport.open_stream(self.endpoint)
            except ConnectionRefusedError:
                try:  # the agent is gone but the machine answers: start a new one
                    self._restart_cause = self._exit_cause()
                    if self._lifetime_end is not None:
                        left = max(1.0, self._lifetime_end - time.monotonic())
                        self.config = attrs.evolve(self.config, lifetime=left)
                    self.endpoint = self.transport.start_agent(self.config)
                    if self.closing:  # the pool closed while the new agent started
                        self.transport.close()
                        return
                    stream = self.transport.open_stream(self.endpoint)
                except Exception as error:
                    self._give_up(error)
                    return
            except Exception as error:
                cause = error
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                self._attach(stream, first=False)
            except Exception as error:
                cause = error
                continue
            _log.info("reconnected to node %d", self.node)
            return
        self._give_up(cause)

    def _give_up(self, error: BaseException) -> None:
        with self._lock:
            if self._dead is not None:
                return
            self._dead = error
        if not self._closing:
            self._emit(Error(f"node {self.node} is unreachable: {error}", self.instance.id))
        # Only what is already known: asking the transport could wait on a dead link.
        cause = self._restart_cause or f"connection: {error}"
        self._fail_all(WorkerLostError(self.node, "the node stopped answering", cause))

    def _exit_cause(self) -> str | None:
        """Why the agent stopped, when the transport can tell."""
        explain = getattr(self.transport, "agent_exit_cause", None)
        if explain is None:
            return None
        try:
            cause: str | None = explain()
        except Exception:
            return None
        return cause

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for item in pending.values():
            _settle(item.future.set_exception, error)


def _settle(setter: Callable[[Any], None], outcome: Any) -> None:
    """Set a future's outcome unless it was cancelled meanwhile (by another thread): the
    cancelled call's answer is dropped."""
    with contextlib.suppress(InvalidStateError):
        setter(outcome)


def send_heartbeats(clients: list[NodeClient], interval: float, stop: threading.Event) -> None:
    """Heartbeat loop: one thread for the whole pool."""
    while not stop.wait(interval):
        for client in clients:
            client.heartbeat()
