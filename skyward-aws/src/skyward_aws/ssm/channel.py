"""One Session Manager data channel: a websocket carrying a port session's bytes.

What the session-manager-plugin does, in Python: open the channel with the session's
token, answer the agent's handshake, number every stream message per direction,
acknowledge each received one, deliver them in order, and resend our own until they
are acknowledged (the service may drop messages, e.g. while the agent reconnects).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from attrs import define
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from skyward_aws.ssm.messages import (
    ACKNOWLEDGE,
    CHANNEL_CLOSED,
    INPUT_STREAM,
    OUTPUT_STREAM,
    PAUSE_PUBLICATION,
    START_PUBLICATION,
    ClientMessage,
    Flag,
    PayloadType,
    ProtocolError,
    acknowledgement,
)

__all__ = ["CLIENT_VERSION", "DataChannel", "SessionError"]

CLIENT_VERSION = "1.2.0.0-skyward"
# The plugin's own limits: the agent reads 1 KiB at a time, so larger input messages
# are not something the service is known to carry.
PAYLOAD_SIZE = 1024
IN_FLIGHT = 4096
RESEND_EVERY = 0.1
RESEND_FOR = 300.0
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 1.0


class SessionError(ConnectionError):
    """The session could not be opened or was lost; the message says why."""


@define
class _Pending:
    raw: bytes
    sent: float
    first_sent: float
    resent: int = 0


class DataChannel:
    """A port session's byte stream; ``on_data`` gets what the node's port sends back."""

    def __init__(
        self,
        stream_url: str,
        token: str,
        *,
        target: str,
        on_data: Callable[[bytes], None],
        on_close: Callable[[], None] = lambda: None,
        open_timeout: float = 30.0,
    ) -> None:
        self.stream_url = stream_url
        self.target = target
        self._token = token
        self._on_data = on_data
        self._on_close = on_close
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._state = threading.Condition()
        self._outgoing: dict[int, _Pending] = {}
        self._next = 0
        self._paused = False
        self._expected = 0
        self._incoming: dict[int, ClientMessage] = {}
        self._ready = threading.Event()
        self._closed = threading.Event()
        self.failure: str | None = None
        self.refused = False
        """The handshake asked for something we do not do: retrying will not help."""
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._timeout = 0.2

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, present the token, and wait until the agent completes the handshake."""
        try:
            # Entered by hand: the connection outlives this call, closed by _finish.
            self._ws = connect(
                self.stream_url,
                open_timeout=self._open_timeout,
                max_size=None,
                compression=None,
                user_agent_header=f"skyward/{CLIENT_VERSION}",
                close_timeout=2,
            ).__enter__()
        except (OSError, TimeoutError) as error:
            raise SessionError(f"cannot open the Session Manager channel: {error}") from error
        except Exception as error:  # websockets' handshake errors (InvalidStatus, ...)
            raise SessionError(f"Session Manager refused the channel: {error}") from error
        hello = {
            "MessageSchemaVersion": "1.0",
            "RequestId": str(uuid.uuid4()),
            "TokenValue": self._token,
            "ClientId": str(uuid.uuid4()),
            "ClientVersion": CLIENT_VERSION,
        }
        self._ws.send(json.dumps(hello))
        threading.Thread(target=self._read, name=f"ssm-read-{self.target}", daemon=True).start()
        threading.Thread(target=self._resend, name=f"ssm-resend-{self.target}", daemon=True).start()
        if not self._ready.wait(self._open_timeout):
            self.close()
            raise SessionError(
                f"the SSM agent on {self.target} did not complete the handshake "
                f"within {self._open_timeout:.0f}s"
            )
        if self.failure is not None:
            raise SessionError(self.failure)

    def close(self) -> None:
        if self._closed.is_set():
            return
        if self._ready.is_set() and self.failure is None:
            # Tell the agent to close its end of the port now rather than on a timeout;
            # never wait for room to say it.
            with contextlib.suppress(SessionError, ConnectionClosed, OSError):
                self._send_stream(
                    PayloadType.FLAG, Flag.TERMINATE_SESSION.to_bytes(4, "big"), wait=False
                )
        self._finish(None)

    # -- sending --------------------------------------------------------------------------

    def send(self, data: bytes | memoryview) -> None:
        """Send bytes to the node's port; blocks while the service asks us to pause."""
        view = memoryview(data)
        for start in range(0, len(view), PAYLOAD_SIZE):
            self._send_stream(PayloadType.OUTPUT, bytes(view[start : start + PAYLOAD_SIZE]))

    def _send_stream(self, payload_type: PayloadType, payload: bytes, *, wait: bool = True) -> None:
        with self._state:
            while (
                wait
                and not self._closed.is_set()
                and (self._paused or len(self._outgoing) >= IN_FLIGHT)
            ):
                self._state.wait(1.0)
            if self._closed.is_set():
                raise SessionError(self.failure or "the Session Manager channel is closed")
            message = ClientMessage(
                INPUT_STREAM, self._next, payload, payload_type=int(payload_type)
            )
            raw = message.encode()
            now = time.monotonic()
            self._outgoing[self._next] = _Pending(raw, now, now)
            self._next += 1
        # websockets serialises concurrent sends; the agent orders messages by number.
        self._write(raw)

    def _write(self, raw: bytes) -> None:
        assert self._ws is not None
        try:
            self._ws.send(raw)
        except ConnectionClosed as error:
            self._finish(f"the Session Manager channel closed ({error})")
            raise SessionError(self.failure or "closed") from error

    # -- receiving ------------------------------------------------------------------------

    def _read(self) -> None:
        assert self._ws is not None
        try:
            for raw in self._ws:
                if isinstance(raw, str):
                    continue  # the service speaks binary once the channel is open
                message = ClientMessage.decode(raw)
                if message.message_type == OUTPUT_STREAM:
                    self._on_stream(message)
                elif message.message_type == ACKNOWLEDGE:
                    self._on_ack(message.json())
                elif message.message_type == CHANNEL_CLOSED:
                    output = (message.json() or {}).get("Output") or ""
                    self._finish(
                        f"Session Manager closed the session{': ' + output if output else ''}"
                    )
                    return
                elif message.message_type in (START_PUBLICATION, PAUSE_PUBLICATION):
                    with self._state:
                        self._paused = message.message_type == PAUSE_PUBLICATION
                        self._state.notify_all()
        except ConnectionClosed as error:
            self._finish(f"the Session Manager channel closed ({error})")
        except (ProtocolError, ValueError) as error:
            self._finish(f"Session Manager sent a malformed message ({error})")
        except Exception as error:  # the consumer failed: end the session, don't hang it
            self._finish(f"the Session Manager tunnel failed ({error!r})")
        else:
            self._finish("the Session Manager channel closed")

    def _on_stream(self, message: ClientMessage) -> None:
        # Acknowledged on arrival, duplicates too: a lost acknowledgement would otherwise
        # make the agent resend until it gives up, and a message we hold is as good as
        # delivered (a channel closed meanwhile is closed on purpose).
        self._write(acknowledgement(message).encode())
        sequence = message.sequence_number
        if sequence > self._expected:
            self._incoming.setdefault(sequence, message)
        elif sequence == self._expected:
            self._process(message)
            self._expected += 1
            while self._expected in self._incoming:
                self._process(self._incoming.pop(self._expected))
                self._expected += 1

    def _process(self, message: ClientMessage) -> None:
        kind = message.payload_type
        if kind == PayloadType.OUTPUT:
            self._on_data(message.payload)
        elif kind == PayloadType.HANDSHAKE_REQUEST:
            self._handshake(message.json())
        elif kind == PayloadType.HANDSHAKE_COMPLETE:
            self._ready.set()
        elif kind == PayloadType.FLAG:
            flag = int.from_bytes(message.payload[:4], "big")
            if flag == Flag.CONNECT_TO_PORT_ERROR:
                self._finish(f"the SSM agent on {self.target} could not connect to the port")

    def _handshake(self, request: dict[str, Any]) -> None:
        processed, errors = [], []
        for action in request.get("RequestedClientActions") or []:
            kind = action.get("ActionType")
            parameters = action.get("ActionParameters") or {}
            if kind == "SessionType" and parameters.get("SessionType") == "Port":
                processed.append({"ActionType": kind, "ActionStatus": 1})
                continue
            if kind == "KMSEncryption":
                error = (
                    "the account's Session Manager preferences require KMS encryption, "
                    "which Skyward's SSM tunnel does not implement (SSH already encrypts "
                    "the traffic end to end); turn it off for these sessions or use "
                    "AWS(use_ssm=False)"
                )
            else:
                error = f"unsupported {kind} action {parameters!r}"
            processed.append({"ActionType": kind, "ActionStatus": 2, "Error": error})
            errors.append(error)
        response = {
            "ClientVersion": CLIENT_VERSION,
            "ProcessedClientActions": processed,
            "Errors": errors,
        }
        self._send_stream(PayloadType.HANDSHAKE_RESPONSE, json.dumps(response).encode())
        if errors:
            self.refused = True
            self._finish(errors[0])

    def _on_ack(self, content: dict[str, Any]) -> None:
        sequence = int(content.get("AcknowledgedMessageSequenceNumber", -1))
        with self._state:
            pending = self._outgoing.pop(sequence, None)
            if pending is not None and pending.resent == 0:
                self._measure(time.monotonic() - pending.sent)
            self._state.notify_all()

    def _measure(self, rtt: float) -> None:
        # RFC 6298's estimator, as the plugin uses, bounded like the plugin's.
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._timeout = min(MAX_TIMEOUT, max(MIN_TIMEOUT, self._srtt + 4 * self._rttvar))

    # -- resending and closing -------------------------------------------------------------

    def _resend(self) -> None:
        while not self._closed.wait(RESEND_EVERY):
            with self._state:
                if not self._outgoing:
                    continue
                oldest = self._outgoing[min(self._outgoing)]
                now = time.monotonic()
                if now - oldest.sent < self._timeout:
                    continue
                if now - oldest.first_sent > RESEND_FOR:
                    stalled = True
                else:
                    stalled = False
                    oldest.resent += 1
                    oldest.sent = now
            if stalled:
                self._finish(
                    f"Session Manager acknowledged nothing for {RESEND_FOR:.0f}s; "
                    "the session is lost"
                )
                return
            try:
                self._write(oldest.raw)
            except SessionError:
                return

    def _finish(self, failure: str | None) -> None:
        """Close for good; ``failure`` says why, ``None`` when the client closed it."""
        with self._state:
            if self._closed.is_set():
                return
            if failure is not None and self.failure is None:
                self.failure = failure
            self._closed.set()
            self._state.notify_all()
        self._ready.set()  # wakes open(), which reports the failure
        if self._ws is not None:
            self._ws.close()
        self._on_close()
