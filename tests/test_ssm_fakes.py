"""The Session Manager fake (tests/ssm_fakes.py), proven against the published protocol.

The client here is deliberately minimal and written from the layout documented in
aws/session-manager-plugin (src/message/clientmessage.go, messageparser.go,
src/datachannel/streaming.go), not from the fake's own encoder: a fake that only agrees
with itself would prove nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.ssm_fakes import (
    PORT_FORWARDING_DOCUMENT,
    SSH_DOCUMENT,
    ClientMessage,
    FakeSession,
    SessionManagerFake,
    decode_message,
    encode_message,
)

# --------------------------------------------------------------------------------------
# a minimal client, from the plugin's documented layout
# --------------------------------------------------------------------------------------

OUTPUT, HANDSHAKE_REQUEST, HANDSHAKE_RESPONSE, HANDSHAKE_COMPLETE, FLAG = 1, 5, 6, 7, 10


def encode(
    message_type: str,
    seq: int,
    payload: bytes,
    *,
    payload_type: int = 0,
    flags: int = 0,
    message_id: uuid.UUID | None = None,
    created: int | None = None,
) -> bytes:
    mid = message_id or uuid.uuid4()
    created = int(time.time() * 1000) if created is None else created
    return b"".join(
        [
            (116).to_bytes(4, "big"),  # HeaderLength: offset of PayloadLength
            message_type.encode().ljust(32, b" "),
            (1).to_bytes(4, "big"),  # SchemaVersion
            created.to_bytes(8, "big"),
            seq.to_bytes(8, "big", signed=True),
            flags.to_bytes(8, "big"),
            mid.bytes[8:] + mid.bytes[:8],  # least significant half first
            hashlib.sha256(payload).digest(),
            payload_type.to_bytes(4, "big"),
            len(payload).to_bytes(4, "big"),
            payload,
        ]
    )


@dataclass
class Msg:
    type: str
    seq: int
    flags: int
    id: uuid.UUID
    payload_type: int
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


def decode(raw: bytes) -> Msg:
    assert int.from_bytes(raw[0:4], "big") == 116
    assert int.from_bytes(raw[116:120], "big") == len(raw) - 120
    assert raw[80:112] == hashlib.sha256(raw[120:]).digest()
    return Msg(
        type=raw[4:36].decode().rstrip(" "),
        seq=int.from_bytes(raw[48:56], "big", signed=True),
        flags=int.from_bytes(raw[56:64], "big"),
        id=uuid.UUID(bytes=raw[72:80] + raw[64:72]),
        payload_type=int.from_bytes(raw[112:116], "big"),
        payload=raw[120:],
    )


@dataclass
class MiniClient:
    """Open, handshake, send with retransmission, receive in order, acknowledge."""

    url: str
    token: str
    client_version: str = "1.0.0"
    respect_pause: bool = True
    refuse_status: int = 2  # answer to actions other than SessionType
    ws: ClientConnection | None = None
    out_seq: int = 0
    expected: int = 0
    pending: dict[int, Msg] = field(default_factory=dict)
    unacked: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    arrivals: list[Msg] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    handshake_request: dict[str, Any] | None = None
    handshake_complete: dict[str, Any] | None = None
    flags: list[int] = field(default_factory=list)
    closed: dict[str, Any] | None = None
    disconnected: bool = False
    paused: bool = False
    publication: list[tuple[str, float]] = field(default_factory=list)
    skip_ack_once: set[int] = field(default_factory=set)
    resent: int = 0
    acks: list[Msg] = field(default_factory=list)
    sent: list[Msg] = field(default_factory=list)
    exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def open(self, token: str | None = None) -> MiniClient:
        ws = connect(self.url, max_queue=None, open_timeout=5, close_timeout=1)
        self.ws = self.exits.enter_context(ws)  # used as a context manager: closed on close()
        self.disconnected = False
        opening = {
            "MessageSchemaVersion": "1.0",
            "RequestId": str(uuid.uuid4()),
            "TokenValue": token or self.token,
            "ClientId": str(uuid.uuid4()),
            "ClientVersion": self.client_version,
        }
        self.ws.send(json.dumps(opening))
        return self

    def handshake(self) -> MiniClient:
        assert self.pump(lambda: self.handshake_complete is not None or self.closed is not None)
        return self

    def send_input(self, payload_type: int, payload: bytes) -> None:
        raw = encode("input_stream_data", self.out_seq, payload, payload_type=payload_type)
        self.sent.append(decode(raw))
        self.unacked[self.out_seq] = (raw, time.monotonic())
        self.out_seq += 1
        self._send(raw)

    def send_data(self, data: bytes) -> None:
        for start in range(0, len(data), 1024):
            if self.respect_pause:
                assert self.pump(lambda: not self.paused)
            self.send_input(OUTPUT, data[start : start + 1024])
            self.poll(0)

    def send_flag(self, flag: int) -> None:
        self.send_input(FLAG, flag.to_bytes(4, "big"))

    def _send(self, raw: bytes) -> None:
        assert self.ws is not None
        try:
            self.ws.send(raw)
        except ConnectionClosed:
            self.disconnected = True

    def poll(self, timeout: float) -> None:
        assert self.ws is not None
        while not self.disconnected:
            try:
                raw = self.ws.recv(timeout=timeout)
            except TimeoutError:
                return
            except ConnectionClosed:
                self.disconnected = True
                return
            assert isinstance(raw, bytes)
            self._handle(decode(raw))
            timeout = 0

    def _handle(self, m: Msg) -> None:
        if m.type == "acknowledge":
            self.acks.append(m)
            content = m.json()
            self.unacked.pop(content["AcknowledgedMessageSequenceNumber"], None)
        elif m.type == "output_stream_data":
            self.arrivals.append(m)
            if m.seq in self.skip_ack_once:  # as if this copy was lost
                self.skip_ack_once.discard(m.seq)
                return
            content = {
                "AcknowledgedMessageType": m.type,
                "AcknowledgedMessageId": str(m.id),
                "AcknowledgedMessageSequenceNumber": m.seq,
                "IsSequentialMessage": True,
            }
            self._send(encode("acknowledge", 0, json.dumps(content).encode(), flags=3))
            if m.seq >= self.expected:
                self.pending[m.seq] = m
            while self.expected in self.pending:
                self._deliver(self.pending.pop(self.expected))
                self.expected += 1
        elif m.type == "channel_closed":
            self.closed = m.json()
        elif m.type in ("pause_publication", "start_publication"):
            self.paused = m.type == "pause_publication"
            self.publication.append((m.type, time.monotonic()))

    def _deliver(self, m: Msg) -> None:
        if m.payload_type == HANDSHAKE_REQUEST:
            self.handshake_request = m.json()
            actions = []
            for action in m.json()["RequestedClientActions"]:
                ok = action["ActionType"] == "SessionType"
                actions.append(
                    {
                        "ActionType": action["ActionType"],
                        "ActionStatus": 1 if ok else self.refuse_status,
                        "ActionResult": None,
                        "Error": "" if ok else "not supported",
                    }
                )
            errors = [a["Error"] for a in actions if a["Error"]] or None
            response = {
                "ClientVersion": self.client_version,
                "ProcessedClientActions": actions,
                "Errors": errors,
            }
            self.send_input(HANDSHAKE_RESPONSE, json.dumps(response).encode())
        elif m.payload_type == HANDSHAKE_COMPLETE:
            self.handshake_complete = m.json()
        elif m.payload_type == OUTPUT:
            self.data += m.payload
        elif m.payload_type == FLAG:
            self.flags.append(int.from_bytes(m.payload, "big"))

    def retransmit(self) -> None:
        if self.respect_pause and self.paused:
            return
        now = time.monotonic()
        for seq, (raw, sent) in sorted(self.unacked.items()):
            if now - sent > 0.3:
                self.unacked[seq] = (raw, now)
                self.resent += 1
                self._send(raw)

    def pump(self, until: Callable[[], bool], timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            if self.disconnected:
                time.sleep(0.02)
                continue
            self.poll(0.02)
            self.retransmit()
        return until()

    def close(self) -> None:
        self.exits.close()


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


class TcpServer:
    """A TCP server on loopback running ``behaviour`` for each connection."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self._behaviour = behaviour
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self.ended = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="echo-accept")]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), name="echo-conn")
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._behaviour(conn)
        except OSError:
            pass
        finally:
            conn.close()
            self.ended += 1

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._sock.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def hello_and_close(conn: socket.socket) -> None:
    conn.sendall(b"hello")


