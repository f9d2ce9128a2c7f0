"""A node's workers: the task board and the slots that take tasks from it.

Each worker index is a slot with one thread in the agent. With ``executor="thread"`` the
thread runs the task itself (today's model: the slots share the agent's GIL). With
``executor="process"`` the thread hands the task to the slot's own worker process over a
socket pair and waits for its result: one extra local hop, the payload's large buffers
forwarded out of band as they arrived (no copy into a new pickle). A worker process that
dies fails only the call it was running, says why, and is replaced at once; one that runs
past a call's timeout is killed (with everything it started) and replaced.
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

import attrs

from skyward import cluster, messages, wire
from skyward.agent.children import kill_tree
from skyward.agent.streams import Streams
from skyward.agent.tasks import run_task
from skyward.cluster import InstanceInfo
from skyward.errors import TaskTimeoutError, WorkerLostError
from skyward.exit_status import describe_exit, oom_kills

__all__ = ["EXECUTORS", "ProcessSlot", "Slot", "TaskBoard", "ThreadSlot"]

EXECUTORS = ("process", "thread")

_log = logging.getLogger("skyward.agent")

Complete = Callable[[messages.Result], None]


class TaskBoard:
    """Queued tasks: pinned to one worker (``@ pool``), or for whichever is free first."""

    def __init__(self, workers: int) -> None:
        self._shared: collections.deque[messages.Task] = collections.deque()
        self._pinned = [collections.deque[messages.Task]() for _ in range(workers)]
        self._cond = threading.Condition()

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
                    return self._pinned[worker].popleft()
                if self._shared:
                    return self._shared.popleft()
                self._cond.wait()


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


class ThreadSlot(Slot):
    """Runs tasks in this thread. A call past its timeout is answered with
    ``TaskTimeoutError`` on time, but the thread cannot be stopped: it runs on, and the
    slot takes no new task until it returns."""

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

    def run(self, task: messages.Task, complete: Complete) -> messages.Result | None:
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


def make_slots(base: InstanceInfo, executor: str, envs: Sequence[Mapping[str, str]]) -> list[Slot]:
    """One slot per worker, each with its own environment (``envs[i]``)."""
    kind = ProcessSlot if executor == "process" else ThreadSlot
    return [
        kind(attrs.evolve(base, worker=index, workers_per_node=len(envs)), env)
        for index, env in enumerate(envs)
    ]
