"""A process slot against its real worker process: calls queued behind the running one,
what happens to them when the worker dies or times out, and the order of answers."""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

from skyward import messages, refs
from skyward.agent.workers import PIPELINE, ProcessSlot, TaskBoard, make_slots
from skyward.cluster import InstanceInfo
from skyward.errors import TaskTimeoutError, WorkerLostError
from skyward.node import rebuild_exception

Answers = queue.SimpleQueue[messages.Result]


@pytest.fixture
def slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ProcessSlot, TaskBoard, Answers]]:
    """One process slot with its worker, on a board; results land in the queue."""
    monkeypatch.setenv(refs.REFS_DIR_ENV, str(tmp_path / "refs"))
    info = InstanceInfo(node=0, total_nodes=1)
    (made,) = make_slots(info, "process", [{}])
    assert isinstance(made, ProcessSlot)
    board = TaskBoard(1)
    answers: Answers = queue.SimpleQueue()
    made.start(board, answers.put)
    assert made.ready.wait(60), "the worker process did not start"
    try:
        yield made, board, answers
    finally:
        # A worker being replaced after a test's timeout: let the replacement come up, so
        # the one killed here is the last.
        deadline = time.monotonic() + 30
        while not board.is_idle(0) and time.monotonic() < deadline:
            time.sleep(0.01)
        pid = made.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def _task(
    task_id: int, fn: Callable[..., Any], *args: Any, timeout: float | None = None
) -> messages.Task:
    # By value: no function blob to put on the node first.
    return messages.Task(task_id, messages.Payload.of((fn, args, {})), timeout=timeout)


def _collect(answers: Answers, n: int) -> dict[int, messages.Result]:
    got = {}
    for _ in range(n):
        result = answers.get(timeout=60)
        got[result.id] = result
    return got


def _value(result: messages.Result) -> Any:
    if result.failure is not None:
        raise rebuild_exception(result.failure)
    assert result.value is not None
    return result.value.open()


def _warm(slot: ProcessSlot, board: TaskBoard, answers: Answers) -> None:
    """Short calls, until the slot counts calls as short and queues a second one."""
    for i in range(200):
        board.put(_task(10_000 + i, abs, -i))
        _collect(answers, 1)
        if slot.calls_are_short:
            return
    raise AssertionError("no call took under 10 ms")


def _pid() -> int:
    return os.getpid()


def _die() -> None:
    os._exit(9)


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_many_short_calls_answer_in_order_with_a_call_queued_behind(
    slot: tuple[ProcessSlot, TaskBoard, Answers],
) -> None:
    made, board, answers = slot
    _warm(made, board, answers)
    for i in range(300):
        board.put(_task(i, abs, -i))
    order = [answers.get(timeout=60).id for _ in range(300)]
    assert order == list(range(300)), "one worker answers in the order calls arrived"
    assert made.queued_behind > 0, "calls were queued behind a running one"
    assert len(made.sent) == 0
    assert PIPELINE == 2


def test_a_dying_worker_fails_its_call_and_runs_the_queued_ones_on_its_replacement(
    slot: tuple[ProcessSlot, TaskBoard, Answers],
) -> None:
    made, board, answers = slot
    _warm(made, board, answers)
    first_pid = made.pid
    before = made.queued_behind
    with board._cond:  # the slot sees all five at once: deterministic queueing
        board.put(_task(1, _die))
        for i in range(2, 6):
            board.put(_task(i, _pid))
    got = _collect(answers, 5)
    with pytest.raises(WorkerLostError) as lost:
        _value(got[1])
    assert lost.value.worker == 0
    pids = {_value(got[i]) for i in range(2, 6)}
    assert pids == {made.pid}, "the calls queued behind the dead one ran, once, on its successor"
    assert made.pid != first_pid
    assert made.queued_behind > before, "a call was queued behind the one that died"


