"""SSH into a machine a cloud provider launched, pinned to the pool's identity.

Every cloud provider reaches its nodes the same way: the address it knows goes through
the ``resolve_ssh_host`` hook (a bastion, a private address, a test host may answer
instead), the host key is checked against the one the pool pinned in the node's
user-data, and the login uses the pool's client key. Only the address, the login name
and (on AWS with Session Manager) how the port is reached differ between clouds.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from skyward import plugins
from skyward.provider import Instance
from skyward.spec import ComputeSpec
from skyward.ssh.connection import SSHConnection
from skyward.ssh.hosts import SSHHost
from skyward.ssh.transport import SSHTransport
from skyward.ssh.user_data import NodeIdentity

__all__ = ["connect_launched"]

SSH_PORT = 22


def connect_launched(
    instance: Instance,
    identity: NodeIdentity,
    *,
    provider: str,
    username: str,
    connect_timeout: float,
    pool_id: str,
    spec: ComputeSpec | None,
    address: str | None = None,
    opener: Callable[[SSHHost], Callable[[], socket.socket]] | None = None,
) -> SSHTransport:
    """The transport to ``instance``, not yet connected.

    :param identity: the pool's pinned host key and client key (``NodeIdentity``).
    :param provider: the provider's name, for the errors the connection raises.
    :param address: where to SSH to before the hook has its say; the instance's public
        address when not given.
    :param opener: given the host the hook settled on, how to reach its SSH port when it
        is not a plain TCP connection (AWS Session Manager); ``None`` for TCP.
    """
    where = (instance.ip or "") if address is None else address
    host = plugins.resolve_ssh_host(instance, SSHHost(where, user=username, port=SSH_PORT))
    connection = SSHConnection(
        host,
        identity.verifier(),
        client_key=identity.client.pkey(),
        connect_timeout=connect_timeout,
        provider=provider,
        opener=opener(host) if opener is not None else None,
    )
    return SSHTransport(connection, pool_id=pool_id, name=instance.id, spec=spec)
