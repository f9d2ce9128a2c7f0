"""Bulk channel writes (skyward.ssh.bulk): the same packets paramiko would send, faster.

The first tests need no network: a paramiko ``Packetizer`` over a socket pair, AES-GCM
keys set by hand, padding made deterministic, and the bytes both paths put on the socket
compared. The others go through a real sshd test host, which checks every tag, nonce
and sequence number: a wrong one closes the connection.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from paramiko.packet import Packetizer

from skyward.ssh import bulk
from skyward.ssh.connection import MAX_PACKET, SSHConnection
from skyward.ssh.hosts import SSHHost
from skyward.ssh.keys import KnownHosts
from tests.ssh_hosts import ClientKey, SSHTestHost

MiB = 2**20


class _Drain:
    """The far end of a socket pair, keeping every byte it receives."""

    def __init__(self, sock: socket.socket) -> None:
        self.data = bytearray()
        self._sock = sock
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while chunk := self._sock.recv(1 << 20):
            self.data += chunk

    def finish(self) -> bytes:
        self._thread.join(10)
        return bytes(self.data)


def _packetizer(sock: socket.socket, key: bytes, iv: bytes) -> Packetizer:
    packetizer = Packetizer(sock)
    packetizer.set_outbound_cipher(AESGCM(key), 16, None, 16, None, aead=True, iv_out=iv)
    return packetizer


def _paramiko_bytes(key: bytes, iv: bytes, data: bytes, recipient: int, max_data: int) -> bytes:
    ours, theirs = socket.socketpair()
    drain = _Drain(theirs)
    packetizer = _packetizer(ours, key, iv)
    for offset in range(0, len(data), max_data):
        message = paramiko.Message()
        message.add_byte(bytes([bulk._MSG_CHANNEL_DATA]))
        message.add_int(recipient)
        message.add_string(data[offset : offset + max_data])
        packetizer.send_message(message)
    ours.close()
    return drain.finish()


def _bulk_bytes(key: bytes, iv: bytes, data: bytes, recipient: int, max_data: int) -> bytes:
    ours, theirs = socket.socketpair()
    drain = _Drain(theirs)
    packetizer = _packetizer(ours, key, iv)
    view = memoryview(data)
    batch = 3 * max_data  # whole packets per batch, as the window allows
    for offset in range(0, len(data), batch):
        bulk._write_packets(packetizer, view[offset : offset + batch], recipient, max_data)
    ours.close()
    return drain.finish()


@pytest.fixture
def zero_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding is random in both paths; zeros make their output comparable."""
    monkeypatch.setattr(os, "urandom", lambda n: bytes(n))


@pytest.mark.parametrize("size", [1, 32704, 32705, 100_000, 3 * 32704 + 1, 1_000_003])
def test_batched_packets_are_byte_for_byte_what_paramiko_sends(
    zero_padding: None, size: int
) -> None:
    key, iv = bytes(range(16)), bytes(range(100, 112))
    data = hashlib.shake_256(str(size).encode()).digest(size)
    expected = _paramiko_bytes(key, iv, data, 7, 32704)
    assert _bulk_bytes(key, iv, data, 7, 32704) == expected


def test_the_packetizer_counts_on_as_if_it_had_sent_them(zero_padding: None) -> None:
    ours, theirs = socket.socketpair()
    drain = _Drain(theirs)
    packetizer = _packetizer(ours, bytes(16), bytes(12))
    bulk._write_packets(packetizer, memoryview(bytes(100_000)), 1, 32704)
    get = bulk._getter(packetizer)
    assert get("sequence_number_out") == 4
    assert get("sent_packets") == 4
    assert int.from_bytes(get("iv_out")[4:], "big") == 4
    # and paramiko's next message continues the stream where the batch left it
    message = paramiko.Message()
    message.add_byte(b"\x02")  # MSG_IGNORE
    message.add_string(b"after")
    packetizer.send_message(message)
    ours.close()
    drain.finish()
    assert get("sequence_number_out") == 5
    assert int.from_bytes(get("iv_out")[4:], "big") == 5


def test_a_batch_past_the_rekey_threshold_asks_for_a_key_exchange() -> None:
    ours, theirs = socket.socketpair()
    drain = _Drain(theirs)
    packetizer = _packetizer(ours, bytes(16), bytes(12))
    packetizer.REKEY_BYTES = 64 * 1024  # type: ignore[misc]
    assert not packetizer.need_rekey()
    bulk._write_packets(packetizer, memoryview(bytes(100_000)), 1, 32704)
    assert packetizer.need_rekey()
    ours.close()
    drain.finish()


