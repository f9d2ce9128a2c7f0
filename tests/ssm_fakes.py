"""A fake of AWS Systems Manager Session Manager for port-forwarding sessions.

It plays both remote ends a session-manager client talks to: the AmazonSSM JSON API
(``StartSession`` / ``TerminateSession`` / ``ResumeSession``, answered by
:meth:`SessionManagerFake.handle_api` for a moto wrapper to route to) and the data channel
behind ``StreamUrl``: the Message Gateway Service websocket with the SSM agent's port plugin
on the far side, which dials ``resolve_target(instance, port)`` over TCP on loopback.

The wire protocol follows the open-source client, aws/session-manager-plugin (Go), and the
agent, aws/amazon-ssm-agent; it is implemented here from their published layout, not
copied, and independently of our own client so that the two can be tested against each
other:

* Every binary websocket message is a *client message*: a 120-byte header, all integers
  big-endian, then the payload::

      0   HeaderLength     u32  = 116 (the offset of PayloadLength)
      4   MessageType      32 bytes of ASCII, right-padded with spaces
      36  SchemaVersion    u32  = 1
      40  CreatedDate      u64  epoch milliseconds
      48  SequenceNumber   i64
      56  Flags            u64  (bit 0 SYN, bit 1 FIN; acknowledgements use 3)
      64  MessageId        16 bytes: the UUID's last 8 bytes, then its first 8
      80  PayloadDigest    32 bytes: SHA-256 of the payload
      112 PayloadType      u32
      116 PayloadLength    u32
      120 Payload

* The client opens the channel with one *text* message, the JSON ``OpenDataChannelInput``
  (``MessageSchemaVersion`` "1.0", ``RequestId``, ``TokenValue``, ``ClientId``,
  ``ClientVersion``).
* Stream messages (``input_stream_data`` from the client, ``output_stream_data`` from the
  agent) carry a per-direction ``SequenceNumber`` from 0, are reordered by the receiver,
  and are each answered with an ``acknowledge`` message (sequence 0, flags 3, JSON
  ``AcknowledgedMessageType`` / ``AcknowledgedMessageId`` / ``AcknowledgedMessageSequenceNumber``
  / ``IsSequentialMessage``). Unacknowledged stream messages are resent after a timeout.
* The agent starts with a handshake carried in stream messages: ``HandshakeRequest``
  (PayloadType 5, asking for ``SessionType`` "Port" with the document's properties, and
  ``KMSEncryption`` when :attr:`SessionManagerFake.kms_encryption` is set), the client's
  ``HandshakeResponse`` (6), then ``HandshakeComplete`` (7). Only then does the agent dial
  the port and pump bytes: ``Output`` payloads (1) of at most 1024 bytes both ways.
* ``Flag`` payloads (10) are 4-byte big-endian integers: 1 DisconnectToPort,
  2 TerminateSession, 3 ConnectToPortError. ``channel_closed`` (JSON ``MessageId``,
  ``CreatedDate``, ``DestinationId``, ``SessionId``, ``MessageType``, ``SchemaVersion``,
  ``Output``) ends a session; ``pause_publication`` / ``start_publication`` tell the client
  that the far side went away and came back.

Everything the client sends is validated; what is wrong lands in
:attr:`SessionManagerFake.protocol_errors`, which tests assert stays empty. Faults can be
injected into the next session to open its data channel: :meth:`~SessionManagerFake.drop_once`,
:meth:`~SessionManagerFake.reorder_output`, :meth:`~SessionManagerFake.pause_for`,
:meth:`~SessionManagerFake.refuse_port`.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import secrets
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

# --------------------------------------------------------------------------------------
# wire format
# --------------------------------------------------------------------------------------

HEADER_LENGTH = 116
"""The HeaderLength field: the offset of PayloadLength (the plugin writes exactly this)."""
PAYLOAD_OFFSET = HEADER_LENGTH + 4
MESSAGE_TYPE_LENGTH = 32
STREAM_DATA_PAYLOAD_SIZE = 1024
"""The plugin and the agent read their sockets 1024 bytes at a time (config.go)."""
MESSAGE_SCHEMA_VERSION = "1.0"
ACK_FLAGS = 3
SYN_FLAG = 1

INPUT_STREAM_DATA = "input_stream_data"
OUTPUT_STREAM_DATA = "output_stream_data"
ACKNOWLEDGE = "acknowledge"
CHANNEL_CLOSED = "channel_closed"
START_PUBLICATION = "start_publication"
PAUSE_PUBLICATION = "pause_publication"
MESSAGE_TYPES = frozenset(
    {
        INPUT_STREAM_DATA,
        OUTPUT_STREAM_DATA,
        ACKNOWLEDGE,
        CHANNEL_CLOSED,
        START_PUBLICATION,
        PAUSE_PUBLICATION,
    }
)

# HL, MessageType, SchemaVersion, CreatedDate, SequenceNumber, Flags, MessageId,
# PayloadDigest, PayloadType, PayloadLength: 120 bytes.
_HEADER = struct.Struct(">I32sIQqQ16s32sII")
assert _HEADER.size == PAYLOAD_OFFSET


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


class ActionStatus(enum.IntEnum):
    SUCCESS = 1
    FAILED = 2
    UNSUPPORTED = 3


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class ClientMessage:
    """One binary data-channel message (the plugin's ``ClientMessage``, the agent's
    ``AgentMessage``: the same layout)."""

    message_type: str
    sequence_number: int
    payload: bytes = b""
    payload_type: int = 0
    flags: int = 0
    message_id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_date: int = field(default_factory=now_ms)
    schema_version: int = 1


class MessageFormatError(ValueError):
    """Bytes that cannot be read as a client message at all."""


def uuid_to_wire(value: uuid.UUID) -> bytes:
    # The Go code writes the UUID as two longs, least significant half first.
    return value.bytes[8:] + value.bytes[:8]


def uuid_from_wire(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=raw[8:16] + raw[0:8])


def encode_message(message: ClientMessage) -> bytes:
    name = message.message_type.encode("ascii")
    if len(name) > MESSAGE_TYPE_LENGTH:
        raise ValueError(f"message type {message.message_type!r} is longer than 32 bytes")
    header = _HEADER.pack(
        HEADER_LENGTH,
        name.ljust(MESSAGE_TYPE_LENGTH, b" "),
        message.schema_version,
        message.created_date,
        message.sequence_number,
        message.flags,
        uuid_to_wire(message.message_id),
        hashlib.sha256(message.payload).digest(),
        message.payload_type,
        len(message.payload),
    )
    return header + message.payload


def decode_message(raw: bytes) -> tuple[ClientMessage, list[str]]:
    """Read a client message and list what is wrong with it (empty when it is well formed).

    Raises :class:`MessageFormatError` when the message cannot be used at all (short,
    wrong HeaderLength, PayloadLength or PayloadDigest), as the agent drops those.
    """
    if len(raw) < PAYLOAD_OFFSET:
        raise MessageFormatError(f"{len(raw)} bytes is shorter than the 120-byte header")
    (
        header_length,
        name,
        schema_version,
        created_date,
        sequence_number,
        flags,
        message_id,
        digest,
        payload_type,
        payload_length,
    ) = _HEADER.unpack_from(raw)
    if header_length != HEADER_LENGTH:
        # Readers locate the payload with this field: any other value shifts it.
        raise MessageFormatError(f"HeaderLength is {header_length}, expected {HEADER_LENGTH}")
    problems: list[str] = []
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        raise MessageFormatError(f"MessageType {name!r} is not ASCII") from None
    message_type = text.rstrip(" ")
    if "\x00" in message_type:
        problems.append(f"MessageType {name!r} must be padded with spaces, not NUL bytes")
        message_type = message_type.strip("\x00 ")
    payload = raw[PAYLOAD_OFFSET:]
    # The agent's Validate() rejects these outright: the message is not used.
    if payload_length != len(payload):
        raise MessageFormatError(
            f"PayloadLength is {payload_length} but {len(payload)} bytes follow"
        )
    if digest != hashlib.sha256(payload).digest():
        raise MessageFormatError("PayloadDigest is not the SHA-256 of the payload")
    if schema_version != 1:
        problems.append(f"SchemaVersion is {schema_version}, expected 1")
    if created_date == 0:
        problems.append("CreatedDate is missing")
    elif abs(created_date - now_ms()) > 86_400_000:
        problems.append(f"CreatedDate {created_date} is not the current epoch in milliseconds")
    message = ClientMessage(
        message_type=message_type,
        sequence_number=sequence_number,
        payload=payload,
        payload_type=payload_type,
        flags=flags,
        message_id=uuid_from_wire(message_id),
        created_date=created_date,
        schema_version=schema_version,
    )
    if message.message_id.int == 0:
        problems.append("MessageId is the nil UUID")
    if message_type not in MESSAGE_TYPES:
        problems.append(f"unknown MessageType {message_type!r}")
    return message, problems


def flag_payload(flag: Flag) -> bytes:
    return struct.pack(">I", flag)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _version_at_least(version: str, minimum: str) -> bool:
    have, want = _version_tuple(version), _version_tuple(minimum)
    width = max(len(have), len(want))
    return have + (0,) * (width - len(have)) >= want + (0,) * (width - len(want))


# --------------------------------------------------------------------------------------
# documents
# --------------------------------------------------------------------------------------

SSH_DOCUMENT = "AWS-StartSSHSession"
PORT_FORWARDING_DOCUMENT = "AWS-StartPortForwardingSession"
LOCAL_PORT_FORWARDING = "LocalPortForwarding"
MUX_CLIENT_VERSION = "1.1.70"
"""The agent multiplexes LocalPortForwarding sessions (smux) for clients from this version
on (amazon-ssm-agent, plugins/port/port.go); this fake only does basic forwarding."""

# Parameter defaults of the two AWS-owned documents, and the plugin properties
# ("inputs") each builds from them.
_DOCUMENT_DEFAULTS: dict[str, dict[str, str]] = {
    SSH_DOCUMENT: {"portNumber": "22"},
    PORT_FORWARDING_DOCUMENT: {"portNumber": "80", "localPortNumber": "0"},
}


def _document_properties(document: str, parameters: dict[str, str]) -> dict[str, str]:
    if document == SSH_DOCUMENT:
        return {"portNumber": parameters["portNumber"]}
    return {
        "portNumber": parameters["portNumber"],
        "type": LOCAL_PORT_FORWARDING,
        "localPortNumber": parameters["localPortNumber"],
    }


# --------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------


@dataclass
class _Outgoing:
    """A stream message the agent sent (or holds back) and that is not acknowledged yet."""

    raw: bytes
    message_id: uuid.UUID
    sent_at: float | None  # None while held back by reorder_output


@dataclass
class _Faults:
    drop: set[int] = field(default_factory=set)
    reorder_first: int | None = None
    pause: tuple[float, int] | None = None  # (seconds, after this many output messages)
    refuse_port: bool = False


@dataclass
class _PendingClose:
    deadline: float
    closed_by: str
    output: str


class _Handshake(enum.Enum):
    NOT_STARTED = "not-started"
    REQUESTED = "requested"
    COMPLETE = "complete"
    FAILED = "failed"


class FakeSession:
    """One Session Manager session: the service's record and the agent's port plugin.

    Public attributes are for tests to read; the session outlives websocket reconnects
    (``ResumeSession``), like the real one, and keeps its sequence numbers across them.
    """

    def __init__(
        self,
        fake: SessionManagerFake,
        *,
        session_id: str,
        target: str,
        port: int,
        document_name: str,
        properties: dict[str, str],
        token: str,
        stream_url: str,
    ) -> None:
        self._fake = fake
        self.session_id = session_id
        self.target = target
        self.port = port
        self.document_name = document_name
        self.properties = properties
        self.token = token
        self.stream_url = stream_url
        self.terminated = False
        self.closed_by: str | None = None
        """Who ended the session: "client-flag" (TerminateSession flag), "client-disconnect"
        (DisconnectToPort on an SSH session), "api" (TerminateSession), "agent" (the target
        closed the TCP connection), "port-error" (the agent could not dial the port),
        "handshake-failed", "handshake-timeout" or "stop" (the fake was stopped)."""
        self.close_output = ""
        """The ``Output`` of the channel_closed message sent to the client."""
        self.opened_with: dict[str, Any] | None = None
        """The latest open-data-channel JSON the client sent."""
        self.connections = 0
        self.handshake_request: dict[str, Any] | None = None
        self.handshake_response: dict[str, Any] | None = None
        self.bytes_in = 0
        """Bytes the client sent that the agent wrote to the target."""
        self.bytes_out = 0
        """Bytes the agent read from the target and sent to the client."""
        self.input_while_paused: list[int] = []
        """Sequence numbers of input_stream_data received between pause_publication and
        start_publication (dropped unacknowledged: MGS had nowhere to deliver them)."""
        self.dropped: list[int] = []
        """Sequence numbers of input dropped by :meth:`SessionManagerFake.drop_once`."""
        self.flags_received: list[int] = []
        self.retransmissions = 0
        """How many times the agent resent an unacknowledged output message."""
        self.channel_closed_sent = False

        self._lock = threading.RLock()
        self._out_lock = threading.RLock()  # orders sequence numbers and websocket sends
        self._unpaused = threading.Condition(self._lock)
        self._ws: ServerConnection | None = None
        self._faults = _Faults()
        self._faults_taken = False
        self._handshake = _Handshake.NOT_STARTED
        self._handshake_started = 0.0
        self._next_out = 0
        self._unacked: dict[int, _Outgoing] = {}
        self._sent_ids: dict[int, uuid.UUID] = {}
        self._held: int | None = None
        self._held_since = 0.0
        self._expected_in = 0
        self._incoming: dict[int, ClientMessage] = {}
        self._early_output_reported: set[int] = set()
        self._paused = False
        self._pause_until = 0.0
        self._pending_close: _PendingClose | None = None
        self._tcp: socket.socket | None = None
        self._client_version = ""

    # ---------------------------------------------------------------- introspection

    @property
    def client_acked_all(self) -> bool:
        """Every output message the agent sent was acknowledged by the client."""
        with self._lock:
            return not self._unacked

    @property
    def unacked(self) -> list[int]:
        with self._lock:
            return sorted(self._unacked)

    @property
    def handshake_complete(self) -> bool:
        return self._handshake is _Handshake.COMPLETE

    @property
    def paused(self) -> bool:
        return self._paused

    def _error(self, text: str) -> None:
        self._fake._protocol_error(f"{self.session_id}: {text}")

    # ---------------------------------------------------------------- websocket

    def _attach(self, ws: ServerConnection, opened: dict[str, Any]) -> None:
        with self._lock:
            previous, self._ws = self._ws, ws
            self.opened_with = opened
            self.connections += 1
            if not self._faults_taken:
                self._faults = self._fake._take_faults()
                self._faults_taken = True
            start = self._handshake is _Handshake.NOT_STARTED
            if start:
                self._handshake = _Handshake.REQUESTED
                self._handshake_started = time.monotonic()
        if previous is not None:
            # MGS keeps one client connection per session: a reconnect replaces the old one.
            previous.close(1000, "replaced by a new connection")
        if start:
            self._send_handshake_request()

    def _detach(self, ws: ServerConnection) -> None:
        with self._lock:
            if self._ws is ws:
                self._ws = None

    def _send_raw(self, raw: bytes) -> bool:
        with self._out_lock:
            ws = self._ws
            if ws is None:
                return False
            try:
                ws.send(raw)
            except (ConnectionClosed, OSError):
                return False
            return True

    def _send_control(self, message_type: str, payload: bytes) -> None:
        # Messages outside the stream (acks, channel_closed, publication) use sequence
        # number 0 and flags 3, as the agent's sendAgentMessage does.
        message = ClientMessage(message_type, 0, payload, flags=ACK_FLAGS)
        self._send_raw(encode_message(message))

    def _send_stream(self, payload_type: PayloadType, payload: bytes) -> int:
        """Send an output_stream_data message with the next sequence number."""
        with self._out_lock:
            with self._lock:
                sequence = self._next_out
                self._next_out += 1
            message = ClientMessage(
                OUTPUT_STREAM_DATA,
                sequence,
                payload,
                payload_type=payload_type,
                flags=SYN_FLAG if sequence == 0 else 0,
            )
            raw = encode_message(message)
            outgoing = _Outgoing(raw, message.message_id, None)
            with self._lock:
                self._unacked[sequence] = outgoing
                self._sent_ids[sequence] = message.message_id
                faults = self._faults
            if faults.reorder_first == sequence:
                with self._lock:
                    self._held, self._held_since = sequence, time.monotonic()
            elif faults.reorder_first is not None and self._held == sequence - 1:
                self._transmit(sequence, outgoing)
                self._release_held()
            else:
                self._transmit(sequence, outgoing)
            self._maybe_pause(sequence + 1)
            return sequence

    def _transmit(self, sequence: int, outgoing: _Outgoing) -> None:
        with self._out_lock:
            outgoing.sent_at = time.monotonic()
            self._send_raw(outgoing.raw)

    def _release_held(self) -> None:
        with self._out_lock:
            with self._lock:
                held, self._held = self._held, None
                self._faults.reorder_first = None
                outgoing = self._unacked.get(held) if held is not None else None
            if held is not None and outgoing is not None:
                self._transmit(held, outgoing)

    def _maybe_pause(self, sent: int) -> None:
        with self._lock:
            pause = self._faults.pause
            if pause is None or sent != pause[1]:
                return
            self._faults.pause = None
            self._paused = True
            self._pause_until = time.monotonic() + pause[0]
        self._send_control(PAUSE_PUBLICATION, b"")

    def _end_pause(self) -> None:
        with self._lock:
            self._paused = False
            self._unpaused.notify_all()
        self._send_control(START_PUBLICATION, b"")

    def _send_ack(self, message: ClientMessage) -> None:
        content = {
            "AcknowledgedMessageType": message.message_type,
            "AcknowledgedMessageId": str(message.message_id),
            "AcknowledgedMessageSequenceNumber": message.sequence_number,
            "IsSequentialMessage": True,
        }
        self._send_control(ACKNOWLEDGE, _json_bytes(content))

    # ---------------------------------------------------------------- inbound

    def _on_binary(self, raw: bytes) -> None:
        try:
            message, problems = decode_message(raw)
        except MessageFormatError as exc:
            self._error(f"unreadable message ({exc}): {raw[:120].hex()}")
            return
        for problem in problems:
            self._error(f"{message.message_type} #{message.sequence_number}: {problem}")
        if message.message_type == ACKNOWLEDGE:
            self._on_ack(message)
        elif message.message_type == INPUT_STREAM_DATA:
            self._on_input(message)
        elif message.message_type in MESSAGE_TYPES:
            self._error(f"a client does not send {message.message_type} messages")

    def _on_ack(self, message: ClientMessage) -> None:
        if message.sequence_number != 0 or message.flags != ACK_FLAGS:
            self._error(
                "acknowledge messages carry SequenceNumber 0 and Flags 3, got "
                f"{message.sequence_number} and {message.flags}"
            )
        try:
            content = json.loads(message.payload)
        except ValueError:
            self._error(f"acknowledge payload is not JSON: {message.payload[:200]!r}")
            return
        expected_fields: dict[str, type] = {
            "AcknowledgedMessageType": str,
            "AcknowledgedMessageId": str,
            "AcknowledgedMessageSequenceNumber": int,
            "IsSequentialMessage": bool,
        }
        if not isinstance(content, dict) or any(
            not isinstance(content.get(key), kind) for key, kind in expected_fields.items()
        ):
            self._error(f"acknowledge payload lacks a field or has a wrong type: {content!r}")
            return
        if content["AcknowledgedMessageType"] != OUTPUT_STREAM_DATA:
            self._error(f"acknowledged a {content['AcknowledgedMessageType']!r} message")
        if content["IsSequentialMessage"] is not True:
            self._error("IsSequentialMessage must be true")
        sequence = content["AcknowledgedMessageSequenceNumber"]
        with self._lock:
            sent_id = self._sent_ids.get(sequence)
            if sent_id is None:
                self._error(f"acknowledged output #{sequence}, which the agent never sent")
                return
            if content["AcknowledgedMessageId"] != str(sent_id):
                self._error(
                    f"acknowledged output #{sequence} as {content['AcknowledgedMessageId']!r}, "
                    f"but its MessageId is {sent_id}"
                )
            self._unacked.pop(sequence, None)

    def _on_input(self, message: ClientMessage) -> None:
        sequence = message.sequence_number
        if message.flags not in (0, SYN_FLAG):
            self._error(f"input #{sequence} has Flags {message.flags}")
        if sequence < 0:
            self._error(f"input has a negative SequenceNumber {sequence}")
            return
        with self._lock:
            if sequence in self._faults.drop:
                self._faults.drop.discard(sequence)
                self.dropped.append(sequence)
                return
            if self._paused:
                self.input_while_paused.append(sequence)
                return
            in_order = sequence == self._expected_in
            if in_order:
                if not self._ready_for(message):
                    return  # not acknowledged: the client resends it
                self._expected_in += 1
            elif sequence > self._expected_in:
                self._incoming.setdefault(sequence, message)
            # else: a duplicate of a processed message, acknowledged again and ignored
        self._send_ack(message)
        if in_order:
            self._process(message)
            self._drain_incoming()

    def _drain_incoming(self) -> None:
        while True:
            with self._lock:
                message = self._incoming.get(self._expected_in)
                if message is None or not self._ready_for(message):
                    return
                del self._incoming[self._expected_in]
                self._expected_in += 1
            self._process(message)

    def _ready_for(self, message: ClientMessage) -> bool:
        """Whether the agent can take the message now (the port plugin rejects data,
        unacknowledged, until the handshake is over and the port is dialled)."""
        if message.payload_type != PayloadType.OUTPUT:
            return True
        if self._handshake is not _Handshake.COMPLETE:
            if message.sequence_number not in self._early_output_reported:
                self._early_output_reported.add(message.sequence_number)
                self._error(
                    f"input #{message.sequence_number} carries data before HandshakeComplete"
                )
            return False
        return True

    def _process(self, message: ClientMessage) -> None:
        if self.terminated:
            return
        kind = message.payload_type
        if kind == PayloadType.HANDSHAKE_RESPONSE:
            self._on_handshake_response(message)
        elif kind == PayloadType.OUTPUT:
            self._write_target(message.payload)
        elif kind == PayloadType.FLAG:
            self._on_flag(message)
        else:
            self._error(
                f"input #{message.sequence_number} has PayloadType {kind}, which a "
                "port-forwarding client does not send"
            )

    def _write_target(self, data: bytes) -> None:
        if len(data) > STREAM_DATA_PAYLOAD_SIZE:
            self._error(
                f"input payload of {len(data)} bytes exceeds the {STREAM_DATA_PAYLOAD_SIZE}-byte "
                "chunks the plugin sends"
            )
        with self._lock:
            tcp = self._tcp
        if tcp is None and self.properties.get("type") == LOCAL_PORT_FORWARDING:
            # After DisconnectToPort the port plugin redials on the next data.
            self._dial_target()
            with self._lock:
                tcp = self._tcp
        if tcp is None:
            return
        try:
            tcp.sendall(data)
        except OSError:
            return  # the pump sees the connection end and closes the channel
        with self._lock:
            self.bytes_in += len(data)

    def _on_flag(self, message: ClientMessage) -> None:
        if len(message.payload) != 4:
            self._error(f"Flag payload must be 4 bytes, got {message.payload!r}")
            return
        (value,) = struct.unpack(">I", message.payload)
        self.flags_received.append(value)
        if value == Flag.TERMINATE_SESSION:
            self.terminate("client-flag", notify=False)
        elif value == Flag.DISCONNECT_TO_PORT:
            self._close_tcp()
            if self.properties.get("type") != LOCAL_PORT_FORWARDING:
                # The SSH document's basic port session ends when its one connection does.
                self.terminate("client-disconnect", notify=True)
        else:
            self._error(f"a client does not send Flag {value}")

    # ---------------------------------------------------------------- handshake

    def _send_handshake_request(self) -> None:
        actions: list[dict[str, Any]] = [
            {
                "ActionType": "SessionType",
                "ActionParameters": {"SessionType": "Port", "Properties": self.properties},
            }
        ]
        if self._fake.kms_encryption:
            actions.append(
                {
                    "ActionType": "KMSEncryption",
                    "ActionParameters": {"KMSKeyId": self._fake.kms_key_id},
                }
            )
        request = {"AgentVersion": self._fake.agent_version, "RequestedClientActions": actions}
        self.handshake_request = request
        self._send_stream(PayloadType.HANDSHAKE_REQUEST, _json_bytes(request))

    def _on_handshake_response(self, message: ClientMessage) -> None:
        if self._handshake is not _Handshake.REQUESTED:
            self._error(f"unexpected HandshakeResponse in state {self._handshake.value}")
            return
        try:
            response = json.loads(message.payload)
        except ValueError:
            self._error(f"HandshakeResponse is not JSON: {message.payload[:200]!r}")
            response = None
        if not isinstance(response, dict):
            self._fail_handshake("HandshakeResponse is not a JSON object")
            return
        self.handshake_response = response
        client_version = response.get("ClientVersion")
        if not isinstance(client_version, str) or not client_version:
            self._error("HandshakeResponse lacks ClientVersion")
            client_version = ""
        self._client_version = client_version
        errors = response.get("Errors")
        if errors is not None and not (
            isinstance(errors, list) and all(isinstance(e, str) for e in errors)
        ):
            self._error(f"HandshakeResponse Errors must be a list of strings, got {errors!r}")
        processed = response.get("ProcessedClientActions")
        if not isinstance(processed, list):
            self._fail_handshake("HandshakeResponse lacks ProcessedClientActions")
            return
        by_type: dict[str, dict[str, Any]] = {}
        for action in processed:
            if not isinstance(action, dict) or not isinstance(action.get("ActionType"), str):
                self._error(f"malformed ProcessedClientAction {action!r}")
                continue
            if not isinstance(action.get("ActionStatus"), int):
                self._error(f"ProcessedClientAction without an integer ActionStatus: {action!r}")
            by_type[action["ActionType"]] = action
        failures: list[str] = []
        requested = self.handshake_request or {}
        for wanted in requested.get("RequestedClientActions", []):
            kind = wanted["ActionType"]
            action = by_type.get(kind)
            if action is None:
                self._error(f"HandshakeResponse does not answer the {kind} action")
                failures.append(f"{kind} was not processed by the client")
                continue
            status = action.get("ActionStatus")
            if status == ActionStatus.SUCCESS and kind == "KMSEncryption":
                # The agent would now expect a KMS data key and an encryption challenge
                # exchange, which a client without KMS support cannot perform.
                self._error("the client claimed to set up KMSEncryption")
            if status != ActionStatus.SUCCESS or kind == "KMSEncryption":
                failures.append(
                    f"{kind} failed on client with status {status} error: {action.get('Error')}"
                )
        if (
            self.properties.get("type") == LOCAL_PORT_FORWARDING
            and client_version
            and _version_at_least(client_version, MUX_CLIENT_VERSION)
        ):
            self._error(
                f"ClientVersion {client_version} >= {MUX_CLIENT_VERSION} on "
                f"{PORT_FORWARDING_DOCUMENT}: a real agent would multiplex the stream with "
                f"smux, which this fake does not emulate (use {SSH_DOCUMENT} or report an "
                "older ClientVersion)"
            )
        if failures:
            self._fail_handshake("; ".join(failures))
            return
        elapsed_ns = int((time.monotonic() - self._handshake_started) * 1e9)
        with self._lock:
            self._handshake = _Handshake.COMPLETE
        complete = {"HandshakeTimeToComplete": elapsed_ns, "CustomerMessage": ""}
        self._send_stream(PayloadType.HANDSHAKE_COMPLETE, _json_bytes(complete))
        self._dial_target()

    def _fail_handshake(self, reason: str) -> None:
        with self._lock:
            self._handshake = _Handshake.FAILED
        self.terminate("handshake-failed", reason, notify=True)

    # ---------------------------------------------------------------- target

    def _dial_target(self) -> None:
        host, port = "127.0.0.1", self.port
        error: str | None = None
        sock: socket.socket | None = None
        if self._faults.refuse_port:
            self._faults.refuse_port = False
            error = "connect: connection refused"
        else:
            try:
                host, port = self._fake.resolve_target(self.target, self.port)
                sock = socket.create_connection((host, port), timeout=5)
                sock.settimeout(None)
            except OSError as exc:
                error = f"connect: {exc.strerror or exc}"
        if sock is None:
            # The agent tells the client with a ConnectToPortError flag, then the session
            # ends with the dial error.
            self._send_stream(PayloadType.FLAG, flag_payload(Flag.CONNECT_TO_PORT_ERROR))
            output = f"Unable to connect to specified port: dial tcp {host}:{port}: {error}"
            self._close_when_drained("port-error", output, 1.0)
            return
        with self._lock:
            if self.terminated:
                sock.close()
                return
            self._tcp = sock
        self._fake._start_thread(f"ssm-fake-pump-{self.session_id}", self._pump, sock)

    def _pump(self, sock: socket.socket) -> None:
        """Read the target and send what it says as output, 1024 bytes at a time."""
        while True:
            with self._lock:
                while self._paused and not self.terminated:
                    self._unpaused.wait(0.1)
                if self.terminated or self._tcp is not sock:
                    return
            try:
                data = sock.recv(STREAM_DATA_PAYLOAD_SIZE)
                error = ""
            except OSError as exc:
                data, error = b"", str(exc)
            if data:
                with self._lock:
                    self.bytes_out += len(data)
                self._send_stream(PayloadType.OUTPUT, data)
                continue
            with self._lock:
                if self.terminated or self._tcp is not sock:
                    return  # closed on purpose (flag, API, stop)
            # The target ended the connection: the agent's port plugin exits and the
            # session closes once what was read has been delivered.
            self._close_tcp()
            self._close_when_drained("agent", error, self._fake.drain_timeout)
            return

    def _close_tcp(self) -> None:
        with self._lock:
            tcp, self._tcp = self._tcp, None
        if tcp is not None:
            with contextlib.suppress(OSError):
                tcp.shutdown(socket.SHUT_RDWR)
            tcp.close()

    def _close_when_drained(self, closed_by: str, output: str, within: float) -> None:
        with self._lock:
            if self._pending_close is None:
                self._pending_close = _PendingClose(time.monotonic() + within, closed_by, output)

    # ---------------------------------------------------------------- ending

    def terminate(self, closed_by: str, output: str = "", *, notify: bool = True) -> None:
        """End the session: close the target connection, tell the client with
        channel_closed when ``notify``, and close the websocket."""
        with self._lock:
            if self.terminated:
                return
            self.terminated = True
            self.closed_by = closed_by
            self.close_output = output
            self._unpaused.notify_all()
            ws = self._ws
        self._close_tcp()
        if notify and ws is not None:
            closed = {
                "MessageId": str(uuid.uuid4()),
                "CreatedDate": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "DestinationId": self.target,
                "SessionId": self.session_id,
                "MessageType": CHANNEL_CLOSED,
                "SchemaVersion": 1,
                "Output": output,
            }
            self._send_control(CHANNEL_CLOSED, _json_bytes(closed))
            self.channel_closed_sent = True
        if ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError, RuntimeError):
                ws.close(1000, "session terminated")

    def _tick(self, now: float) -> None:
        """Timers, run by the fake's scheduler thread every few tens of milliseconds."""
        with self._lock:
            if self.terminated:
                return
            pending = self._pending_close
            close_now = pending is not None and (not self._unacked or now >= pending.deadline)
            end_pause = self._paused and now >= self._pause_until
            handshake_timed_out = (
                self._handshake is _Handshake.REQUESTED
                and now - self._handshake_started > self._fake.handshake_timeout
            )
            flush_held = self._held is not None and now - self._held_since > 0.5
            resend: tuple[int, _Outgoing] | None = None
            if not self._paused and self._ws is not None:
                sent = [(seq, out) for seq, out in self._unacked.items() if out.sent_at is not None]
                if sent:
                    seq, out = min(sent, key=lambda item: item[0])
                    assert out.sent_at is not None
                    if now - out.sent_at > self._fake.retransmit_timeout:
                        resend = (seq, out)
        if close_now and pending is not None:
            self.terminate(pending.closed_by, pending.output, notify=True)
            return
        if handshake_timed_out:
            self.terminate(
                "handshake-timeout",
                "Handshake timed out. Please ensure that you have the latest version of the "
                "session manager plugin.",
                notify=True,
            )
            return
        if end_pause:
            self._end_pause()
        if flush_held:
            self._release_held()
        if resend is not None:
            self.retransmissions += 1
            self._transmit(*resend)


