"""A node's workers: the task board and the slots that take tasks from it.

Each worker index is a slot with one thread in the agent. With ``executor="thread"`` the
thread runs the task itself (today's model: the slots share the agent's GIL). With
``executor="process"`` the thread hands the task to the slot's own worker process over a
socket pair and waits for its result: one extra local hop, the payload's large buffers
forwarded out of band as they arrived (no copy into a new pickle). A worker process that
dies fails only the call it was running, says why, and is replaced at once; one that runs
past a call's timeout, or whose call the client cancelled, is killed (with everything it
started) and replaced. A call on a thread can be neither timed out nor cancelled: it runs on.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError

import attrs

from skyward import cluster, messages, wire
from skyward.agent.children import kill_tree
from skyward.agent.streams import Streams
from skyward.agent.tasks import run_task
from skyward.cluster import InstanceInfo
from skyward.errors import TaskTimeoutError, WorkerLostError
from skyward.exit_status import describe_exit, oom_kills

__all__ = ["EXECUTORS", "ProcessSlot", "Slot", "TaskBoard", "ThreadSlot", "cancelled"]

EXECUTORS = ("process", "thread")

_log = logging.getLogger("skyward.agent")

Complete = Callable[[messages.Result], None]


class TaskBoard:
    """Queued tasks: pinned to one worker (``@ pool``), or for whichever is free first."""

    def __init__(self, workers: int) -> None:
        self._shared: collections.deque[messages.Task] = collections.deque()
        self._pinned = [collections.deque[messages.Task]() for _ in range(workers)]
        self._cond = threading.Condition()
        self._running: dict[int, int] = {}
        """Task id → the worker that took it, until it is answered (see :meth:`cancel`)."""

    def put(self, task: messages.Task) -> None:
        with self._cond:
            if task.worker is None:
                self._shared.append(task)
            else:
                self._pinned[task.worker].append(task)
            self._cond.notify_all()

    def take(self, worker: int) -> messages.Task:
        with self._cond:
            while True:
                if self._pinned[worker]:
                    task = self._pinned[worker].popleft()
                elif self._shared:
                    task = self._shared.popleft()
                else:
                    self._cond.wait()
                    continue
                self._running[task.id] = worker
                return task

    def finished(self, task_id: int) -> None:
        with self._cond:
            self._running.pop(task_id, None)

    def cancel(self, task_id: int) -> messages.Task | int | None:
        """Task ``task_id`` is cancelled: if it is still queued, it is taken off the board
        and returned; if a worker took it, that worker's index; None when it is not here."""
        with self._cond:
            for queue in (self._shared, *self._pinned):
                for task in queue:
                    if task.id == task_id:
                        queue.remove(task)
                        return task
            return self._running.get(task_id)


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
            try:
                result = self.run(task, complete)
                if result is not None:
                    complete(result)
            finally:
                board.finished(task.id)

    def prepare(self) -> None:
        """Get ready before the first task (start the worker process)."""

    def release_refs(self, ids: tuple[str, ...]) -> None:
        """Refs released: a worker process drops its opened values of them."""

    def run(self, task: messages.Task, complete: Complete) -> messages.Result | None:
        raise NotImplementedError

    def cancel(self, task_id: int) -> None:
        """The client cancelled task ``task_id``, which this worker took: stop it if it can."""


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
            return run_task(task, gate, None if gate is None else gate.emit)
        finally:
            if timer is not None:
                timer.cancel()


