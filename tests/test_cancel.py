"""Cancelling calls: Ctrl-C while waiting on an open pool, and ``Future.cancel()``.

Each slow call writes its worker's pid, sleeps, then writes a marker. A cancelled call's
worker process is gone (killed and replaced), its marker never appears although the pool
stays open past the sleep, and the same pool runs the next call.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import skyward as sky
from skyward.events import SkywardEvent, TaskFinished
from tests.conftest import agent_processes, wait_until

SLEEP = 3.0
"""How long a slow call sleeps before it writes its marker."""


@sky.compute
def slow(marker: str, seconds: float = SLEEP) -> int:
    marker = marker.format(node=sky.instance_info().node)  # `@ pool`: one marker per node
    Path(f"{marker}.pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(marker).write_text("the call ran to its end")
    return os.getpid()


@sky.compute
def slow_items(marker: str) -> Iterator[int]:
    Path(f"{marker}.pid").write_text(str(os.getpid()))
    time.sleep(SLEEP)
    Path(marker).write_text("the generator ran past its sleep")
    yield 1


@sky.compute
def pid() -> int:
    return os.getpid()


def _gone(worker: int) -> bool:
    try:
        return psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pids(markers: list[Path]) -> list[int]:
    return [int(Path(f"{m}.pid").read_text()) for m in markers]


def _interrupt_when_started(markers: list[Path]) -> threading.Thread:
    """A real SIGINT to the main thread once every call wrote its pid (what Ctrl-C does)."""
    main = threading.main_thread().ident
    assert main is not None

    def fire() -> None:
        if wait_until(lambda: all(Path(f"{m}.pid").exists() for m in markers), 60):
            signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


def _assert_cancelled(markers: list[Path], started: float) -> None:
    workers = _pids(markers)
    assert wait_until(lambda: all(_gone(w) for w in workers), 15), "the workers run on"
    # Past the calls' sleep, with the pool still open: nothing wrote its marker.
    time.sleep(max(0.0, started + SLEEP + 1.0 - time.monotonic()))
    assert not any(m.exists() for m in markers), "a cancelled call ran to its end"


@pytest.fixture(autouse=True)
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, as at a terminal: Python leaves it ignored when
    it starts ignored (a test run started in the background by a non-interactive shell)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def pool() -> Iterator[sky.ComputePool]:
    """One open pool shared by the cases below: each proves it is still usable."""
    with sky.ComputePool(provider=sky.Local(), nodes=2, concurrency=1, display="quiet") as opened:
        yield opened
    assert wait_until(lambda: not agent_processes(opened.pool_id), 10)


def _run(pool: sky.ComputePool, how: str, markers: list[Path]) -> None:
    if how == ">>":
        slow(str(markers[0])) >> pool
    elif how == "@":
        slow(str(markers[0]).replace("node0", "node{node}")) @ pool
    elif how == "gather":
        sky.gather(*(slow(str(m)) for m in markers)) >> pool
    elif how == "gather-unordered":
        list(sky.gather(*(slow(str(m)) for m in markers), ordered=False) >> pool)
    elif how == "map":
        list(pool.map(slow, [str(m) for m in markers]))
    elif how == "future":
        pool.submit(slow(str(markers[0]))).result()
    elif how == "stream":
        for _ in slow_items(str(markers[0])) >> pool:
            pass


@pytest.mark.parametrize(
    ("how", "calls"),
    [
        (">>", 1),
        ("@", 2),
        ("gather", 2),
        ("gather-unordered", 2),
        ("map", 2),
        ("future", 1),
        ("stream", 1),
    ],
)
def test_ctrl_c_while_waiting_cancels_the_calls_on_the_nodes(
    pool: sky.ComputePool, tmp_path: Path, how: str, calls: int
) -> None:
    markers = [tmp_path / f"node{i}" for i in range(calls)]
    started = time.monotonic()
    firing = _interrupt_when_started(markers)
    with pytest.raises(KeyboardInterrupt):
        _run(pool, how, markers)
    firing.join()
    _assert_cancelled(markers, started)
    assert pid() >> pool > 0, "the pool runs the next call"
    assert len(set(pid() @ pool)) == 2


def test_ctrl_c_while_a_big_batch_is_still_being_sent_cancels_all_of_it(
    pool: sky.ComputePool, tmp_path: Path
) -> None:
    # Four calls per worker in flight: with two one-worker nodes the ninth call waits
    # to be sent, and Ctrl-C must reach the caller there too.
    markers = [tmp_path / f"call{i}" for i in range(12)]
    started = time.monotonic()
    firing = _interrupt_when_started(markers[:2])
    with pytest.raises(KeyboardInterrupt):
        sky.gather(*(slow(str(m)) for m in markers)) >> pool
    firing.join()
    _assert_cancelled(markers[:2], started)
    assert not any(m.exists() for m in markers), "a cancelled call ran to its end"
    assert not any(Path(f"{m}.pid").exists() for m in markers[2:]), "a queued call started"
    assert pid() >> pool > 0


def test_future_cancel_kills_a_running_call_and_drops_a_queued_one(
    pool: sky.ComputePool, tmp_path: Path
) -> None:
    running, queued = tmp_path / "running", tmp_path / "queued"
    started = time.monotonic()
    # One worker per node, both nodes busy: the third call waits in a node's queue.
    blockers = [tmp_path / "b0", tmp_path / "b1"]
    first = pool.submit(slow(str(running)))
    others = [pool.submit(slow(str(b), 1.0)) for b in blockers]
    third = pool.submit(slow(str(queued)))
    assert wait_until(lambda: Path(f"{running}.pid").exists(), 30)
    assert first.cancel()
    assert third.cancel()
    for future in (first, third):
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(timeout=1)
    assert [f.result(timeout=30) > 0 for f in others] == [True, True]
    _assert_cancelled([running], started)
    assert not Path(f"{queued}.pid").exists(), "a call cancelled in the queue started"
    assert first.cancelled()
    assert pid() >> pool > 0


def test_a_call_on_a_thread_runs_on_and_its_late_result_is_dropped(
    local_pool_factory: Callable[..., sky.ComputePool], tmp_path: Path
) -> None:
    events: list[SkywardEvent] = []
    with local_pool_factory(executor="thread", on_event=events.append) as opened:
        marker = tmp_path / "thread"
        future = opened.submit(slow(str(marker), 1.0))
        assert wait_until(lambda: Path(f"{marker}.pid").exists(), 30)
        assert future.cancel()
        # A thread cannot be stopped: the call ends on its own, its answer goes nowhere.
        assert wait_until(marker.exists, 15)
        (client,) = opened._active()[0].clients
        assert wait_until(lambda: client.inflight == 0 and not client._cancelled, 10)
        assert future.cancelled()
        assert pid() >> opened > 0, "the pool runs the next call"
        finished = [e for e in events if isinstance(e, TaskFinished)]
        assert finished[0].ok is False


SCRIPT = """
import signal, sys, time
from pathlib import Path
import skyward as sky
from tests.test_cancel import pid, slow