@pytest.fixture
def echo_server() -> Iterator[TcpServer]:
    server = TcpServer(echo)
    yield server
    server.close()


@pytest.fixture
def fake(echo_server: TcpServer) -> Iterator[SessionManagerFake]:
    registered = {"i-0123456789abcdef0"}

    def check(instance: str) -> str | None:
        return None if instance in registered else f"{instance} is not connected."

    with SessionManagerFake(
        resolve_target=lambda instance, port: ("127.0.0.1", echo_server.port),
        check_target=check,
    ) as started:
        yield started


INSTANCE = "i-0123456789abcdef0"


def start_session(
    fake: SessionManagerFake,
    document: str = SSH_DOCUMENT,
    parameters: dict[str, list[str]] | None = None,
) -> tuple[FakeSession, dict[str, Any]]:
    status, body = fake.handle_api(
        "StartSession",
        {
            "Target": INSTANCE,
            "DocumentName": document,
            "Parameters": parameters or {"portNumber": ["22"]},
        },
    )
    assert status == 200, body
    return fake.session(body["SessionId"]), body


def client_for(body: dict[str, Any], **kwargs: Any) -> MiniClient:
    return MiniClient(body["StreamUrl"], body["TokenValue"], **kwargs).open().handshake()


def ack_of_response_id(client: MiniClient) -> str:
    (response,) = [m for m in client.sent if m.payload_type == HANDSHAKE_RESPONSE]
    return str(response.id)


