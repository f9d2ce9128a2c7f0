"""Stopping a cancelled call kills its worker only while the worker runs that call."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from skyward.agent.running import RunningCall


def _state(pid: int) -> bytes:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()[0]


def _fork_running(running: RunningCall, task_id: int, seconds: float) -> int:
    pid = os.fork()
    if pid == 0:  # the "worker": starts a call, runs it for a while, exits 0
        try:
            running.set(task_id)
            time.sleep(seconds)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 5
    while running.get() != task_id and time.monotonic() < deadline:
        time.sleep(0.001)
    return pid


def test_the_worker_running_the_cancelled_call_is_left_stopped_for_the_kill() -> None:
    running = RunningCall()
    pid = _fork_running(running, 5, 30)
    try:
        assert running.stop_if_running(pid, 5)
        assert _state(pid) in (b"T", b"t"), "stopped: it cannot start another call"
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_worker_that_moved_on_to_another_call_runs_on() -> None:
    running = RunningCall()
    pid = _fork_running(running, 6, 0.5)
    started = time.monotonic()
    assert not running.stop_if_running(pid, 5), "call 5 ended: 6 runs, not to be killed"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "it was let go on and finished"
    assert time.monotonic() - started < 10


def test_a_new_interpreter_writes_the_page_through_its_descriptor() -> None:
    running = RunningCall.shareable()
    assert running.fd is not None
    code = (
        "import sys, time\n"
        "from skyward.agent.running import RunningCall\n"
        "RunningCall(int(sys.argv[1])).set(7)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(running.fd)], pass_fds=(running.fd,))
    running.close_fd()
    try:
        deadline = time.monotonic() + 20
        while running.get() != 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running.get() == 7
        assert running.stop_if_running(child.pid, 7)
        assert not running.stop_if_running(child.pid, 8), "it runs 7, not 8"
        time.sleep(0.05)
        assert _state(child.pid) not in (b"T", b"t"), "let go on"
    finally:
        child.kill()
        child.wait()
