"""SSH's socket through Session Manager: ``StartSession`` on the node's port 22.

The returned socket is one end of a socket pair; a thread feeds what paramiko writes
into the data channel, the channel's reader writes what comes back. Closing either
side ends the session on AWS too (``TerminateSession``), so no session outlives its
SSH connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from botocore.exceptions import ClientError

from skyward.errors import ConnectError
from skyward_aws.ssm.channel import DataChannel, SessionError

__all__ = ["SSH_DOCUMENT", "open_tunnel"]

SSH_DOCUMENT = "AWS-StartSSHSession"
# Errors that waiting does not cure; anything else (TargetNotConnected while the agent
# registers, throttling, a dropped channel) is retried by the SSH connection's backoff.
_PERMANENT = {"AccessDeniedException", "InvalidDocument", "ValidationException"}


def open_tunnel(
    ssm: Any, instance_id: str, port: int = 22, *, timeout: float = 30.0
) -> socket.socket:
    """A connected socket to ``instance_id``'s ``port``, carried by Session Manager."""
    try:
        answer = ssm.start_session(
            Target=instance_id, DocumentName=SSH_DOCUMENT, Parameters={"portNumber": [str(port)]}
        )
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        text = error.response.get("Error", {}).get("Message", "")
        if code in _PERMANENT:
            raise ConnectError(
                "aws",
                f"Session Manager refused a session to {instance_id} ({code}: {text}); the "
                f"caller needs ssm:StartSession on the instance and on the {SSH_DOCUMENT} "
                "document",
            ) from error
        hint = (
            ": its SSM agent has not registered (it needs a role with "
            "AmazonSSMManagedInstanceCore and outbound HTTPS to the SSM endpoints)"
            if code == "TargetNotConnected"
            else ""
        )
        raise SessionError(
            f"Session Manager cannot reach {instance_id} yet ({code}: {text}){hint}"
        ) from error
    session_id = answer["SessionId"]
    ours, theirs = socket.socketpair()

    def ended() -> None:
        with contextlib.suppress(OSError):
            ours.shutdown(socket.SHUT_RDWR)  # paramiko reads EOF; the pump stops

    channel = DataChannel(
        answer["StreamUrl"],
        answer["TokenValue"],
        target=instance_id,
        on_data=ours.sendall,
        on_close=ended,
        open_timeout=timeout,
    )
    try:
        channel.open()
    except BaseException as error:
        ours.close()
        theirs.close()
        _terminate(ssm, session_id)
        if isinstance(error, SessionError) and channel.refused:
            raise ConnectError(
                "aws", f"Session Manager session to {instance_id}: {error}"
            ) from error
        raise
    threading.Thread(
        target=_pump, args=(ours, channel, ssm, session_id), name=f"ssm-{instance_id}", daemon=True
    ).start()
    return theirs


def _pump(ours: socket.socket, channel: DataChannel, ssm: Any, session_id: str) -> None:
    try:
        while data := ours.recv(256 * 1024):
            channel.send(data)
    except (OSError, SessionError):
        pass  # either side went away; both are closed below
    finally:
        channel.close()
        ours.close()
        _terminate(ssm, session_id)


def _terminate(ssm: Any, session_id: str) -> None:
    with contextlib.suppress(Exception):  # best effort: the service also ends idle sessions
        ssm.terminate_session(SessionId=session_id)