def wait_until(condition: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


# --------------------------------------------------------------------------------------
# wire format
# --------------------------------------------------------------------------------------


def test_serialized_message_matches_the_documented_layout() -> None:
    message_id = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    expected = bytes.fromhex(
        "00000074"  # HeaderLength 116
        + "696e7075745f73747265616d5f64617461"  # "input_stream_data" (17 bytes)
        + "20" * 15  # space padding to 32 bytes
        + "00000001"  # SchemaVersion
        + "0000018bcfe5687b"  # CreatedDate 1_700_000_000_123 ms
        + "0000000000000005"  # SequenceNumber
        + "0000000000000000"  # Flags
        + "8899aabbccddeeff"  # MessageId: last 8 bytes of the UUID first...
        + "0011223344556677"  # ...then its first 8
        + "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"  # sha256("hi")
        + "00000001"  # PayloadType Output
        + "00000002"  # PayloadLength
        + "6869"  # "hi"
    )
    assert len(expected) == 122
    assert expected[112:116] == b"\x00\x00\x00\x01"  # PayloadType at 112
    assert expected[116:120] == b"\x00\x00\x00\x02"  # PayloadLength at HeaderLength

    fields: dict[str, Any] = {
        "payload_type": 1,
        "message_id": message_id,
        "created": 1_700_000_000_123,
    }
    ours = encode("input_stream_data", 5, b"hi", **fields)
    assert ours == expected

    theirs = ClientMessage(
        "input_stream_data",
        5,
        b"hi",
        payload_type=1,
        message_id=message_id,
        created_date=1_700_000_000_123,
    )
    assert encode_message(theirs) == expected

    decoded, problems = decode_message(expected)
    assert decoded == theirs
    # The only objection: 2023 is not "now" for a message on the wire.
    assert problems == ["CreatedDate 1700000000123 is not the current epoch in milliseconds"]


def test_fake_output_follows_the_layout_and_ack_conventions(
    fake: SessionManagerFake,
) -> None:
    session, body = start_session(fake)
    client = MiniClient(body["StreamUrl"], body["TokenValue"]).open()
    assert client.ws is not None
    raw = client.ws.recv(timeout=5)
    assert isinstance(raw, bytes)
    first = decode(raw)
    assert (first.type, first.seq, first.flags, first.payload_type) == (
        "output_stream_data",
        0,
        1,  # SYN on the first stream message, as the agent sets it
        HANDSHAKE_REQUEST,
    )
    client._handle(first)  # acknowledges, then answers the handshake
    assert client.pump(lambda: client.handshake_complete is not None and not client.unacked)
    # The agent acknowledged our HandshakeResponse the way the plugin acknowledges.
    (ack,) = client.acks
    assert (ack.seq, ack.flags, ack.payload_type) == (0, 3, 0)
    assert json.loads(ack.payload) == {
        "AcknowledgedMessageType": "input_stream_data",
        "AcknowledgedMessageId": ack_of_response_id(client),
        "AcknowledgedMessageSequenceNumber": 0,
        "IsSequentialMessage": True,
    }
    assert wait_until(lambda: session.client_acked_all)
    assert client.handshake_complete is not None
    assert isinstance(client.handshake_complete["HandshakeTimeToComplete"], int)
    assert client.handshake_complete["CustomerMessage"] == ""
    assert fake.protocol_errors == []
    client.close()


# --------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------


def test_start_session_answers_like_aws(fake: SessionManagerFake) -> None:
    session, body = start_session(fake)
    assert set(body) == {"SessionId", "TokenValue", "StreamUrl"}
    assert body["StreamUrl"] == (
        f"ws://127.0.0.1:{fake.port}/v1/data-channel/{body['SessionId']}?role=publish_subscribe"
    )
    assert (session.target, session.port, session.properties) == (
        INSTANCE,
        22,
        {"portNumber": "22"},
    )

    status, error = fake.handle_api(
        "StartSession", {"Target": INSTANCE, "DocumentName": "AWS-StartShell"}
    )
    assert (status, error["__type"]) == (400, "InvalidDocument")

    status, error = fake.handle_api(
        "StartSession",
        {"Target": INSTANCE, "DocumentName": SSH_DOCUMENT, "Parameters": {"port": ["22"]}},
    )
    assert (status, error["__type"]) == (400, "InvalidParameters")

    status, terminated = fake.handle_api("TerminateSession", {"SessionId": session.session_id})
    assert (status, terminated) == (200, {"SessionId": session.session_id})
    assert session.terminated
    assert session.closed_by == "api"


def test_target_not_connected(fake: SessionManagerFake) -> None:
    status, body = fake.handle_api(
        "StartSession",
        {"Target": "i-0fffffffffffffff0", "DocumentName": SSH_DOCUMENT},
    )
    assert status == 400
    assert body == {
        "__type": "TargetNotConnected",
        "Message": "i-0fffffffffffffff0 is not connected.",
    }
    assert fake.sessions == []


def test_resume_session_issues_a_new_token_for_the_same_stream(
    fake: SessionManagerFake,
) -> None:
    session, body = start_session(fake)
    client = client_for(body)
    client.send_data(b"before ")
    assert client.pump(lambda: bytes(client.data) == b"before ")
    client.close()  # the connection drops; the session lives on

    status, resumed = fake.handle_api("ResumeSession", {"SessionId": session.session_id})
    assert status == 200
    assert resumed["StreamUrl"] == body["StreamUrl"]
    assert resumed["TokenValue"] != body["TokenValue"]

    stale = MiniClient(body["StreamUrl"], body["TokenValue"]).open()
    assert stale.pump(lambda: stale.disconnected, timeout=5)

    # Same sequence numbers on both sides: the stream continues where it was.
    client.token = resumed["TokenValue"]
    client.open()
    client.send_data(b"after")
    assert client.pump(lambda: bytes(client.data) == b"before after")
    assert session.connections == 2
    assert fake.protocol_errors == []

    fake.handle_api("TerminateSession", {"SessionId": session.session_id})
    status, gone = fake.handle_api("ResumeSession", {"SessionId": session.session_id})
    assert (status, gone) == (200, {"SessionId": session.session_id})  # no token: timed out
    status, missing = fake.handle_api("ResumeSession", {"SessionId": "nobody-0"})
    assert (status, missing["__type"]) == (400, "DoesNotExistException")


# --------------------------------------------------------------------------------------
# data channel
# --------------------------------------------------------------------------------------


def test_wrong_token_is_refused_with_policy_violation(fake: SessionManagerFake) -> None:
    session, body = start_session(fake)
    client = MiniClient(body["StreamUrl"], body["TokenValue"]).open(token="not-the-token")
    assert client.ws is not None
    with pytest.raises(ConnectionClosed) as closed:
        client.ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert fake.rejected == [f"{session.session_id}: wrong TokenValue"]
    assert not session.terminated
    # The right token still opens it.
    client_for(body).close()
    assert session.handshake_complete


def test_unknown_data_channel_is_not_found(fake: SessionManagerFake) -> None:
    url = f"ws://127.0.0.1:{fake.port}/v1/data-channel/nobody-0?role=publish_subscribe"
    with pytest.raises(InvalidStatus) as refused, connect(url):
        pass
    assert refused.value.response.status_code == 404


def test_bytes_round_trip_over_a_megabyte(fake: SessionManagerFake, echo_server: TcpServer) -> None:
    session, body = start_session(fake)
    client = client_for(body)
    assert client.handshake_request == {
        "AgentVersion": fake.agent_version,
        "RequestedClientActions": [
            {
                "ActionType": "SessionType",
                "ActionParameters": {"SessionType": "Port", "Properties": {"portNumber": "22"}},
            }
        ],
    }
    assert session.opened_with is not None
    assert session.opened_with["TokenValue"] == body["TokenValue"]

    blob = os.urandom(1_300_000)
    client.send_data(blob)
    assert client.pump(lambda: len(client.data) >= len(blob), timeout=30)
    assert bytes(client.data) == blob
    assert client.pump(lambda: not client.unacked and session.client_acked_all)
    assert session.bytes_in == session.bytes_out == len(blob)
    data_messages = [m for m in client.arrivals if m.payload_type == OUTPUT]
    assert max(len(m.payload) for m in data_messages) == 1024
    assert len(data_messages) >= len(blob) // 1024
    assert echo_server.accepted == 1
    assert fake.protocol_errors == []
    client.close()


def test_drop_once_makes_the_client_retransmit(fake: SessionManagerFake) -> None:
    fake.drop_once(1)  # 0 is our HandshakeResponse, 1 our first data message
    session, body = start_session(fake)
    client = client_for(body)
    client.send_data(b"first")
    client.send_data(b" second")
    assert client.pump(lambda: bytes(client.data) == b"first second")
    assert session.dropped == [1]
    assert client.resent >= 1
    assert fake.protocol_errors == []
    client.close()


def test_reorder_output_swaps_two_messages(fake: SessionManagerFake) -> None:
    fake.reorder_output(2)  # 0 and 1 are the handshake: swap the first two data messages
    session, body = start_session(fake)
    client = client_for(body)
    blob = os.urandom(8 * 1024)
    client.send_data(blob)
    assert client.pump(lambda: bytes(client.data) == blob)
    arrival = [m.seq for m in client.arrivals]
    assert arrival[:4] == [0, 1, 3, 2]
    assert wait_until(lambda: session.client_acked_all)
    assert fake.protocol_errors == []
    client.close()


def test_pause_for_holds_publication(fake: SessionManagerFake) -> None:
    fake.pause_for(0.5, after=3)  # HandshakeRequest, HandshakeComplete, then one data message
    session, body = start_session(fake)
    client = client_for(body)
    client.send_data(b"x")
    assert client.pump(lambda: client.paused)
    client.send_data(b"yz")  # waits for start_publication
    assert client.pump(lambda: bytes(client.data) == b"xyz")
    (paused, pause_at), (started, start_at) = client.publication
    assert (paused, started) == ("pause_publication", "start_publication")
    assert start_at - pause_at >= 0.4
    assert session.input_while_paused == []
    assert fake.protocol_errors == []
    client.close()


def test_input_while_paused_is_recorded_and_recovered(fake: SessionManagerFake) -> None:
    fake.pause_for(0.5, after=3)
    session, body = start_session(fake)
    client = client_for(body, respect_pause=False)
    client.send_data(b"x")
    assert client.pump(lambda: client.paused)
    client.send_data(b"yz")  # sent anyway: MGS has nowhere to deliver it
    assert client.pump(lambda: bytes(client.data) == b"xyz")
    assert session.input_while_paused[:1] == [2]
    client.close()


def test_a_lost_ack_makes_the_agent_retransmit(fake: SessionManagerFake) -> None:
    session, body = start_session(fake)
    client = client_for(body)
    client.skip_ack_once.add(2)
    client.send_data(b"ping")
    assert client.pump(lambda: bytes(client.data) == b"ping" and session.client_acked_all)
    assert [m.seq for m in client.arrivals].count(2) == 2
    assert session.retransmissions >= 1
    assert fake.protocol_errors == []
    client.close()


def test_target_eof_closes_the_channel(fake: SessionManagerFake) -> None:
    closing = TcpServer(hello_and_close)
    fake.resolve_target = lambda instance, port: ("127.0.0.1", closing.port)
    try:
        session, body = start_session(fake)
        client = client_for(body)
        assert client.pump(lambda: client.closed is not None and client.disconnected)
        assert bytes(client.data) == b"hello"
        assert client.closed is not None
        assert set(client.closed) == {
            "MessageId",
            "CreatedDate",
            "DestinationId",
            "SessionId",
            "MessageType",
            "SchemaVersion",
            "Output",
        }
        assert client.closed["SessionId"] == session.session_id
        assert client.closed["DestinationId"] == INSTANCE
        assert client.closed["MessageType"] == "channel_closed"
        assert (session.terminated, session.closed_by) == (True, "agent")
        assert fake.protocol_errors == []
    finally:
        closing.close()


@pytest.mark.parametrize("how", ["refuse_port", "nothing-listening"])
def test_port_refused(fake: SessionManagerFake, how: str) -> None:
    if how == "refuse_port":
        fake.refuse_port()
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        fake.resolve_target = lambda instance, port: ("127.0.0.1", free)
    session, body = start_session(fake)
    client = client_for(body)
    assert client.pump(lambda: client.closed is not None)
    assert client.flags == [3]  # ConnectToPortError
    assert client.closed is not None
    assert "Unable to connect to specified port" in client.closed["Output"]
    assert "connection refused" in client.closed["Output"].lower()
    assert session.closed_by == "port-error"
    assert fake.protocol_errors == []


def test_terminate_session_api_closes_everything(
    fake: SessionManagerFake, echo_server: TcpServer
) -> None:
    session, body = start_session(fake)
    client = client_for(body)
    client.send_data(b"hi")
    assert client.pump(lambda: bytes(client.data) == b"hi")
    fake.handle_api("TerminateSession", {"SessionId": session.session_id})
    assert client.pump(lambda: client.closed is not None and client.disconnected)
    assert wait_until(lambda: echo_server.ended == 1)
    assert session.closed_by == "api"


def test_terminate_flag_from_the_client(fake: SessionManagerFake, echo_server: TcpServer) -> None:
    session, body = start_session(fake)
    client = client_for(body)
    client.send_flag(2)
    assert client.pump(lambda: client.disconnected)
    assert client.closed is None  # the client asked: no channel_closed
    assert session.flags_received == [2]
    assert session.closed_by == "client-flag"
    assert wait_until(lambda: echo_server.ended == 1)
    assert fake.protocol_errors == []


def test_disconnect_to_port_ends_an_ssh_session(
    fake: SessionManagerFake, echo_server: TcpServer
) -> None:
    session, body = start_session(fake)
    client = client_for(body)
    client.send_flag(1)  # DisconnectToPort: the SSH document's one connection is over
    assert client.pump(lambda: client.closed is not None and client.disconnected)
    assert session.closed_by == "client-disconnect"
    assert wait_until(lambda: echo_server.ended == 1)
    assert fake.protocol_errors == []


def test_disconnect_to_port_redials_a_port_forwarding_session(
    fake: SessionManagerFake, echo_server: TcpServer
) -> None:
    parameters = {"portNumber": ["22"], "localPortNumber": ["0"]}
    session, body = start_session(fake, PORT_FORWARDING_DOCUMENT, parameters)
    client = client_for(body, client_version="1.1.61.0")
    client.send_data(b"one ")
    assert client.pump(lambda: bytes(client.data) == b"one ")
    client.send_flag(1)
    assert wait_until(lambda: echo_server.ended == 1)
    client.send_data(b"two")  # the agent dials the port again for new data
    assert client.pump(lambda: bytes(client.data) == b"one two")
    assert echo_server.accepted == 2
    assert not session.terminated
    assert fake.protocol_errors == []
    client.close()


def test_unanswered_handshake_times_out(fake: SessionManagerFake) -> None:
    fake.handshake_timeout = 0.5
    session, body = start_session(fake)
    client = MiniClient(body["StreamUrl"], body["TokenValue"]).open()
    assert client.ws is not None
    received: list[Msg] = []
    with contextlib.suppress(ConnectionClosed):
        while True:  # read, never answer
            raw = client.ws.recv(timeout=5)
            assert isinstance(raw, bytes)
            received.append(decode(raw))
    assert received[0].payload_type == HANDSHAKE_REQUEST
    assert received[-1].type == "channel_closed"
    assert received[-1].json()["Output"].startswith("Handshake timed out")
    assert session.closed_by == "handshake-timeout"
    client.close()


@pytest.mark.parametrize("status", [2, 3])
def test_kms_encryption_must_be_refused(fake: SessionManagerFake, status: int) -> None:
    fake.kms_encryption = True
    session, body = start_session(fake)
    client = client_for(body, refuse_status=status)
    assert client.pump(lambda: client.closed is not None)
    assert client.handshake_request is not None
    requested = [a["ActionType"] for a in client.handshake_request["RequestedClientActions"]]
    assert requested == ["SessionType", "KMSEncryption"]
    assert session.handshake_response is not None
    answered = session.handshake_response["ProcessedClientActions"]
    assert [a["ActionStatus"] for a in answered] == [1, status]
    assert client.closed is not None
    assert f"KMSEncryption failed on client with status {status}" in client.closed["Output"]
    assert session.closed_by == "handshake-failed"
    assert fake.protocol_errors == []


def test_a_client_claiming_kms_is_a_protocol_error(fake: SessionManagerFake) -> None:
    fake.kms_encryption = True
    _session, body = start_session(fake)
    client = client_for(body, refuse_status=1)
    assert client.pump(lambda: client.closed is not None)
    assert any("claimed to set up KMSEncryption" in e for e in fake.protocol_errors)


def test_port_forwarding_document_and_multiplexing_clients(fake: SessionManagerFake) -> None:
    parameters = {"portNumber": ["22"], "localPortNumber": ["0"]}
    session, body = start_session(fake, PORT_FORWARDING_DOCUMENT, parameters)
    assert session.properties == {
        "portNumber": "22",
        "type": "LocalPortForwarding",
        "localPortNumber": "0",
    }
    old = client_for(body, client_version="1.1.61.0")
    old.send_data(b"basic")
    assert old.pump(lambda: bytes(old.data) == b"basic")
    assert fake.protocol_errors == []
    old.close()

    session, body = start_session(fake, PORT_FORWARDING_DOCUMENT, parameters)
    client_for(body, client_version="1.2.694.0").close()
    assert len(fake.protocol_errors) == 1
    assert "smux" in fake.protocol_errors[0]


def test_protocol_violations_are_recorded(fake: SessionManagerFake) -> None:
    _session, body = start_session(fake)
    client = client_for(body)
    assert client.ws is not None
    corrupt = bytearray(encode("input_stream_data", 1, b"data", payload_type=OUTPUT))
    corrupt[80] ^= 0xFF  # the digest: dropped unprocessed, as the agent drops it
    client.ws.send(bytes(corrupt))
    nul_padded = encode("input_stream_data", 0, b"{}", payload_type=HANDSHAKE_RESPONSE)
    nul_padded = nul_padded[:21] + b"\x00" * 15 + nul_padded[36:]  # a duplicate of #0
    client.ws.send(nul_padded)
    long_header = (120).to_bytes(4, "big") + encode("acknowledge", 0, b"{}", flags=3)[4:]
    client.ws.send(long_header)
    client.ws.send(encode("start_session", 0, b""))
    bad_ack = {
        "AcknowledgedMessageType": "output_stream_data",
        "AcknowledgedMessageId": str(uuid.uuid4()),  # not the id of output #0
        "AcknowledgedMessageSequenceNumber": 0,
        "IsSequentialMessage": True,
    }
    client.ws.send(encode("acknowledge", 0, json.dumps(bad_ack).encode(), flags=3))
    client.send_flag(9)
    client.send_data(b"sync")
    assert client.pump(lambda: bytes(client.data) == b"sync")
    expected = [
        "PayloadDigest is not the SHA-256",
        "must be padded with spaces, not NUL bytes",
        "HeaderLength is 120",
        "unknown MessageType 'start_session'",
        "acknowledged output #0 as",
        "a client does not send Flag 9",
    ]
    assert wait_until(lambda: all(any(e in x for x in fake.protocol_errors) for e in expected))
    assert len(fake.protocol_errors) == len(expected), fake.protocol_errors
    client.close()


def test_stop_leaves_no_threads(echo_server: TcpServer) -> None:
    def ours() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if not t.name.startswith("echo-")}

    before = ours()
    fake = SessionManagerFake(resolve_target=lambda instance, port: ("127.0.0.1", echo_server.port))
    fake.start()
    _session, body = start_session(fake)
    client = client_for(body)
    client.send_data(b"still open")
    assert client.pump(lambda: bytes(client.data) == b"still open")
    fake.stop()
    assert client.pump(lambda: client.disconnected)
    client.close()
    assert wait_until(lambda: ours() <= before), ours() - before
    assert wait_until(lambda: echo_server.ended == 1)
