"""A node's workers: the task board and the slots that take tasks from it.

Each worker index is a slot with one thread in the agent. With ``executor="thread"`` the
thread runs the task itself (today's model: the slots share the agent's GIL). With
``executor="process"`` each slot has its own worker process on a socket pair: one extra
local hop, the payload's large buffers forwarded out of band as they arrived (no copy into
a new pickle). A small call for an idle worker is written to it by the connection thread
that read it (the slot's thread wakes while the worker already runs it); while calls are
short (under 10 ms), a worker also gets its next call before it finishes the current one
(two in flight), so it never waits for the agent between calls. A worker process that
dies fails only the call it was running (the calls queued behind it go back to the board,
never having started), says why, and is replaced at once; one that runs past a call's
timeout, or whose call the client cancelled, is killed (with everything it started) and
replaced. A call on a thread can be neither timed out nor cancelled: it runs on.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError

import attrs

from skyward import buffers, cluster, messages, wire
from skyward.agent import worker
from skyward.agent.children import kill_tree
from skyward.agent.running import RunningCall
from skyward.agent.streams import Streams, relay
from skyward.agent.tasks import run_task
from skyward.cluster import InstanceInfo
from skyward.errors import TaskTimeoutError, WorkerLostError
from skyward.exit_status import describe_exit, oom_kills

__all__ = ["EXECUTORS", "ProcessSlot", "Slot", "TaskBoard", "ThreadSlot", "cancelled"]

EXECUTORS = ("process", "thread")

_log = logging.getLogger("skyward.agent")

Complete = Callable[[messages.Result], None]


PIPELINE = 2
"""Calls in flight to one worker process while calls are short."""
_SHORT_CALL = 0.010
"""Seconds: a worker whose last call took longer gets no second call queued (a long call
must not hold a queued one hostage while another worker is free)."""
_CANCEL_GRACE = 0.05
"""Seconds a worker has to skip a queued call cancelled after it was written to it; past
that, it may be running the call, and is killed."""
_SMALL_PAYLOAD = 64 * 1024
"""Bytes: larger calls are written by the slot's own thread, to an idle worker only (so a
write never waits on a worker busy with another call)."""


def _small(task: messages.Task) -> bool:
    """A plain call small enough to be written to a busy worker or by any thread."""
    if task.window:
        return False
    payload = task.payload
    size = len(payload.data)
    for buffer in payload.buffers:
        size += memoryview(buffer).nbytes
    return size <= _SMALL_PAYLOAD


class TaskBoard:
    """Queued tasks: pinned to one worker (``@ pool``), or for whichever is free first.

    An idle process slot waits on its worker's socket, not here: :meth:`put` writes a
    small call straight to its worker (the answer is what the slot's thread wakes up to:
    no thread hand-off on the way), or queues the call and asks the worker for an echo,
    which wakes the slot's thread to look at the board.
    """

    def __init__(self, workers: int) -> None:
        self._shared: collections.deque[messages.Task] = collections.deque()
        self._pinned = [collections.deque[messages.Task]() for _ in range(workers)]
        self._cond = threading.Condition()
        self._idle: list[ProcessSlot | None] = [None] * workers
        self._busy = [False] * workers
        """Which process slots have calls in flight."""
        self._waiting = [False] * workers
        """Which thread slots wait in :meth:`take` with nothing to run."""
        self._claimed = [False] * workers
        """Which thread slots lend their worker index to a call run by another thread
        (:meth:`claim`): their own thread takes nothing meanwhile."""

    def put(self, task: messages.Task) -> None:
        with self._cond:
            slot = self._idle_for(task)
            if slot is not None:
                worker = slot.info.worker
                self._idle[worker] = None
                if _small(task):
                    self._busy[worker] = True
                    slot.sent.append(task)  # before the wake: its echo finds it there
                    slot.handed_at = time.monotonic()
                    if task.timeout is not None:
                        # The worker echoes this before it runs the call: the slot's
                        # thread wakes and keeps the call's clock.
                        slot.wake()
                    # Under the lock: the slot's thread may queue the next call behind
                    # this one, never before it. A small frame to an idle worker's
                    # roomy socket does not block.
                    slot.deliver(task)
                    return
                slot.wake()
            if task.worker is None:
                self._shared.append(task)
            else:
                self._pinned[task.worker].append(task)
            self._cond.notify_all()  # thread slots wait here

    def _idle_for(self, task: messages.Task) -> ProcessSlot | None:
        if task.worker is not None:
            return self._idle[task.worker]
        return next((slot for slot in self._idle if slot is not None), None)

    def take(self, worker: int) -> messages.Task:
        """A thread slot's next task (blocks)."""
        with self._cond:
            while True:
                if not self._claimed[worker]:
                    if self._pinned[worker]:
                        return self._pinned[worker].popleft()
                    if self._shared:
                        return self._shared.popleft()
                self._waiting[worker] = True
                try:
                    self._cond.wait()
                finally:
                    self._waiting[worker] = False

    def claim(self, task: messages.Task) -> int | None:
        """For a thread slot idle in :meth:`take` with nothing queued ahead of ``task``:
        mark it taken and return its index, so the caller runs ``task`` in its own thread
        as that worker (no hand-off to the slot's thread); ``None`` otherwise. The caller
        calls :meth:`unclaim` once the call is answered."""
        with self._cond:
            if self._shared or any(self._pinned):
                return None  # queues keep their order
            if task.worker is not None:
                candidates: Sequence[int] = (task.worker,)
            else:
                candidates = range(len(self._waiting))
            for worker in candidates:
                if self._waiting[worker] and not self._claimed[worker]:
                    self._claimed[worker] = True
                    return worker
            return None

    def unclaim(self, worker: int) -> None:
        """The call run as ``worker`` by another thread ended: its slot takes tasks again."""
        with self._cond:
            self._claimed[worker] = False
            if self._shared or self._pinned[worker]:
                self._cond.notify_all()  # queued meanwhile (a wake costs: only then)

    def take_or_idle(self, slot: ProcessSlot) -> messages.Task | None:
        """A process slot with nothing in flight: a queued task for it to write itself
        (now in ``slot.sent``), or ``None``: then either :meth:`put` handed it a call
        meanwhile (in ``slot.sent``), or the slot is idle until put hands it one or wakes
        it."""
        worker = slot.info.worker
        with self._cond:
            if slot.sent:  # handed a call meanwhile
                return None
            task = self._pop(worker, small_only=False)
            if task is None:
                self._idle[worker] = slot
                self._busy[worker] = False
                return None
            slot.sent.append(task)
            self._busy[worker] = True
            return task

    def is_idle(self, worker: int) -> bool:
        """Whether ``worker``'s process slot waits idle on its worker (for tests)."""
        return self._idle[worker] is not None

    def settled(self, slot: ProcessSlot) -> None:
        """The slot's last call in flight is answered (it may prefetch no longer)."""
        self._busy[slot.info.worker] = False

    def not_idle(self, slot: ProcessSlot) -> None:
        """The slot's worker is gone: nothing may be handed to it until it is replaced."""
        with self._cond:
            if self._idle[slot.info.worker] is slot:
                self._idle[slot.info.worker] = None

    def prefetch(self, slot: ProcessSlot) -> messages.Task | None:
        """The next queued small call for ``slot`` (which is busy), or ``None``."""
        with self._cond:
            task = self._pop(slot.info.worker, small_only=True)
            if task is not None:
                slot.sent.append(task)
            return task

    def _pop(self, worker: int, *, small_only: bool) -> messages.Task | None:
        queues = [self._pinned[worker], self._shared]
        if small_only and not all(b for i, b in enumerate(self._busy) if i != worker):
            # Another worker is free (or about to be): the shared calls are its, not a
            # second call queued behind one that may turn out long.
            queues.pop()
        for queue in queues:
            if queue:
                if small_only and not _small(queue[0]):
                    return None  # never overtake it: queues keep their order
                return queue.popleft()
        return None

    def cancel(self, task_id: int) -> messages.Task | None:
        """Take task ``task_id`` off the board if it is still queued here."""
        with self._cond:
            for queue in (self._shared, *self._pinned):
                for task in queue:
                    if task.id == task_id:
                        queue.remove(task)
                        return task
            return None

    def requeue(self, tasks: Sequence[messages.Task]) -> None:
        """Tasks a lost worker had queued but not started: first in line again."""
        with self._cond:
            for task in reversed(tasks):
                if task.worker is None:
                    self._shared.appendleft(task)
                else:
                    self._pinned[task.worker].appendleft(task)
            self._cond.notify_all()


