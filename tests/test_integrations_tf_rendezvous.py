"""The TensorFlow meeting point (how TF workers learn each other's addresses) is
authenticated: strangers on the port can neither join nor hand the workers a list of their
own. Real sockets on loopback, no TensorFlow needed."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest

import skyward as sky
from skyward import handshake
from skyward.cluster import InstanceInfo
from skyward.errors import AgentAuthenticationError
from skyward_integrations._distributed import free_port
from skyward_integrations.tensorflow import (
    RendezvousError,
    TensorFlowSetup,
    exchange_addresses,
    new_secret,
)


def _infos(job: str = "pool-a", world: int = 2) -> list[InstanceInfo]:
    head = free_port() - 2  # the TensorFlow port is head_port + 2
    return [
        InstanceInfo(node=n, total_nodes=world, head_addr="127.0.0.1", head_port=head, job_id=job)
        for n in range(world)
    ]


def _in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``fn`` now in a thread; the returned function joins it and gives its result."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as error:  # handed to the test thread
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> Any:
        thread.join(30)
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _hung_up(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:  # it closed with our unread bytes: a reset
        return True


def test_strangers_cannot_join_or_poison_the_list() -> None:
    secret = new_secret()
    infos = _infos()
    port = infos[0].rendezvous_port(2)
    rank0 = _in_thread(lambda: exchange_addresses(infos[0], 20, secret))

    # A stranger that knows the message format but not the key: dropped before its hello
    # is read, and it learns nothing.
    with _connect(port) as stranger:
        stranger.sendall(json.dumps({"rank": 1, "port": 4444, "addr": "127.0.0.1"}).encode())
        stranger.sendall(b" " * 64 + b"\n")
        assert stranger.recv(4096)[:8] == handshake.MAGIC  # the challenge, nothing else
        assert _hung_up(stranger)  # then rank 0 hangs up
    # One that answers the challenge with another key is refused as well.
    with _connect(port) as stranger, pytest.raises(AgentAuthenticationError):
        handshake.prove(stranger, new_secret())
    # A rank of another pool (same function, so same secret, other pool id) cannot join.
    other_pool = _infos(job="pool-b")[1]
    with pytest.raises(RendezvousError, match="does not hold this pool's key"):
        exchange_addresses(
            InstanceInfo(
                node=1,
                total_nodes=2,
                head_addr="127.0.0.1",
                head_port=infos[0].head_port,
                job_id=other_pool.job_id,
            ),
            1.5,
            secret,
        )

    workers, index = exchange_addresses(infos[1], 20, secret)
    assert index == 1
    assert rank0() == (workers, 0)
    assert len(workers) == 2
    assert "4444" not in " ".join(workers)


def test_workers_do_not_believe_an_impostor_rank_0() -> None:
    infos = _infos()
    port = infos[0].rendezvous_port(2)
    poisoned = {"workers": ["127.0.0.1:1", "127.0.0.1:2"]}

    def impostor() -> None:
        # Someone else bound node 0's port first and plays rank 0 without the key.
        with socket.create_server(("127.0.0.1", port)) as server:
            server.settimeout(10)
            for _ in range(3):
                try:
                    peer, _ = server.accept()
                except TimeoutError:
                    return
                with peer:
                    peer.settimeout(2)
                    with contextlib.suppress(AgentAuthenticationError, OSError, EOFError):
                        handshake.accept(peer, new_secret())
                    peer.sendall(json.dumps(poisoned).encode() + b"\n")

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    time.sleep(0.2)
    with pytest.raises(RendezvousError, match="does not hold this pool's key"):
        exchange_addresses(infos[1], 2, new_secret())
    thread.join(15)


def test_the_secret_travels_in_the_function_and_nowhere_else() -> None:
    @sky.integrations.tensorflow(timeout=30)
    def fn() -> None: ...

    again = cloudpickle.loads(cloudpickle.dumps(fn))
    assert again.setup.secret == fn.setup.secret  # every worker gets the client's secret
    assert len(fn.setup.secret) == 32
    assert fn.setup.secret != sky.integrations.tensorflow(lambda: None).setup.secret
    assert "secret" not in repr(fn.setup)
    assert fn.setup.secret.hex() not in repr(TensorFlowSetup(secret=fn.setup.secret))
    keras_fn = sky.integrations.keras(backend="tensorflow")(lambda: None)
    assert "secret" not in repr(keras_fn.setup)