class ProcessSlot(Slot):
    """Runs tasks in a worker process of its own, started once and reused."""

    def __init__(self, info: InstanceInfo, env: Mapping[str, str]) -> None:
        super().__init__(info, env)
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: wire.FrameReader | None = None
        self._writer: wire.FrameWriter | None = None
        self._oom_before: int | None = None
        # Cancellation comes from the agent's connection thread while this slot's thread
        # runs the call: the lock orders "kill the worker" against "start the next call".
        self._cancel_lock = threading.Lock()
        self._running: int | None = None
        self._cancelled: set[int] = set()
        """Tasks cancelled before they started here, or whose worker was killed for it."""
        self._killed = False
        """The worker process was killed for a cancel: replace it before the next call."""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def prepare(self) -> None:
        self._spawn()

    def release_refs(self, ids: tuple[str, ...]) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(OSError):  # a dead worker held nothing
                writer.send(messages.Release(ids))

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        self._oom_before = oom_kills()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "skyward.agent.worker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._sock = ours
        self._reader, self._writer = wire.FrameReader(ours), wire.FrameWriter(ours)
        self._writer.send(messages.WorkerInit(self.info))
        with contextlib.suppress(EOFError, OSError):
            self._reader.read()  # its first frame says it is ready for tasks

    def _replace(self) -> str | None:
        """Stop what is left of the worker, say why it ended, start a new one."""
        process = self._process
        cause: str | None = None
        with self._cancel_lock:
            self._killed = False  # whatever killed it, the new one is whole
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
        self._spawn()
        return cause

    def cancel(self, task_id: int) -> None:
        """Kill the worker process if it runs ``task_id`` (:meth:`run` then replaces it);
        if the call has not reached it yet, it never will."""
        with self._cancel_lock:
            if task_id in self._cancelled:
                return  # cancelled twice (a reconnect sends it again): killed already
            self._cancelled.add(task_id)
            process = self._process
            if self._running != task_id or process is None:
                return
            _log.info("%s: call %d cancelled; killing its worker process", self.where, task_id)
            kill_tree(process.pid)
            process.kill()
            self._killed = True

    def _take_cancelled(self, task_id: int) -> bool:
        with self._cancel_lock:
            if task_id in self._cancelled:
                self._cancelled.discard(task_id)
                return True
            return False

    def _replace_if_killed(self) -> bool:
        with self._cancel_lock:
            killed, self._killed = self._killed, False
        if killed:
            self._replace()
            _log.info("%s: started a new worker process after a cancel", self.where)
        return killed

    def run(self, task: messages.Task, complete: Complete) -> messages.Result | None:
        with self._cancel_lock:
            if task.id in self._cancelled:
                self._cancelled.discard(task.id)
                return cancelled(task.id)
            self._running = task.id
        try:
            answer = self._run(task)
        finally:
            with self._cancel_lock:
                self._running = None
        # A worker killed for the cancel cannot take the next call (even if its answer
        # got out just before it died).
        self._replace_if_killed()
        if self._take_cancelled(task.id):
            return cancelled(task.id)  # the client wants nothing from this call
        return answer

    def _run(self, task: messages.Task) -> messages.Result:
        assert self._writer is not None
        assert self._reader is not None
        assert self._sock is not None
        gate = self.streams.get(task.id) if task.window else None
        deadline = None if task.timeout is None else time.monotonic() + task.timeout
        try:
            self._writer.send(task)
            if gate is not None:
                gate.attach(self._writer.send)
            while True:
                # A stream's timeout bounds the whole call, waiting on its consumer included.
                left = None if deadline is None else max(1e-3, deadline - time.monotonic())
                self._sock.settimeout(left)
                answer = self._reader.read()
                if gate is not None and isinstance(answer, messages.Item):
                    gate.emit(answer)
                    continue
                break
            self._sock.settimeout(None)
        except TimeoutError:
            self._replace()
            return _failure(task.id, TaskTimeoutError(task.timeout or 0.0, self.where))
        except (EOFError, OSError):
            if self._replace_if_killed():
                return cancelled(task.id)
            cause = self._replace()
            _log.warning("%s: the worker process died (%s); started a new one", self.where, cause)
            lost = WorkerLostError(
                self.info.node,
                "the worker process died while running this call; a new one took its place "
                "and the call was not retried (it may have run partly)",
                cause,
                worker=self.info.worker,
            )
            return _failure(task.id, lost)
        finally:
            if gate is not None:
                gate.detach()
        if not isinstance(answer, messages.Result):
            return _failure(task.id, RuntimeError(f"worker sent {type(answer).__name__}"))
        return answer


def _failure(task_id: int, error: BaseException) -> messages.Result:
    return messages.Result(task_id, failure=messages.Failure.of(error))


def cancelled(task_id: int) -> messages.Result:
    """The answer to a cancelled call (the client dropped it; this only settles the books)."""
    return _failure(task_id, CancelledError("the client cancelled this call"))


def make_slots(base: InstanceInfo, executor: str, envs: Sequence[Mapping[str, str]]) -> list[Slot]:
    """One slot per worker, each with its own environment (``envs[i]``)."""
    kind = ProcessSlot if executor == "process" else ThreadSlot
    return [
        kind(attrs.evolve(base, worker=index, workers_per_node=len(envs)), env)
        for index, env in enumerate(envs)
    ]
