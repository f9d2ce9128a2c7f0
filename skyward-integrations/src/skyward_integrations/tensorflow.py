"""``@sky.integrations.tensorflow``: ``TF_CONFIG`` with every worker's address, set on each
worker before the function (the user then builds ``tf.distribute.MultiWorkerMirroredStrategy``).

TensorFlow's workers each run a server on their own address, and every worker must list them
all; Skyward knows only node 0's address. So the workers meet once on node 0's TensorFlow
rendezvous port: each picks a free port of its own and tells rank 0, which sees the address the
connection came from and sends the complete list back. Nothing of TensorFlow is imported for
this (and, note, Keras 3's ``model.fit`` under ``MultiWorkerMirroredStrategy`` is broken
upstream — keras-team/keras#20585 — use ``tf-keras`` with ``TF_USE_LEGACY_KERAS=1``, or a
custom loop with ``strategy.run``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from attrs import frozen

from skyward.cluster import InstanceInfo
from skyward.errors import SkywardError
from skyward_integrations._distributed import (
    DEFAULT_TIMEOUT,
    check_timeout,
    decorate,
    free_port,
    port_for,
    ranks,
)

__all__ = ["TensorFlowSetup", "exchange_addresses", "tensorflow"]


class RendezvousError(SkywardError):
    """The workers could not exchange their addresses in time."""


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _receive(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise RendezvousError("a worker closed the rendezvous connection early")
        data += chunk
    message: dict[str, Any] = json.loads(data)
    return message


def _serve(port: int, me: dict[str, Any], world: int, job: str, deadline: float) -> list[str]:
    """Rank 0: collect every other rank's port (and its address as seen here), answer all."""
    addresses = {0: f"{me['addr']}:{me['port']}"}
    peers: list[socket.socket] = []
    with socket.create_server(("", port), reuse_port=False) as server:
        try:
            while len(addresses) < world:
                server.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    peer, (host, _) = server.accept()
                except TimeoutError:
                    raise RendezvousError(
                        f"only {len(addresses)} of {world} TensorFlow workers joined in time"
                    ) from None
                peer.settimeout(max(0.1, deadline - time.monotonic()))
                hello = _receive(peer)
                if hello.get("job") != job:
                    peer.close()  # a stray connection, not one of this pool's workers
                    continue
                addresses[int(hello["rank"])] = f"{host}:{int(hello['port'])}"
                peers.append(peer)
            workers = [addresses[r] for r in range(world)]
            for peer in peers:
                _send(peer, {"workers": workers})
            return workers
        finally:
            for peer in peers:
                peer.close()


def _join(addr: str, port: int, me: dict[str, Any], deadline: float) -> list[str]:
    """Any other rank: tell rank 0 our port (retrying until it listens), get the list."""
    while True:
        try:
            with socket.create_connection(
                (addr, port), timeout=max(0.1, deadline - time.monotonic())
            ) as sock:
                _send(sock, me)
                workers: list[str] = _receive(sock)["workers"]
                return workers
        except (ConnectionRefusedError, ConnectionResetError):
            if time.monotonic() > deadline:
                raise RendezvousError(
                    f"rank 0 at {addr}:{port} did not answer the TensorFlow rendezvous"
                ) from None
            time.sleep(0.2)


def exchange_addresses(info: InstanceInfo, timeout: float) -> tuple[list[str], int]:
    """Every worker's ``host:port`` in rank order, and this worker's index in it."""
    me = ranks(info)
    own_port = free_port()
    if me.world_size == 1:
        return [f"127.0.0.1:{own_port}"], 0
    deadline = time.monotonic() + timeout
    port = port_for(info, "tensorflow")
    hello = {"job": info.job_id, "rank": me.rank, "port": own_port, "addr": info.head_addr}
    if me.rank == 0:
        return _serve(port, hello, me.world_size, info.job_id, deadline), 0
    return _join(info.head_addr, port, hello, deadline), me.rank


@frozen
class TensorFlowSetup:
    timeout: float = DEFAULT_TIMEOUT
    name: str = "tensorflow"

    def __call__(self, info: InstanceInfo) -> None:
        workers, index = exchange_addresses(info, self.timeout)
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )


def tensorflow(fn: Any = None, /, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Set ``TF_CONFIG`` (every worker's address, this worker's index) on every worker.

    Build ``tf.distribute.MultiWorkerMirroredStrategy()`` inside the decorated function and
    run it with ``fn() @ pool`` so every worker joins.
    """
    setup = TensorFlowSetup(timeout=check_timeout(timeout))
    if fn is not None:
        return decorate(fn, setup)
    return lambda target: decorate(target, setup)
