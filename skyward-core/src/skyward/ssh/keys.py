"""Keys: per-pool client keys and host keys the client makes, and host-key verification.

Host keys are never blindly accepted. A machine the user owns is checked against their
``known_hosts``; a cloud machine is checked against a host key the client generated and
injected through user-data (:class:`PinnedHostKey`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from pathlib import Path
from typing import Protocol

import paramiko
from attrs import field, frozen
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from skyward.errors import HostKeyError

__all__ = [
    "HostKeyVerifier",
    "KeyPair",
    "KnownHosts",
    "PinnedHostKey",
    "fingerprint",
    "generate_keypair",
    "known_hosts_name",
]


@frozen
class KeyPair:
    """An ed25519 key pair in OpenSSH formats. The private half never leaves the client
    (a client key) or is written only into the machine's user-data (a host key)."""

    private_openssh: str = field(repr=False)
    public_line: str
    """``ssh-ed25519 AAAA... comment``, as authorized_keys and known_hosts want it."""

    def pkey(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))


def generate_keypair(comment: str = "skyward") -> KeyPair:
    """A fresh ed25519 key pair (per pool, per host)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return KeyPair(private_openssh=private, public_line=f"{public} {comment}")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts names a host: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def _public_key(line: str) -> paramiko.PKey:
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key line: {line!r}")
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))


class HostKeyVerifier(Protocol):
    """Decides whether the key a host presented is the right one."""

    def key_types(self, host: str, port: int) -> list[str]:
        """Key types to ask the server for (the ones we can check), most preferred first."""

    def verify(self, host: str, port: int, key: paramiko.PKey) -> None:
        """Return if ``key`` is trusted for ``host:port``; raise HostKeyError otherwise."""


@frozen
class KnownHosts:
    """Verify against OpenSSH known_hosts files (the user's, by default)."""

    paths: tuple[Path, ...] = (Path("~/.ssh/known_hosts"), Path("/etc/ssh/ssh_known_hosts"))

    def _keys(self, host: str, port: int) -> dict[str, paramiko.PKey]:
        name = known_hosts_name(host, port)
        found: dict[str, paramiko.PKey] = {}
        for path in self.paths:
            keys = _parsed(path.expanduser())
            entry = keys.lookup(name) if keys is not None else None
            for key_type, key in (entry or {}).items():
                # as one HostKeys loaded from every file would: the first entry wins
                found.setdefault(key_type, key)
        return found

    def key_types(self, host: str, port: int) -> list[str]:
        return list(self._keys(host, port))

    def verify(self, host: str, port: int, key: paramiko.PKey) -> None:
        name = known_hosts_name(host, port)
        known = self._keys(host, port)
        print_ = fingerprint(key)
        first = str(self.paths[0])
        if not known:
            raise HostKeyError(
                name,
                print_,
                f"{name} is not a known host: it presented {key.get_name()} key {print_}. "
                f"Check that fingerprint with the machine's owner, then trust it with "
                f"`ssh-keyscan -p {port} {host} >> {first}` (or connect once with ssh).",
            )
        expected = known.get(key.get_name())
        if expected is None or expected.asbytes() != key.asbytes():
            raise HostKeyError(
                name,
                print_,
                f"the host key of {name} has CHANGED: it presented {key.get_name()} key "
                f"{print_}, which {first} does not have. Someone may be intercepting the "
                f"connection, or the machine was reinstalled. If you are sure, remove the old "
                f"entry with `ssh-keygen -R '{name}' -f {first}` and trust the new key.",
            )


_PARSED: dict[Path, tuple[tuple[int, int], paramiko.HostKeys]] = {}
_PARSED_LOCK = threading.Lock()


def _parsed(path: Path) -> paramiko.HostKeys | None:
    """``path`` parsed, once per version of the file: every connection asks twice (which
    key types to request, then whether the key is right), and a pool of N hosts makes N
    connections at once; a long known_hosts file costs milliseconds of the GIL each time."""
    try:
        info = path.stat()
    except OSError:
        return None
    version = (info.st_mtime_ns, info.st_size)
    with _PARSED_LOCK:
        cached = _PARSED.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
    keys = paramiko.HostKeys()
    keys.load(str(path))
    with _PARSED_LOCK:
        _PARSED[path] = (version, keys)
    return keys


@frozen
class PinnedHostKey:
    """Verify against one known public key (a host key the client generated)."""

    public_line: str

    def key_types(self, host: str, port: int) -> list[str]:
        return [self.public_line.split()[0]]

    def verify(self, host: str, port: int, key: paramiko.PKey) -> None:
        expected = _public_key(self.public_line)
        if expected.asbytes() != key.asbytes():
            name = known_hosts_name(host, port)
            raise HostKeyError(
                name,
                fingerprint(key),
                f"{name} presented host key {fingerprint(key)} but the key pinned for it is "
                f"{fingerprint(expected)}; refusing to connect",
            )
