"""Large buffers: received into populated memory, handed to worker processes as memory files.

An agent with process workers receives a call's buffers of 1 MiB and more into memory
files (``memfd_create``) and passes the worker their descriptors instead of their bytes
(:mod:`skyward.buffers`). These tests check the framing of that hand-off on a socket
pair, then the real thing on Local and on one SSH host: the worker maps the agent's
pages, the bytes are intact, and nothing is left behind (no descriptor, no file in
``/dev/shm``) when calls end, are cancelled, or kill their worker.
"""

from __future__ import annotations

import concurrent.futures
import gc
import hashlib
import mmap
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import skyward as sky
from skyward import buffers, messages, wire
from skyward.errors import WorkerLostError
from tests.conftest import Pair, agent_processes, wait_until
from tests.ssh_hosts import ClientKey, SSHTestHost

MiB = 2**20
MEMFD = "memfd:skyward-buffer"


def _memfds(pid: int) -> int:
    """Descriptors of ``pid`` that are Skyward's memory files."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith(f"/{MEMFD}"):
                count += 1
        except OSError:
            continue
    return count


def _shm() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if "skyward" in name}


# -- the hand-off on a socket pair ---------------------------------------------------------


def test_large_buffers_get_populated_memory_small_ones_a_bytearray() -> None:
    below = buffers.private(buffers.LARGE - 1)
    assert type(below) is bytearray
    assert len(below) == buffers.LARGE - 1
    big = buffers.private(buffers.LARGE)
    assert isinstance(big, mmap.mmap)
    assert not isinstance(big, buffers.SharedBuffer)
    memoryview(big)[:3] = b"abc"  # writable
    buffers.share_large_buffers()
    try:
        shared = buffers.allocate(2 * MiB)
        assert isinstance(shared, buffers.SharedBuffer)
        assert os.readlink(f"/proc/self/fd/{shared.fd}").startswith(f"/{MEMFD}")
        assert type(buffers.allocate(1000)) is bytearray
    finally:
        buffers.share_large_buffers(False)
    fd = shared.fd
    del shared
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with its buffer


def _task(task_id: int, *parts: Any) -> messages.Task:
    """A call whose buffers are ``parts`` themselves, as the agent's reader makes them."""
    shape = tuple(pickle.PickleBuffer(bytearray(len(p))) for p in parts)
    data, _ = wire.dumps(shape)
    return messages.Task(task_id, messages.Payload(data, parts))


def _shared(data: bytes) -> buffers.SharedBuffer:
    buffer = buffers.SharedBuffer.create(len(data))
    buffer[:] = data
    return buffer


def test_a_frame_passes_its_shared_buffers_as_descriptors(pair: Pair) -> None:
    writer_sock, reader_sock = pair
    writer = wire.FrameWriter(buffers.FdSocket(writer_sock))
    reader = wire.FrameReader(buffers.FdSocket(reader_sock))
    first, second = os.urandom(2 * MiB), os.urandom(3 * MiB)
    small = os.urandom(5000)
    gc.collect()  # memory files an earlier test left to the collector are not ours
    before = _memfds(os.getpid())
    held = [_shared(first), _shared(second)]
    # two frames, each with a memory file and a plain buffer: descriptors stay in order
    frames = [_task(1, held[0], small), _task(2, bytearray(small), held[1])]
    parts = [wire.encode_local(task) for task in frames]
    # the memory files' bytes do not travel: the frames are their heads and the small buffer
    assert sum(len(p) for frame in parts for p in frame) < 64 * 1024
    for frame in parts:
        writer.write(frame)
    got = [reader.read(), reader.read()]
    assert [t.id for t in got] == [1, 2]
    one, two = (t.payload.open() for t in got)
    assert bytes(one[0]) == first
    assert bytes(one[1]) == small
    assert bytes(two[0]) == small
    assert bytes(two[1]) == second
    assert isinstance(got[0].payload.buffers[0], mmap.mmap)
    # the receiver's mapping is its own: writing into it leaves the sender's pages alone
    received = got[1].payload.buffers[1]
    received[:4] = b"\0\0\0\0"
    assert received[:4] == b"\0\0\0\0"
    assert held[1][:4] == second[:4]
    # the reader closed the descriptors it received: each mapping keeps one of its own
    # (Python's mmap holds a duplicate), as does each sender's buffer, besides its fd
    assert _memfds(os.getpid()) == before + 2 * 2 + 2
    del got, one, two, held, frames, parts, received
    gc.collect()
    assert _memfds(os.getpid()) == before


def test_a_frame_without_memory_files_is_the_plain_frame() -> None:
    task = _task(3, bytearray(2 * MiB))
    assert wire.encode_local(task)[0] == wire.encode(task)[0]


def test_a_frame_with_more_memory_files_than_one_message_can_pass_sends_their_bytes(
    pair: Pair,
) -> None:
    writer_sock, reader_sock = pair
    gc.collect()
    before = _memfds(os.getpid())
    many = [_shared(bytes([i % 256]) * 4096) for i in range(buffers.MAX_FDS + 1)]
    parts = wire.encode_local(_task(5, *many))
    assert not any(isinstance(p, buffers.FdBytes) for p in parts)
    writer = wire.FrameWriter(buffers.FdSocket(writer_sock))
    reader = wire.FrameReader(buffers.FdSocket(reader_sock))
    sender = threading.Thread(target=writer.write, args=(parts,), daemon=True)
    sender.start()
    got = reader.read().payload.open()
    assert [bytes(b)[:1] for b in got] == [bytes([i % 256]) for i in range(len(many))]
    sender.join(10)
    del many, parts, got, sender
    gc.collect()
    assert _memfds(os.getpid()) == before, "each buffer's memory file closed with it"


