"""Mutual challenge-response between a client and its node agent, before any pickle.

The agent unpickles what arrives on its port, and on a shared machine anyone can connect
to a loopback port. So every connection first proves it holds the pool's key, and the
agent proves it back (a process that took over a dead agent's port must not get to feed
pickles to the client). Raw fixed-size bytes only; nothing is unpickled until both sides
are satisfied::

    agent  → client   MAGIC | nonce_a                          (8 + 32 bytes)
    client → agent    nonce_c | HMAC(key, "client" nonce_a nonce_c)   (32 + 32)
    agent  → client   HMAC(key, "agent" nonce_c nonce_a)        (32)

Fresh nonces on both sides make every exchange unique: a recorded one cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Protocol

from skyward.errors import AgentAuthenticationError

__all__ = ["KEY_BYTES", "accept", "new_key", "prove"]

MAGIC = b"SKYWARD\x01"
KEY_BYTES = 32
_NONCE = 32
_MAC = hashlib.sha256().digest_size


class _Stream(Protocol):
    def sendall(self, data: bytes, /) -> None: ...
    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int: ...


def new_key() -> bytes:
    """A fresh per-pool key."""
    return secrets.token_bytes(KEY_BYTES)


def _mac(key: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, label + first + second, hashlib.sha256).digest()


def _read_exactly(stream: _Stream, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = stream.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError("connection closed during the handshake")
        got += n
    return bytes(buffer)


def accept(stream: _Stream, key: bytes) -> None:
    """Agent side: challenge the peer; raise unless it holds ``key``, then prove we do.

    :raises AgentAuthenticationError: the peer's answer is wrong (nothing was revealed).
    """
    nonce_a = secrets.token_bytes(_NONCE)
    stream.sendall(MAGIC + nonce_a)
    answer = _read_exactly(stream, _NONCE + _MAC)
    nonce_c, mac = answer[:_NONCE], answer[_NONCE:]
    if not hmac.compare_digest(mac, _mac(key, b"client", nonce_a, nonce_c)):
        raise AgentAuthenticationError("a connection did not prove it holds the pool's key")
    stream.sendall(_mac(key, b"agent", nonce_c, nonce_a))


def prove(stream: _Stream, key: bytes) -> None:
    """Client side: answer the agent's challenge and check the agent's own proof.

    :raises AgentAuthenticationError: whatever listens there is not the pool's agent.
    """
    greeting = _read_exactly(stream, len(MAGIC) + _NONCE)
    if greeting[: len(MAGIC)] != MAGIC:
        raise AgentAuthenticationError("the peer is not a Skyward agent (bad greeting)")
    nonce_a = greeting[len(MAGIC) :]
    nonce_c = secrets.token_bytes(_NONCE)
    stream.sendall(nonce_c + _mac(key, b"client", nonce_a, nonce_c))
    try:
        proof = _read_exactly(stream, _MAC)
    except EOFError as error:
        raise AgentAuthenticationError("the agent refused this pool's key") from error
    if not hmac.compare_digest(proof, _mac(key, b"agent", nonce_c, nonce_a)):
        raise AgentAuthenticationError("the peer does not hold the pool's key: not our agent")