# --------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------


def _api_error(code: str, message: str, status: int = 400) -> tuple[int, dict[str, Any]]:
    # SSM's modelled exceptions (TargetNotConnected, InvalidDocument, ...) have a
    # "Message" member, which the JSON 1.1 protocol serializes under that name.
    return status, {"__type": code, "Message": message}


class SessionManagerFake:
    """The AmazonSSM session API and the data-channel websocket, on loopback.

    ``resolve_target(instance_id, port) -> (host, port)`` is where the agent dials;
    ``check_target(instance_id)`` returns ``None`` when the instance's agent is registered,
    else the message of the ``TargetNotConnected`` error ``StartSession`` answers with.
    """

    def __init__(
        self,
        *,
        resolve_target: Callable[[str, int], tuple[str, int]],
        check_target: Callable[[str], str | None] | None = None,
        agent_version: str = "3.3.987.0",
        retransmit_timeout: float = 0.3,
        handshake_timeout: float = 15.0,
        drain_timeout: float = 2.0,
    ) -> None:
        self.resolve_target = resolve_target
        self.check_target = check_target
        self.agent_version = agent_version
        self.retransmit_timeout = retransmit_timeout
        """Seconds before the agent resends its oldest unacknowledged output (the agent's
        adaptive timeout starts at 200 ms and is capped at 1 s)."""
        self.handshake_timeout = handshake_timeout
        self.drain_timeout = drain_timeout
        """After the target closes, how long the agent waits for the client to acknowledge
        the remaining output before it sends channel_closed."""
        self.kms_encryption = False
        """When set, handshakes also request KMSEncryption (which the fake cannot do: the
        client has to refuse, and the session then ends like the agent ends it)."""
        self.kms_key_id = (
            "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
        )
        self.sessions: list[FakeSession] = []
        self.protocol_errors: list[str] = []
        """Everything a client sent that the protocol does not allow."""
        self.rejected: list[str] = []
        """Data-channel connections refused (unknown session, wrong token)."""
        self._lock = threading.Lock()
        self._by_id: dict[str, FakeSession] = {}
        self._faults = _Faults()
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.port = 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> SessionManagerFake:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = serve(
            self._handle_connection,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            compression=None,  # like the plugin's gorilla/websocket: no permessage-deflate
            ping_interval=None,
            close_timeout=1,
            max_size=2**20,
        )
        self.port = self._server.socket.getsockname()[1]
        self._start_thread("ssm-fake-server", self._server.serve_forever)
        self._start_thread("ssm-fake-timers", self._timers)
        return self

    def stop(self) -> None:
        """Close every session, websocket and TCP connection, and join every thread."""
        self._stopping.set()
        for session in list(self.sessions):
            session.terminate("stop", notify=False)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)

    def __enter__(self) -> SessionManagerFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_thread(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _timers(self) -> None:
        while not self._stopping.wait(0.02):
            now = time.monotonic()
            for session in list(self.sessions):
                try:
                    session._tick(now)
                except Exception as exc:  # surfaced to tests, never swallowed
                    self._protocol_error(f"fake internal error in timers: {exc!r}")

    def _protocol_error(self, text: str) -> None:
        with self._lock:
            self.protocol_errors.append(text)

    # ---------------------------------------------------------------- fault injection

    def _take_faults(self) -> _Faults:
        with self._lock:
            faults, self._faults = self._faults, _Faults()
        return faults

    def drop_once(self, sequence_number: int) -> None:
        """The next session to open ignores (neither processes nor acknowledges) the first
        copy of the client's input_stream_data with this sequence number."""
        with self._lock:
            self._faults.drop.add(sequence_number)

    def reorder_output(self, first: int) -> None:
        """The next session sends its output messages ``first`` and ``first + 1`` swapped
        (sequence numbers count the handshake messages: data starts at 2)."""
        with self._lock:
            self._faults.reorder_first = first

    def pause_for(self, seconds: float, after: int) -> None:
        """Once the next session has sent ``after`` output messages (handshake included),
        send pause_publication, then start_publication ``seconds`` later."""
        with self._lock:
            self._faults.pause = (seconds, after)

    def refuse_port(self) -> None:
        """The next session's agent cannot dial the port: ConnectToPortError, then
        channel_closed."""
        with self._lock:
            self._faults.refuse_port = True

    # ---------------------------------------------------------------- API

    def session(self, session_id: str) -> FakeSession:
        with self._lock:
            return self._by_id[session_id]

    def stream_url(self, session_id: str) -> str:
        if not self.port:
            raise RuntimeError("SessionManagerFake.start() has not been called")
        return f"ws://127.0.0.1:{self.port}/v1/data-channel/{session_id}?role=publish_subscribe"

    def handle_api(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Answer ``AmazonSSM.<action>`` as the JSON 1.1 protocol would: (status, body).

        Errors are ``{"__type": code, "Message": text}``: SSM models its exceptions with a
        ``Message`` member (botocore reads either spelling).
        """
        if action == "StartSession":
            return self._start_session(body)
        if action == "TerminateSession":
            return self._terminate_session(body)
        if action == "ResumeSession":
            return self._resume_session(body)
        return _api_error("UnknownOperationException", f"the fake does not serve {action}")

    def _start_session(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        target = body.get("Target")
        if not isinstance(target, str) or not target:
            return _api_error("ValidationException", "1 validation error detected: Target")
        document = body.get("DocumentName")
        if document is None:
            return _api_error(
                "InvalidDocument",
                "shell sessions (no DocumentName) are not modelled by this fake",
            )
        if document not in _DOCUMENT_DEFAULTS:
            return _api_error("InvalidDocument", f"Document with name {document} does not exist.")
        raw_parameters = body.get("Parameters") or {}
        parameters = dict(_DOCUMENT_DEFAULTS[document])
        if not isinstance(raw_parameters, dict):
            return _api_error("InvalidParameters", "Parameters must be a map of lists of strings")
        for key, values in raw_parameters.items():
            if key not in parameters:
                return _api_error(
                    "InvalidParameters", f"Parameter {key} is not defined in {document}"
                )
            if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
                return _api_error(
                    "InvalidParameters", f"Parameter {key} must be a list of one string"
                )
            parameters[key] = values[0]
        port_text = parameters["portNumber"]
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return _api_error("InvalidParameters", f"portNumber {port_text!r} is not a port")
        if self.check_target is not None:
            problem = self.check_target(target)
            if problem is not None:
                return _api_error("TargetNotConnected", problem)
        session_id = f"skyward-{secrets.token_hex(9)[:17]}"
        session = FakeSession(
            self,
            session_id=session_id,
            target=target,
            port=int(port_text),
            document_name=document,
            properties=_document_properties(document, parameters),
            token=secrets.token_urlsafe(96),
            stream_url=self.stream_url(session_id),
        )
        with self._lock:
            self._by_id[session_id] = session
            self.sessions.append(session)
        return 200, {
            "SessionId": session_id,
            "TokenValue": session.token,
            "StreamUrl": session.stream_url,
        }

    def _terminate_session(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        session_id = body.get("SessionId")
        if not isinstance(session_id, str) or not session_id:
            return _api_error("ValidationException", "1 validation error detected: SessionId")
        with self._lock:
            session = self._by_id.get(session_id)
        if session is not None:
            session.terminate("api", notify=True)
        # Terminating an unknown or already ended session succeeds, as on AWS.
        return 200, {"SessionId": session_id}

    def _resume_session(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        session_id = body.get("SessionId")
        with self._lock:
            session = self._by_id.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            return _api_error("DoesNotExistException", f"Session {session_id} does not exist.")
        if session.terminated:
            # No token: the plugin reads this as "the session timed out" and exits.
            return 200, {"SessionId": session.session_id}
        session.token = secrets.token_urlsafe(96)
        return 200, {
            "SessionId": session.session_id,
            "TokenValue": session.token,
            "StreamUrl": session.stream_url,
        }

    # ---------------------------------------------------------------- data channel

    def _session_for_path(self, path: str) -> FakeSession | None:
        parts = urlsplit(path)
        prefix = "/v1/data-channel/"
        if not parts.path.startswith(prefix):
            return None
        with self._lock:
            return self._by_id.get(parts.path[len(prefix) :])

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        session = self._session_for_path(request.path)
        if session is None:
            self.rejected.append(f"unknown data channel {request.path}")
            return connection.respond(404, "Not Found\n")
        if session.terminated:
            self.rejected.append(f"{session.session_id}: connection after the session ended")
            return connection.respond(410, "Session terminated\n")
        role = parse_qs(urlsplit(request.path).query).get("role")
        if role != ["publish_subscribe"]:
            self._protocol_error(f"{session.session_id}: data channel opened with role {role}")
        return None

    def _handle_connection(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        session = self._session_for_path(ws.request.path)
        if session is None:
            return
        try:
            self._serve_connection(session, ws)
        except Exception as exc:  # surfaced to tests, never swallowed
            self._protocol_error(f"fake internal error serving {session.session_id}: {exc!r}")
            raise
        finally:
            session._detach(ws)

    def _serve_connection(self, session: FakeSession, ws: ServerConnection) -> None:
        try:
            first = ws.recv(timeout=10)
        except (TimeoutError, ConnectionClosed):
            return
        if not isinstance(first, str):
            session._error("the first data-channel message must be the text open message")
            ws.close(1008, "expected the OpenDataChannel text message")
            return
        try:
            opened = json.loads(first)
        except ValueError:
            opened = None
        if not isinstance(opened, dict):
            session._error(f"the open message is not a JSON object: {first[:200]!r}")
            ws.close(1008, "malformed OpenDataChannel message")
            return
        if opened.get("TokenValue") != session.token:
            self.rejected.append(f"{session.session_id}: wrong TokenValue")
            ws.close(1008, "invalid token")
            return
        self._check_open_message(session, opened)
        if session.terminated:
            ws.close(1000, "session terminated")
            return
        session._attach(ws, opened)
        while True:
            try:
                message = ws.recv()
            except ConnectionClosed:
                return
            if isinstance(message, str):
                session._error(f"unexpected text message after the open message: {message[:200]}")
                continue
            session._on_binary(message)

    @staticmethod
    def _check_open_message(session: FakeSession, opened: dict[str, Any]) -> None:
        if opened.get("MessageSchemaVersion") != MESSAGE_SCHEMA_VERSION:
            session._error(
                f"open message MessageSchemaVersion is {opened.get('MessageSchemaVersion')!r}"
            )
        for key in ("RequestId", "ClientId", "ClientVersion"):
            if not isinstance(opened.get(key), str) or not opened[key]:
                session._error(f"open message lacks {key}")
        request_id = opened.get("RequestId")
        if isinstance(request_id, str):
            try:
                uuid.UUID(request_id)
            except ValueError:
                session._error(f"open message RequestId {request_id!r} is not a UUID")
        unknown = set(opened) - {
            "MessageSchemaVersion",
            "RequestId",
            "TokenValue",
            "ClientId",
            "ClientVersion",
        }
        if unknown:
            session._error(f"open message has unknown fields {sorted(unknown)}")
