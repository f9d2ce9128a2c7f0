"""Bulk writes to a paramiko channel at close to the speed of its cipher.

paramiko sends channel data one SSH packet (at most 32 KiB, the size sshd allows) at a
time, and each packet costs a ``Message``, four copies of the data, a padding call, an
encryption and its own ``send`` system call, all in Python: about 40 µs of client CPU per
packet, which capped a 256 MiB argument at about 40% of raw TCP on the same link.

:func:`send_bulk` writes the same packets for a large buffer in batches: it reserves the
channel's send window for a batch, builds every packet of the batch into one buffer
(AES-GCM encrypts straight into it with ``encrypt_into``) and hands the batch to the
socket in one ``send`` loop. The packets on the wire are the ones paramiko would write
(same framing, padding rule, sequence numbers and nonces): sshd cannot tell the
difference, and host-key checking and the negotiated cipher are untouched.

It reaches into paramiko's packetizer (its output cipher state, sequence number and
write lock), so it checks first that the state it needs is there and that the
connection negotiated an AEAD cipher without compression; otherwise, or for small
writes, it is ``channel.sendall``. The keys' use limits are kept: the batch counts into
paramiko's rekey thresholds, and a key exchange in progress holds the next batch back
the way it holds paramiko's own messages.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from typing import Any

import paramiko
from paramiko.packet import Packetizer

__all__ = ["BULK_MIN", "fast_path_available", "send_bulk"]

BULK_MIN = 256 * 1024
"""Buffers shorter than this go through paramiko's own ``sendall`` (latency, not rate)."""
BATCH = 512 * 1024
"""Bytes of channel data per batch: large enough to amortise the Python per batch, small
enough that sshd gets data (and sends window back) while the next batch is built."""

_MSG_CHANNEL_DATA = 94
# packet_length, padding_length, message number, recipient channel, data length
_HEAD = struct.Struct(">IBBII")
_TAG = 16  # AES-GCM's authentication tag
_P = "_Packetizer__"  # paramiko's name-mangled private attributes
_STATE = (
    "write_lock",
    "socket",
    "block_engine_out",
    "block_size_out",
    "iv_out",
    "sequence_number_out",
    "sent_bytes",
    "sent_packets",
    "need_rekey",
    "aead_out",
    "etm_out",
    "compress_engine_out",
    "dump_packets",
    "closed",
    "keepalive_last",
    "received_bytes_overflow",
    "received_packets_overflow",
)


def fast_path_available(transport: paramiko.Transport) -> bool:
    """Whether the connection's output side is one :func:`send_bulk` can drive: an AEAD
    cipher (AES-GCM), no compression, no packet dumps, and the packetizer state it uses."""
    packetizer = transport.packetizer
    if not all(hasattr(packetizer, _P + name) for name in _STATE):
        return False
    get = _getter(packetizer)
    engine = get("block_engine_out")
    return (
        get("aead_out") is True
        and not get("etm_out")
        and get("compress_engine_out") is None
        and not get("dump_packets")
        and hasattr(engine, "encrypt_into")
        and isinstance(get("iv_out"), bytes)
        and len(get("iv_out")) == 12
    )


def send_bulk(channel: paramiko.Channel, data: bytes | bytearray | memoryview) -> None:
    """``channel.sendall(data)``, in batches of pre-built packets when the connection
    allows (see the module's docstring)."""
    view = memoryview(data).cast("B")
    transport = channel.get_transport()
    if len(view) < BULK_MIN or transport is None or not fast_path_available(transport):
        channel.sendall(view)  # type: ignore[arg-type]  # paramiko's stubs say bytes
        return
    offset = 0
    while offset < len(view):
        size, recipient, max_data = _reserve_window(channel, min(BATCH, len(view) - offset))
        _wait_clear_to_send(transport)
        try:
            _write_packets(transport.packetizer, view[offset : offset + size], recipient, max_data)
        finally:
            transport.clear_to_send_lock.release()
        offset += size


def _getter(packetizer: Packetizer) -> Any:
    return lambda name: getattr(packetizer, _P + name)


def _closed_error() -> OSError:
    return OSError(errno.EPIPE, "Socket is closed")


def _reserve_window(channel: paramiko.Channel, wanted: int) -> tuple[int, int, int]:
    """Take up to ``wanted`` bytes of the channel's send window (waiting for some, as
    ``Channel.send`` does, up to the channel's timeout); returns the bytes taken, the
    remote channel id and the most data one packet may carry."""
    with channel.lock:
        timeout = channel.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while channel.out_window_size == 0:
            if channel.closed or channel.eof_sent:
                raise _closed_error()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError()
            channel.out_buffer_cv.wait(left)
        if channel.closed or channel.eof_sent:
            raise _closed_error()
        size = min(wanted, channel.out_window_size)
        channel.out_window_size -= size
        # paramiko keeps 64 bytes of each packet for the headers; so do we.
        return size, channel.remote_chanid, channel.out_max_packet_size - 64


