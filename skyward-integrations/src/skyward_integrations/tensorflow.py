"""``@sky.integrations.tensorflow``: ``TF_CONFIG`` with every worker's address, set on each
worker before the function (the user then builds ``tf.distribute.MultiWorkerMirroredStrategy``).

TensorFlow's workers each run a server on their own address, and every worker must list them
all; Skyward knows only node 0's address. So the workers meet once on node 0's TensorFlow
rendezvous port: each picks a free port of its own and tells rank 0, which sees the address the
connection came from and sends the complete list back. Nothing of TensorFlow is imported for
this (and, note, Keras 3's ``model.fit`` under ``MultiWorkerMirroredStrategy`` is broken
upstream — keras-team/keras#20585 — use ``tf-keras`` with ``TF_USE_LEGACY_KERAS=1``, or a
custom loop with ``strategy.run``).

The meeting point is authenticated both ways, before anything else is read: the port is open
to anyone who can reach node 0, and a stranger must neither add its own address to the list
nor hand the workers a list of its own. The key is made on the client when the function is
decorated and travels inside the function (never in argv, the environment or a log), mixed
with the pool's id so each pool has its own; every connection runs Skyward's mutual
challenge-response (:mod:`skyward.handshake`) with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import time
from typing import Any

from attrs import field, frozen

from skyward import handshake
from skyward.cluster import InstanceInfo
from skyward.errors import AgentAuthenticationError, SkywardError
from skyward_integrations._distributed import (
    DEFAULT_TIMEOUT,
    check_timeout,
    decorate,
    free_port,
    port_for,
    ranks,
)

__all__ = ["RendezvousError", "TensorFlowSetup", "exchange_addresses", "new_secret", "tensorflow"]


class RendezvousError(SkywardError):
    """The workers could not exchange their addresses in time."""


HANDSHAKE_TIMEOUT = 10.0
"""Seconds a connection to rank 0 gets to prove itself: a stranger that connects and says
nothing must not hold up the workers behind it."""


def new_secret() -> bytes:
    """A fresh rendezvous secret (made once per decorated function, on the client)."""
    return handshake.new_key()


def pool_key(secret: bytes, job_id: str) -> bytes:
    """The key of one pool's rendezvous: the function's secret, bound to the pool's id."""
    return hmac.new(secret, b"skyward-tf-rendezvous\0" + job_id.encode(), hashlib.sha256).digest()


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _receive(sock: socket.socket, limit: int = 1 << 20) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise RendezvousError("a worker closed the rendezvous connection early")
        data += chunk
        if len(data) > limit:
            raise RendezvousError("a rendezvous message is too long")
    message: dict[str, Any] = json.loads(data)
    return message


def _remaining(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


def _serve(port: int, me: dict[str, Any], world: int, key: bytes, deadline: float) -> list[str]:
    """Rank 0: collect every other rank's port (and its address as seen here), answer all.

    A connection that does not prove it holds the pool's key (or says something else than a
    rank's hello) is dropped, and rank 0 waits on for the real ranks.
    """
    addresses = {0: f"{me['addr']}:{me['port']}"}
    peers: dict[int, socket.socket] = {}
    with socket.create_server(("", port), reuse_port=False) as server:
        try:
            while len(addresses) < world:
                server.settimeout(_remaining(deadline))
                try:
                    peer, (host, _) = server.accept()
                except TimeoutError:
                    raise RendezvousError(
                        f"only {len(addresses)} of {world} TensorFlow workers joined in time"
                    ) from None
                peer.settimeout(min(HANDSHAKE_TIMEOUT, _remaining(deadline)))
                try:
                    handshake.accept(peer, key)
                    hello = _receive(peer)
                    rank, their_port = int(hello["rank"]), int(hello["port"])
                    if not 0 < rank < world:
                        raise RendezvousError(f"a hello for rank {rank} is not expected")
                except (OSError, EOFError, RendezvousError, ValueError, KeyError, TypeError):
                    # A stranger (AgentAuthenticationError is an OSError), a garbled hello,
                    # or a peer that went away: not one of this pool's ranks.
                    peer.close()
                    continue
                if rank in peers:
                    peers[rank].close()  # that rank came again (its first connection broke)
                addresses[rank] = f"{host}:{their_port}"
                peers[rank] = peer
            workers = [addresses[r] for r in range(world)]
            for peer in peers.values():
                peer.settimeout(_remaining(deadline))
                _send(peer, {"workers": workers})
            return workers
        finally:
            for peer in peers.values():
                peer.close()


def _join(addr: str, port: int, me: dict[str, Any], key: bytes, deadline: float) -> list[str]:
    """Any other rank: prove ourselves to rank 0 (and it to us), tell it our port, get the
    list. Retries until rank 0 listens; whatever listens there without the key is not
    believed."""
    refused = ""
    while True:
        try:
            with socket.create_connection((addr, port), timeout=_remaining(deadline)) as sock:
                sock.settimeout(_remaining(deadline))
                handshake.prove(sock, key)
                _send(sock, me)
                workers: list[str] = _receive(sock)["workers"]
                return workers
        except AgentAuthenticationError:
            refused = " (what listens there does not hold this pool's key)"
        except (OSError, EOFError, RendezvousError):
            pass  # not listening yet, or it dropped us: try again until the deadline
        if time.monotonic() > deadline:
            raise RendezvousError(
                f"rank 0 at {addr}:{port} did not answer the TensorFlow rendezvous{refused}"
            )
        time.sleep(0.2)


def exchange_addresses(info: InstanceInfo, timeout: float, secret: bytes) -> tuple[list[str], int]:
    """Every worker's ``host:port`` in rank order, and this worker's index in it."""
    me = ranks(info)
    own_port = free_port()
    if me.world_size == 1:
        return [f"127.0.0.1:{own_port}"], 0
    deadline = time.monotonic() + timeout
    port = port_for(info, "tensorflow")
    key = pool_key(secret, info.job_id)
    hello = {"rank": me.rank, "port": own_port, "addr": info.head_addr}
    if me.rank == 0:
        return _serve(port, hello, me.world_size, key, deadline), 0
    return _join(info.head_addr, port, hello, key, deadline), me.rank


@frozen
class TensorFlowSetup:
    timeout: float = DEFAULT_TIMEOUT
    name: str = "tensorflow"
    secret: bytes = field(factory=new_secret, repr=False)
    """The rendezvous secret, made on the client; it reaches the workers inside the
    decorated function."""

    def __call__(self, info: InstanceInfo) -> None:
        workers, index = exchange_addresses(info, self.timeout, self.secret)
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