class Slot:
    """One worker index: a thread that takes tasks for it and completes them."""

    def __init__(self, info: InstanceInfo, env: Mapping[str, str]) -> None:
        self.info = info
        self.env = dict(env)
        """Environment of this worker on top of the agent's (``CUDA_VISIBLE_DEVICES``)."""
        self.ready = threading.Event()
        """Set once the worker can take tasks."""
        self.streams = Streams(lambda message: None)
        """The agent's open streams (streamed tasks find their gate here)."""

    @property
    def where(self) -> str:
        return f"node {self.info.node}, worker {self.info.worker}"

    def start(self, board: TaskBoard, complete: Complete, streams: Streams | None = None) -> None:
        if streams is not None:
            self.streams = streams
        threading.Thread(
            target=self._serve, args=(board, complete), daemon=True, name=f"w{self.info.worker}"
        ).start()

    def _serve(self, board: TaskBoard, complete: Complete) -> None:
        try:
            self.prepare()
        finally:
            self.ready.set()
        while True:
            task = board.take(self.info.worker)
            result = self.run(task, complete)
            if result is not None:
                complete(result)

    def prepare(self) -> None:
        """Get ready before the first task (start the worker process)."""

    def release_refs(self, ids: tuple[str, ...]) -> None:
        """Refs released: a worker process drops its opened values of them."""

    def run(self, task: messages.Task, complete: Complete) -> messages.Result | None:
        raise NotImplementedError

    def cancel(self, task_id: int) -> None:
        """The client cancelled task ``task_id`` (not on the board): stop it if it runs here
        and can be stopped."""