def test_the_fast_path_is_only_taken_for_an_aead_cipher() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = paramiko.Transport(ours)
        try:
            assert not bulk.fast_path_available(transport)  # no cipher yet
            transport.packetizer.set_outbound_cipher(
                AESGCM(bytes(16)), 16, None, 16, None, aead=True, iv_out=bytes(12)
            )
            assert bulk.fast_path_available(transport)
            transport.packetizer.set_outbound_cipher(object(), 16, None, 32, b"k" * 32)
            assert not bulk.fast_path_available(transport)
        finally:
            transport.close()


# -- through a real sshd ------------------------------------------------------------


@pytest.fixture
def host(ssh_hosts: Callable[[int], list[SSHTestHost]]) -> SSHTestHost:
    return ssh_hosts(1)[0]


@pytest.fixture
def connection(
    host: SSHTestHost, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> Iterator[SSHConnection]:
    target = SSHHost(
        host.address, user=host.user, port=host.port, identity_file=str(ssh_client_key.private_path)
    )
    conn = SSHConnection(target, KnownHosts((ssh_known_hosts,)), connect_timeout=20)
    yield conn
    conn.close()


def _remote_digest(connection: SSHConnection, data: bytes, limit: int | None = None) -> str:
    channel = connection.open_session()
    try:
        channel.exec_command("sha256sum")
        bulk.send_bulk(channel, data)
        channel.shutdown_write()
        output = b""
        while chunk := channel.recv(4096):
            output += chunk
        assert channel.recv_exit_status() == 0
    finally:
        channel.close()
    return output.split()[0].decode()


def test_sshd_receives_a_bulk_write_intact(connection: SSHConnection) -> None:
    assert bulk.fast_path_available(connection.ensure())
    data = os.urandom(24 * MiB + 12_345)
    assert _remote_digest(connection, data) == hashlib.sha256(data).hexdigest()


def test_keys_are_renewed_in_the_middle_of_a_bulk_write(connection: SSHConnection) -> None:
    transport = connection.ensure()
    transport.packetizer.REKEY_BYTES = 4 * MiB  # type: ignore[misc]
    data = os.urandom(16 * MiB)
    assert _remote_digest(connection, data) == hashlib.sha256(data).hexdigest()
    # a key exchange resets the count: fewer bytes counted than were sent
    assert bulk._getter(transport.packetizer)("sent_bytes") < 4 * MiB
    assert transport.is_active()


def test_without_an_aead_cipher_paramiko_sends_it(
    connection: SSHConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paramiko.Transport, "_preferred_ciphers", ("aes128-ctr",))
    transport = connection.ensure()
    assert transport.local_cipher == "aes128-ctr"
    assert not bulk.fast_path_available(transport)
    data = os.urandom(2 * MiB)
    assert _remote_digest(connection, data) == hashlib.sha256(data).hexdigest()


def test_a_reader_that_never_reads_times_the_write_out(connection: SSHConnection) -> None:
    channel = connection.open_session()
    try:
        channel.exec_command("sleep 30")  # never reads stdin: the window runs out
        channel.settimeout(1.0)
        with pytest.raises(TimeoutError):
            bulk.send_bulk(channel, bytes(8 * MiB))
    finally:
        channel.close()


def test_a_closed_channel_refuses_the_write(connection: SSHConnection) -> None:
    channel = connection.open_session()
    channel.exec_command("cat > /dev/null")
    channel.close()
    with pytest.raises(OSError):
        bulk.send_bulk(channel, bytes(MiB))


def test_results_come_back_in_large_packets(connection: SSHConnection) -> None:
    # sshd may send up to the maximum packet size the client announced: 255 KiB
    # packets cost paramiko's receive path an eighth of the per-packet Python. How big
    # sshd's packets really are depends on how much it read from the pipe at once (on a
    # loaded machine often 32 KiB), so what is checked is what we announce, and that a
    # large result arrives whole through it; the speed is `make bench`'s bulk section.
    size = 16 * MiB
    script = f"import hashlib, sys; sys.stdout.buffer.write(hashlib.shake_256(b'x').digest({size}))"
    channel = connection.open_session()
    try:
        assert channel.in_max_packet_size == MAX_PACKET == 255 * 1024
        channel.exec_command(f'python3 -c "{script}"')
        received = bytearray()
        while chunk := channel.recv(1 << 20):
            received += chunk
        assert channel.recv_exit_status() == 0
    finally:
        channel.close()
    assert received == hashlib.shake_256(b"x").digest(size)