def test_a_timed_out_call_does_not_take_the_calls_queued_behind_it(
    slot: tuple[ProcessSlot, TaskBoard, Answers],
) -> None:
    made, board, answers = slot
    _warm(made, board, answers)
    before = made.queued_behind
    with board._cond:
        board.put(_task(1, _sleep, 30.0, timeout=0.5))
        for i in range(2, 5):
            board.put(_task(i, abs, -i))
    started = time.monotonic()
    got = _collect(answers, 4)
    assert time.monotonic() - started < 20
    with pytest.raises(TaskTimeoutError):
        _value(got[1])
    assert [_value(got[i]) for i in range(2, 5)] == [2, 3, 4]
    assert made.queued_behind > before


def test_a_long_call_gets_nothing_queued_behind_it(
    slot: tuple[ProcessSlot, TaskBoard, Answers],
) -> None:
    made, board, answers = slot
    board.put(_task(1, _sleep, 0.2))
    _collect(answers, 1)
    before = made.queued_behind
    with board._cond:
        board.put(_task(2, _sleep, 0.3))
        board.put(_task(3, _sleep, 0.0))
    _collect(answers, 2)
    assert made.queued_behind == before, "after a long call, the next one waits on the board"


def test_a_timed_call_handed_to_an_idle_worker_times_out_on_time(
    slot: tuple[ProcessSlot, TaskBoard, Answers],
) -> None:
    _, board, answers = slot
    for i in range(3):
        deadline = time.monotonic() + 30
        while not board.is_idle(0):  # the replacement of the last round's worker is up
            assert time.monotonic() < deadline, "the slot never became idle"
            time.sleep(0.01)
        started = time.monotonic()
        board.put(_task(i, _sleep, 30.0, timeout=0.3))
        (got,) = _collect(answers, 1).values()
        with pytest.raises(TaskTimeoutError):
            _value(got)
        # Answered before its worker's replacement starts (a new interpreter): well
        # under the 30 s the call would take, whatever the machine's load.
        assert time.monotonic() - started < 15


def _touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def _queue_behind_a_running_call(
    made: ProcessSlot, board: TaskBoard, answers: Answers, second: messages.Task
) -> None:
    """Call 1 (0.5 s) runs on the worker with ``second`` written behind it."""
    _warm(made, board, answers)
    before = made.queued_behind
    with board._cond:  # call 0's answer frees the slot, which takes 1 and queues the second
        board.put(_task(0, abs, -1))
        board.put(_task(1, _sleep, 0.5))
        board.put(second)
    deadline = time.monotonic() + 30
    while made.queued_behind == before:
        assert time.monotonic() < deadline, "nothing was queued behind the running call"
        time.sleep(0.005)
    assert [t.id for t in made.sent] == [1, second.id]


def test_a_cancelled_call_queued_behind_the_running_one_never_runs(
    slot: tuple[ProcessSlot, TaskBoard, Answers], tmp_path: Path
) -> None:
    made, board, answers = slot
    marker = tmp_path / "ran"
    _queue_behind_a_running_call(made, board, answers, _task(2, _touch, str(marker)))
    pid = made.pid
    made.cancel(2)
    got = _collect(answers, 3)
    assert _value(got[1]) == 0.5, "the running call was left alone"
    with pytest.raises(CancelledError):
        _value(got[2])
    time.sleep(0.3)
    assert not marker.exists(), "the worker skipped the cancelled call"
    assert made.pid == pid, "skipping a queued call kills nobody"


def test_cancelling_the_running_call_requeues_the_one_behind_it(
    slot: tuple[ProcessSlot, TaskBoard, Answers],
) -> None:
    made, board, answers = slot
    _queue_behind_a_running_call(made, board, answers, _task(2, _pid))
    pid = made.pid
    made.cancel(1)
    got = _collect(answers, 3)
    with pytest.raises(CancelledError):
        _value(got[1])
    assert _value(got[2]) == made.pid != pid, "the queued call ran, once, on the replacement"