class ThreadSlot(Slot):
    """Runs tasks in this thread. A call past its timeout is answered with
    ``TaskTimeoutError`` on time, but the thread cannot be stopped: it runs on, and the
    slot takes no new task until it returns. A cancelled call runs on the same way (its
    result is dropped by the client); a cancelled stream stops at its next item."""

    def prepare(self) -> None:
        # Only the worker index is per thread; the environment (and so the GPUs) is the
        # agent's, shared by every thread.
        cluster.set_worker(self.info.worker)

    def run(self, task: messages.Task, complete: Complete) -> messages.Result | None:
        timer: threading.Timer | None = None
        if task.timeout is not None:
            timeout = task.timeout
            timer = threading.Timer(
                timeout, lambda: complete(_failure(task.id, TaskTimeoutError(timeout, self.where)))
            )
            timer.daemon = True
            timer.start()
        gate = self.streams.get(task.id) if task.window else None
        try:
            return run_task(task, gate, None if gate is None else gate.emit, sender_thread=True)
        finally:
            if timer is not None:
                timer.cancel()

    def run_here(self, task: messages.Task, complete: Complete) -> None:
        """Run ``task`` in the calling thread as this worker, and answer it (the slot is
        claimed on the board meanwhile: see :meth:`TaskBoard.claim`)."""
        cluster.set_worker(self.info.worker)
        result = self.run(task, complete)
        if result is not None:
            complete(result)


