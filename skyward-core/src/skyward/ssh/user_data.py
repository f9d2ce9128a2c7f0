"""What a cloud provider puts in a machine's user-data so Skyward can reach it safely.

Per pool the client makes a fresh client key pair (its public half is authorized on the
node) and, per node, a host key pair (its private half becomes the node's SSH host key).
The transport then pins that host key (:class:`~skyward.ssh.keys.PinnedHostKey`): no
trust-on-first-use, ever. User-data holds only what must work even if the client dies —
the keys and the self-destruct timer — never a cloud credential or the functions' env.
"""

from __future__ import annotations

import shlex

from attrs import frozen

from skyward.ssh.keys import KeyPair, PinnedHostKey, generate_keypair

__all__ = ["NodeIdentity", "user_data_script"]


@frozen
class NodeIdentity:
    """The keys one node is born with."""

    client: KeyPair
    """The pool's client key (shared by the pool's nodes)."""
    host: KeyPair
    """This node's host key."""

    @classmethod
    def for_pool(cls, nodes: int, pool_id: str) -> list[NodeIdentity]:
        client = generate_keypair(f"skyward-{pool_id}")
        return [cls(client, generate_keypair(f"skyward-{pool_id}-node{n}")) for n in range(nodes)]

    def verifier(self) -> PinnedHostKey:
        return PinnedHostKey(self.host.public_line)


_TEMPLATE = """#!/bin/sh
# Skyward user-data (generated per node). Installs the pinned host key, authorizes the
# pool's client key, and arms the self-destruct timer. Holds no cloud credentials.
set -eu
root="${{SKYWARD_ROOT:-}}"
umask 077
mkdir -p "$root/etc/ssh"
printf '%s' {host_private} > "$root/etc/ssh/ssh_host_ed25519_key"
printf '%s\\n' {host_public} > "$root/etc/ssh/ssh_host_ed25519_key.pub"
chmod 600 "$root/etc/ssh/ssh_host_ed25519_key"
chmod 644 "$root/etc/ssh/ssh_host_ed25519_key.pub"
home="$root"{home}
mkdir -p "$home/.ssh"
printf '%s\\n' {client_public} >> "$home/.ssh/authorized_keys"
chmod 700 "$home/.ssh"
chmod 600 "$home/.ssh/authorized_keys"
if [ -z "$root" ]; then
  chown -R {user}: "$home/.ssh" 2>/dev/null || true
  (systemctl restart ssh || systemctl restart sshd || service ssh restart) >/dev/null 2>&1 || true
fi
ttl={ttl}
if [ "$ttl" -gt 0 ]; then
  # The pool's hard lifetime: the machine powers off even if nobody is left to ask.
  poweroff_cmd="${{SKYWARD_POWEROFF_CMD:-shutdown -h now}}"
  nohup sh -c "sleep $ttl; $poweroff_cmd" >/dev/null 2>&1 &
fi
"""


def user_data_script(identity: NodeIdentity, *, username: str, ttl_seconds: int) -> str:
    """A POSIX shell user-data script for one node (cloud-init runs it as root at boot).

    ``SKYWARD_ROOT`` (empty on a real machine) prefixes every path, so tests can run it
    in a scratch directory.
    """
    home = "/root" if username == "root" else f"/home/{username}"
    return _TEMPLATE.format(
        host_private=shlex.quote(identity.host.private_openssh),
        host_public=shlex.quote(identity.host.public_line),
        client_public=shlex.quote(identity.client.public_line),
        home=shlex.quote(home),
        user=shlex.quote(username),
        ttl=int(ttl_seconds),
    )