# Ctrl-C as at a terminal, however the test run was started (see the ctrl_c fixture)
signal.signal(signal.SIGINT, signal.default_int_handler)

marker = sys.argv[1]
with sky.ComputePool(provider=sky.Local(), concurrency=1, display="quiet") as pool:
    print("first", pid() >> pool, flush=True)
    try:
        slow(marker) >> pool
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print("next", pid() >> pool, flush=True)
    sys.stdin.readline()  # the pool stays open until the test has looked
"""


def test_sigint_to_a_program_cancels_its_call_and_the_pool_runs_the_next(
    tmp_path: Path,
) -> None:
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(SCRIPT))
    marker = tmp_path / "marker"
    root = Path(__file__).resolve().parent.parent
    client = subprocess.Popen(
        [sys.executable, str(script), str(marker)],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert client.stdout is not None
    assert client.stdin is not None
    try:
        first = client.stdout.readline().split()
        assert first[:1] == ["first"], first
        assert wait_until(lambda: Path(f"{marker}.pid").exists(), 60)
        started = time.monotonic()
        (worker,) = _pids([marker])
        assert worker == int(first[1]), "the call runs in the pool's worker process"
        os.kill(client.pid, signal.SIGINT)
        assert client.stdout.readline().strip() == "interrupted"
        after = client.stdout.readline().split()
        assert after[0] == "next", after
        assert int(after[1]) != worker, "a new worker process runs the next call"
        assert wait_until(lambda: _gone(worker), 15), "the interrupted call's worker runs on"
        _assert_cancelled([marker], started - 0.5)
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.wait(60) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def _ssh_pool(hosts: Any, key: Any, known_hosts: Path) -> sky.ComputePool:
    provider = sky.SSH(
        hosts=[
            sky.SSHHost(h.address, user=h.user, port=h.port, identity_file=str(key.private_path))
            for h in hosts
        ],
        known_hosts=str(known_hosts),
    )
    return sky.ComputePool(provider=provider, concurrency=1, display="quiet")


def test_ctrl_c_cancels_a_call_on_an_ssh_host(
    ssh_hosts: Any, ssh_client_key: Any, ssh_known_hosts: Path
) -> None:
    (host,) = ssh_hosts(1)
    # The host's user writes the markers: a directory it may write to.
    shared = Path(tempfile.mkdtemp(prefix="skyward-cancel-", dir="/tmp"))
    shared.chmod(0o777)
    try:
        with _ssh_pool([host], ssh_client_key, ssh_known_hosts) as opened:
            marker = shared / "ssh"
            started = time.monotonic()
            firing = _interrupt_when_started([marker])
            with pytest.raises(KeyboardInterrupt):
                slow(str(marker)) >> opened
            firing.join()
            _assert_cancelled([marker], started)
            assert pid() >> opened != _pids([marker])[0], "a new worker runs the next call"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_cancel_lost_with_the_connection_is_sent_again(
    local_pool_factory: Callable[..., sky.ComputePool], tmp_path: Path
) -> None:
    with local_pool_factory(nodes=1) as opened:
        marker = tmp_path / "lost"
        started = time.monotonic()
        future = opened.submit(slow(str(marker)))
        assert wait_until(lambda: Path(f"{marker}.pid").exists(), 30)
        (client,) = opened._active()[0].clients
        connection = client._stream
        assert isinstance(connection, socket.socket)
        connection.shutdown(socket.SHUT_RDWR)  # the link drops; the agent lives on
        assert future.cancel()  # its Cancel is lost with the link...
        _assert_cancelled([marker], started)  # ...and sent again once reconnected
        assert pid() >> opened > 0
        assert wait_until(lambda: not client._cancelled, 10), "the late answer was dropped"