def _retitle(args: list[str]) -> None:
    """Make a forked worker's ``/proc/<pid>/cmdline`` read like a spawned one's: what
    finds agents by their command line (``skyward down``, leftovers, tests) must not take
    a worker for one. The original arguments' memory is rewritten in place (the kernel
    reports ``arg_start..arg_end``, fields 48-49 of ``/proc/self/stat``), as
    ``setproctitle`` does; Python's own copy of argv is elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
    except (OSError, IndexError, ValueError):
        return
    size = end - start
    if size <= 1:
        return
    # One string, spaces between the arguments, then a NUL; the rest is not NUL, so the
    # kernel reads it the way setproctitle's users expect (up to the first NUL), and
    # psutil and ps split it at the spaces.
    data = " ".join(args).encode()[: size - 2] + b"\0"
    data += b" " * (size - len(data))
    import ctypes

    ctypes.memmove(start, data, size)


class _Forked:
    """A worker the agent forked (what ``ProcessSlot`` needs of a ``Popen``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                self.returncode = -signal.SIGKILL
                break
            if pid:
                # As Popen says it: the exit code, or minus the signal that ended it.
                self.returncode = os.waitstatus_to_exitcode(status)
                break
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.005)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class ProcessSlot(Slot):
    """Runs tasks in a worker process of its own, started once and reused."""

    def __init__(self, info: InstanceInfo, env: Mapping[str, str]) -> None:
        super().__init__(info, env)
        self._process: subprocess.Popen[bytes] | _Forked | None = None
        self._sock: socket.socket | None = None
        self._timeout: float | None = None
        self._reader: wire.FrameReader | None = None
        self._writer: wire.FrameWriter | None = None
        self._oom_before: int | None = None
        self.sent: collections.deque[messages.Task] = collections.deque()
        """Tasks written to the worker, oldest (the one running) first. Appended under the
        board's lock while the slot is idle; otherwise only the slot's thread touches it."""
        self.queued_behind = 0
        """Calls written to the worker while it ran another (for tests and benchmarks)."""
        self.calls_are_short = False
        """The last call took under 10 ms: the next may be queued behind another."""
        self.handed_at = 0.0
        """When :meth:`TaskBoard.put` last handed the idle worker a call."""
        self._stopped = False
        """The worker was stopped (lost or timed out) and awaits its replacement."""
        # Cancellation comes from the agent's connection thread while this slot's thread
        # awaits answers: the lock orders "kill the worker for its running call" against
        # "that call was answered, the next one runs".
        self._head_lock = threading.Lock()
        self._killed_for: int | None = None
        """The call whose cancellation killed the worker."""
        self._skip: set[int] = set()
        """Calls cancelled after they were written to the worker, behind another."""
        self._running: RunningCall | None = None
        """Which call the worker runs (it writes each call's id there as it starts it)."""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def prepare(self) -> None:
        if self._process is None:
            self._spawn()
        else:  # forked at the agent's start: say who it is, wait until it is ready
            self._greet()

    def fork(self, close: Sequence[int]) -> None:
        """Start the worker now as a fork of the agent, which must have no other thread
        yet: a fork costs milliseconds where a new interpreter costs its imports (most of
        a cold start). ``close``: the agent's descriptors the worker must not keep.
        Replacements of a lost worker are new interpreters (``_spawn``): by then the
        agent has threads, and a fork would inherit their locks."""
        ours, theirs = self._socketpair()
        self._oom_before = oom_kills()
        self._running = RunningCall()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                ours.close()
                for fd in close:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.close(devnull)
                os.environ.update(self.env)
                _retitle([sys.executable, "-m", "skyward.agent.worker", str(theirs.fileno())])
                worker.serve(theirs, self._running)
            finally:
                os._exit(0)
        theirs.close()
        self._process = _Forked(pid)
        self._attach(ours)

    def release_refs(self, ids: tuple[str, ...]) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(OSError):  # a dead worker held nothing
                writer.send(messages.Release(ids))

    def deliver(self, task: messages.Task) -> None:
        """Write ``task`` to the worker (any thread). A dead worker is noticed by the
        slot's thread, which reads its end."""
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(OSError):
                if any(isinstance(b, buffers.SharedBuffer) for b in task.payload.buffers):
                    # The buffers' pages are the worker's too: their descriptors go,
                    # not their bytes.
                    writer.write(wire.encode_local(task))
                else:
                    writer.send(task)

    @staticmethod
    def _socketpair() -> tuple[socket.socket, socket.socket]:
        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            # Room for a queued call and its neighbours' control frames: a write to a busy
            # worker never blocks.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        return ours, theirs

    def _attach(self, sock: socket.socket) -> None:
        self._sock, self._timeout = sock, None
        # Results stay in this process (they go on to the client): private memory.
        self._reader = wire.FrameReader(sock, allocate=buffers.private)
        self._writer = wire.FrameWriter(buffers.FdSocket(sock))

    def _greet(self) -> None:
        assert self._reader is not None
        assert self._writer is not None
        with contextlib.suppress(OSError):
            self._writer.send(messages.WorkerInit(self.info))
        with contextlib.suppress(EOFError, OSError):
            self._reader.read()  # its first frame says it is ready for tasks

    def _spawn(self) -> None:
        self._killed_for = None  # the new worker runs nothing yet
        ours, theirs = self._socketpair()
        self._oom_before = oom_kills()
        running = RunningCall.shareable()
        fds = [theirs.fileno()]
        if running is not None and running.fd is not None:
            fds.append(running.fd)  # the worker's second argument
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "skyward.agent.worker", *map(str, fds)],
                pass_fds=fds,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
            )
        finally:
            if running is not None:
                running.close_fd()
        self._running = running
        theirs.close()
        self._attach(ours)
        self._greet()

    def _replace(self) -> str | None:
        """Stop what is left of the worker, say why it ended, start a new one."""
        cause = self._stop()
        self._spawn()
        return cause

    def _stop(self) -> str | None:
        """Stop what is left of the worker (and everything it started); say why it ended."""
        process = self._process
        cause: str | None = None
        if process is not None:
            kill_tree(process.pid)
            try:  # a worker whose socket broke is usually dead already: read its status
                process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            cause = describe_exit(process.returncode, oom_before=self._oom_before)
        if self._sock is not None:
            self._sock.close()
        return cause

    def wake(self) -> None:
        """Ask the worker for an echo: the slot's thread, idle on the worker's socket,
        wakes up to it and looks at the board."""
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.send(messages.Heartbeat())

    def _serve(self, board: TaskBoard, complete: Complete) -> None:
        try:
            self.prepare()
        finally:
            self.ready.set()
        while True:
            if not self.sent:
                task = board.take_or_idle(self)
                if task is None:
                    if not self.sent:  # else put() handed it a call meanwhile
                        self._idle(board, complete)
                    continue
                self.deliver(task)
                del task  # a call's buffers live as long as the call, not until the next
            while self.sent:
                head = self.sent[0]
                if self.calls_are_short and not head.window:
                    while len(self.sent) < PIPELINE:
                        queued = board.prefetch(self)
                        if queued is None:
                            break
                        self.deliver(queued)
                        self.queued_behind += 1
                started = time.monotonic()
                result = self._await(head, board)
                self.calls_are_short = time.monotonic() - started < _SHORT_CALL
                if not self.sent:
                    board.settled(self)
                if result is not None:
                    complete(result)
                del head, result
                if self._stopped:  # the worker was lost: answered first, replaced now
                    self._stopped = False
                    self._spawn()

    def _idle(self, board: TaskBoard, complete: Complete) -> None:
        """Nothing in flight: wait on the worker's socket for a call's answer (one
        :meth:`TaskBoard.put` wrote to the worker) or the echo of a wake."""
        assert self._reader is not None
        try:
            self._set_timeout(None)
            answer = self._reader.read()
        except (EOFError, OSError):
            board.not_idle(self)
            if self.sent:  # handed a call as it died
                lost = self._lost(board, self.sent[0])
                if lost is not None:
                    complete(lost)
                self._stopped = False
                self._spawn()
            else:
                cause = self._replace()
                _log.warning(
                    "%s: the idle worker process died (%s); starting a new one", self.where, cause
                )
            return
        if isinstance(answer, messages.Result) and self.sent and answer.id == self.sent[0].id:
            with self._head_lock:
                self.sent.popleft()
            self.calls_are_short = time.monotonic() - self.handed_at < _SHORT_CALL
            board.settled(self)
            complete(answer)
        # Else the echo of a wake: the caller looks at the board.

    def _set_timeout(self, timeout: float | None) -> None:
        if timeout != self._timeout:
            assert self._sock is not None
            self._sock.settimeout(timeout)
            self._timeout = timeout

    def _await(self, task: messages.Task, board: TaskBoard) -> messages.Result | None:
        """The answer to ``task``, the oldest in flight (the worker runs them in order);
        ``None`` when it went back on the board (see :meth:`_lost`)."""
        assert self._reader is not None
        assert self._writer is not None
        gate = self.streams.get(task.id) if task.window else None
        deadline = None if task.timeout is None else time.monotonic() + task.timeout
        skipped = task.id in self._skip
        if skipped:
            # The worker was asked to skip it; if it does not answer at once, it had
            # started the call already: kill it.
            deadline = time.monotonic() + _CANCEL_GRACE
        try:
            if gate is not None:
                gate.attach(self._writer.send)
            while True:
                # A stream's timeout bounds the whole call, waiting on its consumer included.
                left = None if deadline is None else max(1e-3, deadline - time.monotonic())
                self._set_timeout(left)
                answer = self._reader.read()
                if gate is not None and isinstance(answer, messages.Item):
                    # With the items already read behind it, in one frame.
                    answer = relay(self._reader, gate.emit, answer)
                    if answer is None:
                        continue
                if isinstance(answer, messages.Heartbeat):
                    continue  # the echo of a wake that crossed a call
                break
        except TimeoutError:
            self._lose(board)
            if skipped:
                self._skip.discard(task.id)
                return cancelled(task.id)
            return _failure(task.id, TaskTimeoutError(task.timeout or 0.0, self.where))
        except (EOFError, OSError):
            return self._lost(board, task)
        finally:
            if gate is not None:
                gate.detach()
        with self._head_lock:
            self.sent.popleft()
        self._skip.discard(task.id)
        if not isinstance(answer, messages.Result) or answer.id != task.id:
            return _failure(task.id, RuntimeError(f"worker sent {answer!r}"))
        return answer

    def cancel(self, task_id: int) -> None:
        """Kill the worker process if it runs ``task_id`` (the slot's thread answers the
        call as cancelled and replaces the worker); a call queued behind the running one
        is skipped by the worker (or, if it had started it meanwhile, killed too)."""
        with self._head_lock:
            sent = list(self.sent)
            process = self._process
            if not sent or process is None or self._killed_for == task_id:
                return
            if sent[0].id == task_id:
                running = self._running
                if running is not None and not running.stop_if_running(process.pid, task_id):
                    return  # it ended as it was cancelled: the next call runs, untouched
                _log.info("%s: call %d cancelled; killing its worker process", self.where, task_id)
                self._killed_for = task_id
                kill_tree(process.pid)
                process.kill()
                return
        if any(task.id == task_id for task in sent[1:]):
            self._skip.add(task_id)
            writer = self._writer
            if writer is not None:
                with contextlib.suppress(OSError):
                    writer.send(messages.Cancel(task_id, force=True))

    def _lost(self, board: TaskBoard, task: messages.Task) -> messages.Result | None:
        """The worker died while running ``task``: its failure (the worker is replaced),
        or ``None`` when ``task`` never started and went back on the board."""
        killed_for, self._killed_for = self._killed_for, None
        self._skip.discard(task.id)
        if killed_for is not None and killed_for != task.id:
            # Killed while it ran the cancelled call (it said so, see RunningCall), which
            # it answered just before: this one was written to it but never started.
            self._lose(board, requeue_head=True)
            _log.info("%s: started a new worker process after a cancel", self.where)
            return None
        cause = self._lose(board)
        if killed_for == task.id:
            _log.info("%s: started a new worker process after a cancel", self.where)
            return cancelled(task.id)
        _log.warning("%s: the worker process died (%s); starting a new one", self.where, cause)
        lost = WorkerLostError(
            self.info.node,
            "the worker process died while running this call; a new one took its place "
            "and the call was not retried (it may have run partly)",
            cause,
            worker=self.info.worker,
        )
        return _failure(task.id, lost)

    def _lose(self, board: TaskBoard, *, requeue_head: bool = False) -> str | None:
        """The worker is gone (or being killed) while running ``sent[0]``: stop what is
        left of it, and put the calls queued behind it (never started) back on the board
        (``sent[0]`` too with ``requeue_head``: it never started either).
        The slot starts its replacement once the lost call is answered, so a timeout is
        answered on time rather than after a new interpreter's start."""
        queued = list(self.sent)[0 if requeue_head else 1 :]
        self.sent.clear()
        cause = self._stop()
        self._stopped = True
        board.requeue(queued)
        return cause


def _failure(task_id: int, error: BaseException) -> messages.Result:
    return messages.Result(task_id, failure=messages.Failure.of(error))


def cancelled(task_id: int) -> messages.Result:
    """The answer to a cancelled call (the client dropped it; this only settles the books)."""
    return _failure(task_id, CancelledError("the client cancelled this call"))


def make_slots(base: InstanceInfo, executor: str, envs: Sequence[Mapping[str, str]]) -> list[Slot]:
    """One slot per worker, each with its own environment (``envs[i]``)."""
    kind = ProcessSlot if executor == "process" else ThreadSlot
    # Calls received by this agent are for worker processes: their large buffers go to
    # memory files the workers can map (thread workers use them where they are).
    buffers.share_large_buffers(kind is ProcessSlot)
    return [
        kind(attrs.evolve(base, worker=index, workers_per_node=len(envs)), env)
        for index, env in enumerate(envs)
    ]