def test_a_connection_lost_in_the_middle_of_a_buffer_leaves_no_memory_file(pair: Pair) -> None:
    writer_sock, reader_sock = pair
    parts = wire.encode(_task(6, bytearray(4 * MiB)))
    gc.collect()  # memory files an earlier test left to the collector are not ours
    before = _memfds(os.getpid())
    buffers.share_large_buffers()
    try:
        half = b"".join(bytes(p) for p in parts)[: 2 * MiB]

        def send_half_and_close() -> None:
            writer_sock.sendall(half)
            writer_sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_half_and_close, daemon=True)
        sender.start()
        with pytest.raises(EOFError):
            wire.FrameReader(reader_sock).read()
        sender.join(10)
    finally:
        buffers.share_large_buffers(False)
    gc.collect()
    assert _memfds(os.getpid()) == before


def test_a_reader_that_cannot_receive_descriptors_refuses_a_shared_buffer(pair: Pair) -> None:
    writer_sock, reader_sock = pair
    buffer = _shared(b"x" * (2 * MiB))
    wire.FrameWriter(buffers.FdSocket(writer_sock)).write(wire.encode_local(_task(4, buffer)))
    with pytest.raises(ValueError, match="shared memory"):
        wire.FrameReader(reader_sock).read()


# -- through an agent --------------------------------------------------------------------


@sky.compute
def digest(buffer: Any) -> tuple[str, int, bool]:
    """The argument's digest and size, and whether it is a memory file mapped here."""
    with open("/proc/self/maps") as maps:
        mapped = MEMFD in maps.read()
    view = memoryview(buffer)
    return hashlib.sha256(view).hexdigest(), view.nbytes, mapped


@sky.compute
def maps_memory_files() -> bool:
    gc.collect()
    with open("/proc/self/maps") as maps:
        return MEMFD in maps.read()


@sky.compute
def hold(buffer: Any, marker: str) -> int:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(60)
    return memoryview(buffer).nbytes


@sky.compute
def die() -> None:
    os._exit(3)


def _payload(size: int) -> tuple[pickle.PickleBuffer, str]:
    data = bytearray(os.urandom(size))
    return pickle.PickleBuffer(data), hashlib.sha256(data).hexdigest()


def test_a_process_worker_maps_the_agents_memory_file(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    shm = _shm()
    with local_pool_factory() as pool:
        buffer, expected = _payload(8 * MiB)
        assert digest(buffer) >> pool == (expected, 8 * MiB, True)
        assert maps_memory_files() >> pool is False, "the worker let go of the argument"
        (agent,) = agent_processes(pool.pool_id)
        assert wait_until(lambda: _memfds(agent.pid) == 0, 10), "the agent let go too"
        # a small argument travels as bytes
        small, expected = _payload(100_000)
        assert digest(small) >> pool == (expected, 100_000, False)
        # a replacement worker (a new interpreter, not a fork) takes descriptors too
        with pytest.raises(WorkerLostError):
            die() >> pool
        buffer, expected = _payload(3 * MiB)
        assert digest(buffer) >> pool == (expected, 3 * MiB, True)
    assert _shm() == shm


def test_a_thread_worker_uses_the_buffer_where_it_arrived(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    with local_pool_factory(executor="thread") as pool:
        buffer, expected = _payload(4 * MiB)
        assert digest(buffer) >> pool == (expected, 4 * MiB, False)


def test_cancelling_a_call_that_holds_a_memory_file_leaves_nothing(
    local_pool_factory: Callable[..., sky.ComputePool], tmp_path: Path
) -> None:
    shm = _shm()
    with local_pool_factory() as pool:
        marker = tmp_path / "started"
        buffer, _ = _payload(16 * MiB)
        future = pool.submit(hold(buffer, str(marker)))
        assert wait_until(marker.exists, 30)
        worker = int(marker.read_text())
        (agent,) = agent_processes(pool.pool_id)
        assert _memfds(agent.pid) >= 1, "the agent holds the call's memory file"
        assert future.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(timeout=1)
        assert wait_until(lambda: not psutil.pid_exists(worker), 15), "the worker was killed"
        assert wait_until(lambda: _memfds(agent.pid) == 0, 15), "the agent let go of it"
        assert _shm() == shm
        buffer, expected = _payload(2 * MiB)
        assert digest(buffer) >> pool == (expected, 2 * MiB, True)


def test_a_large_argument_to_an_ssh_host(
    ssh_hosts: Callable[[int], list[SSHTestHost]],
    ssh_client_key: ClientKey,
    ssh_known_hosts: Path,
) -> None:
    (host,) = ssh_hosts(1)
    provider = sky.SSH(
        hosts=[
            sky.SSHHost(
                host.address,
                user=host.user,
                port=host.port,
                identity_file=str(ssh_client_key.private_path),
            )
        ],
        known_hosts=str(ssh_known_hosts),
    )
    with sky.ComputePool(provider=provider, display="quiet") as pool:
        buffer, expected = _payload(24 * MiB)
        assert digest(buffer) >> pool == (expected, 24 * MiB, True)
