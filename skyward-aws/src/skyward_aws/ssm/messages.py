"""Session Manager's data-channel message (``ClientMessage``) and its JSON payloads.

The layout is the one AWS publishes in the session-manager-plugin (Apache-2.0,
``src/message/clientmessage.go``): a 120-byte big-endian header, then the payload.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
import time
import uuid
from typing import Any

from attrs import field, frozen

__all__ = [
    "ACKNOWLEDGE",
    "CHANNEL_CLOSED",
    "INPUT_STREAM",
    "OUTPUT_STREAM",
    "PAUSE_PUBLICATION",
    "START_PUBLICATION",
    "ClientMessage",
    "Flag",
    "PayloadType",
    "ProtocolError",
    "acknowledgement",
]

INPUT_STREAM = "input_stream_data"
OUTPUT_STREAM = "output_stream_data"
ACKNOWLEDGE = "acknowledge"
CHANNEL_CLOSED = "channel_closed"
START_PUBLICATION = "start_publication"
PAUSE_PUBLICATION = "pause_publication"

# HeaderLength, MessageType, SchemaVersion, CreatedDate, SequenceNumber, Flags,
# MessageId, PayloadDigest, PayloadType, PayloadLength.
_HEADER = struct.Struct(">I32sIQqQ16s32sII")
# What the HeaderLength field holds: the offset of PayloadLength, not the header size.
HEADER_LENGTH = _HEADER.size - 4


class PayloadType(enum.IntEnum):
    OUTPUT = 1
    ERROR = 2
    SIZE = 3
    PARAMETER = 4
    HANDSHAKE_REQUEST = 5
    HANDSHAKE_RESPONSE = 6
    HANDSHAKE_COMPLETE = 7
    ENC_CHALLENGE_REQUEST = 8
    ENC_CHALLENGE_RESPONSE = 9
    FLAG = 10
    STDERR = 11
    EXIT_CODE = 12


class Flag(enum.IntEnum):
    DISCONNECT_TO_PORT = 1
    TERMINATE_SESSION = 2
    CONNECT_TO_PORT_ERROR = 3


class ProtocolError(Exception):
    """A data-channel message that does not parse or whose digest is wrong."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@frozen
class ClientMessage:
    message_type: str
    sequence_number: int = 0
    payload: bytes = b""
    payload_type: int = 0
    flags: int = 0
    message_id: uuid.UUID = field(factory=uuid.uuid4)
    created_ms: int = field(factory=_now_ms)
    schema_version: int = 1

    def encode(self) -> bytes:
        # The id travels as its least significant half first (Java's UUID longs).
        raw_id = self.message_id.bytes
        header = _HEADER.pack(
            HEADER_LENGTH,
            self.message_type.encode().ljust(32, b" "),
            self.schema_version,
            self.created_ms,
            self.sequence_number,
            self.flags,
            raw_id[8:] + raw_id[:8],
            hashlib.sha256(self.payload).digest(),
            self.payload_type,
            len(self.payload),
        )
        return header + self.payload

    @classmethod
    def decode(cls, data: bytes) -> ClientMessage:
        if len(data) < _HEADER.size:
            raise ProtocolError(f"message of {len(data)} bytes is shorter than its header")
        (
            header_length,
            kind,
            version,
            created,
            sequence,
            flags,
            raw_id,
            digest,
            payload_type,
            length,
        ) = _HEADER.unpack_from(data)
        start = header_length + 4
        payload = bytes(data[start : start + length])
        if len(payload) != length:
            raise ProtocolError(f"payload is {len(payload)} bytes, header says {length}")
        if length and hashlib.sha256(payload).digest() != digest:
            raise ProtocolError("payload digest does not match")
        return cls(
            message_type=kind.strip(b"\x00").decode().strip(),
            sequence_number=sequence,
            payload=payload,
            payload_type=payload_type,
            flags=flags,
            message_id=uuid.UUID(bytes=raw_id[8:] + raw_id[:8]),
            created_ms=created,
            schema_version=version,
        )

    def json(self) -> Any:
        return json.loads(self.payload)


def acknowledgement(message: ClientMessage) -> ClientMessage:
    """The ``acknowledge`` answering one stream message (sequence 0, flags SYN|FIN)."""
    content = {
        "AcknowledgedMessageType": message.message_type,
        "AcknowledgedMessageId": str(message.message_id),
        "AcknowledgedMessageSequenceNumber": message.sequence_number,
        "IsSequentialMessage": True,
    }
    return ClientMessage(ACKNOWLEDGE, payload=json.dumps(content).encode(), flags=3)