def _wait_clear_to_send(transport: paramiko.Transport) -> None:
    """Hold ``clear_to_send_lock`` while no key exchange is running (as paramiko's
    ``_send_user_message`` does for each message); the caller releases it."""
    start = time.monotonic()
    while True:
        transport.clear_to_send.wait(0.1)
        if not transport.is_active():
            raise _closed_error()
        transport.clear_to_send_lock.acquire()
        if transport.clear_to_send.is_set():
            return
        transport.clear_to_send_lock.release()
        if time.monotonic() > start + transport.clear_to_send_timeout:
            raise paramiko.SSHException("Key-exchange timed out waiting for key negotiation")


def _write_packets(packetizer: Packetizer, view: memoryview, recipient: int, max_data: int) -> None:
    """Encrypt ``view`` as CHANNEL_DATA packets into one buffer and send it; the
    packetizer's nonce, sequence number and counters move on as if it sent them."""
    get = _getter(packetizer)
    with get("write_lock"):
        engine = get("block_engine_out")
        block = get("block_size_out")
        iv = get("iv_out")
        fixed, counter = iv[:4], int.from_bytes(iv[4:], "big")
        count = -(-len(view) // max_data)
        # worst case per packet: length, header, padding (up to block + 3), tag
        out = bytearray(len(view) + count * (_HEAD.size + block + 3 + _TAG))
        out_view = memoryview(out)
        plain = bytearray(_HEAD.size + max_data + block + 3)
        plain_view = memoryview(plain)
        padding_bytes = os.urandom(count * (block + 3))
        position = offset = 0
        for index in range(count):
            chunk = view[offset : offset + max_data]
            size = len(chunk)
            payload = 9 + size  # message number, recipient, length, data
            # at least 4 bytes of padding up to a whole block; the length field is
            # the associated data, not encrypted (RFC 5647, section 7.3)
            padding = 3 + block - ((payload + 4) % block)
            length = payload + padding + 1
            _HEAD.pack_into(plain_view, 0, length, padding, _MSG_CHANNEL_DATA, recipient, size)
            plain_view[_HEAD.size : _HEAD.size + size] = chunk
            start = index * (block + 3)
            plain_view[_HEAD.size + size : 4 + length] = padding_bytes[start : start + padding]
            out_view[position : position + 4] = plain_view[:4]
            nonce = fixed + counter.to_bytes(8, "big")
            sealed = out_view[position + 4 : position + 4 + length + _TAG]
            engine.encrypt_into(nonce, plain_view[4 : 4 + length], plain_view[:4], sealed)
            counter += 1
            position += 4 + length + _TAG
            offset += size
        setattr(packetizer, _P + "iv_out", fixed + counter.to_bytes(8, "big"))
        sequence = get("sequence_number_out")
        setattr(packetizer, _P + "sequence_number_out", (sequence + count) & 0xFFFFFFFF)
        _send_all(packetizer, out_view[:position])
        sent_bytes = get("sent_bytes") + position
        sent_packets = get("sent_packets") + count
        setattr(packetizer, _P + "sent_bytes", sent_bytes)
        setattr(packetizer, _P + "sent_packets", sent_packets)
        rekey = sent_packets >= packetizer.REKEY_PACKETS or sent_bytes >= packetizer.REKEY_BYTES
        if rekey and not get("need_rekey"):
            # what Packetizer.send_message does when a key has been used enough
            setattr(packetizer, _P + "received_bytes_overflow", 0)
            setattr(packetizer, _P + "received_packets_overflow", 0)
            packetizer._trigger_rekey()  # type: ignore[attr-defined]  # not in the stubs


def _send_all(packetizer: Packetizer, view: memoryview) -> None:
    """``Packetizer.write_all`` for a memoryview: the transport's socket has a short
    timeout (its reader polls), so a full send buffer is a retry, not a failure."""
    get = _getter(packetizer)
    sock = get("socket")
    setattr(packetizer, _P + "keepalive_last", time.time())
    while view:
        try:
            sent = sock.send(view)
        except TimeoutError:
            if get("closed"):
                raise EOFError() from None
            continue
        except OSError as error:
            if error.errno == errno.EAGAIN and not get("closed"):
                continue
            raise EOFError() from error
        if sent <= 0:
            raise EOFError()
        view = view[sent:]
