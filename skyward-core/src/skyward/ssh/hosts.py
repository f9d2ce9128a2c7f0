"""Where to connect: ``"user@host:port"`` strings, :class:`SSHHost` objects, ssh_config aliases."""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path

from attrs import evolve, field, frozen

from skyward.errors import ConfigurationError

__all__ = ["SSHHost", "parse_host"]

_TARGET = re.compile(
    r"(?:(?P<user>[^@\s]+)@)?(?:\[(?P<ipv6>[^\]\s]+)\]|(?P<host>[^:@\s\[\]]+))(?::(?P<port>\d+))?"
)
# What may appear in a host name or user name: no whitespace, control characters, or the
# characters that would change how "user@host:port" or an ssh command line reads.
_NAME = re.compile(r"[^\s@/\\'\"`$;&|<>()]+")


def _port(_: object, __: object, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            "port", f"{value!r} is not a port number", "Use a whole number, e.g. port=22"
        )
    if not 0 < value < 65536:
        raise ConfigurationError("port", f"port {value} is out of range", "Use 1..65535")


def _host(_: object, __: object, value: str) -> None:
    text = value[1:-1] if isinstance(value, str) and value.startswith("[") else value
    if not isinstance(text, str) or not _NAME.fullmatch(text):
        raise ConfigurationError(
            "host", f"{value!r} is not a host name or address", 'Use e.g. "10.0.0.5"'
        )


def _user(_: object, __: object, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
        raise ConfigurationError("user", f"{value!r} is not a user name", 'Use e.g. "ubuntu"')


def _identity(_: object, __: object, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip() or "\x00" in value):
        raise ConfigurationError(
            "identity_file", f"{value!r} is not a file path", 'Use e.g. "~/.ssh/id_ed25519"'
        )


def _jump(_: object, __: object, value: SSHHost | None) -> None:
    if value is not None and not isinstance(value, SSHHost):
        raise ConfigurationError(
            "jump", f"{value!r} is not an SSHHost", 'Use jump=sky.SSHHost("bastion")'
        )


def _fspath(value: object) -> object:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


@frozen
class SSHHost:
    """One machine reachable over SSH.

    ``None`` fields are filled from ``~/.ssh/config`` (for a host alias), then from
    defaults: the current user, port 22, and the keys ssh would try.
    """

    host: str = field(validator=_host)
    """Hostname, address, or an alias from ``~/.ssh/config``."""
    user: str | None = field(default=None, validator=_user)
    port: int | None = field(default=None, validator=_port)
    identity_file: str | None = field(default=None, converter=_fspath, validator=_identity)
    """Private key to authenticate with; the ssh-agent and default keys otherwise."""
    jump: SSHHost | None = field(default=None, validator=_jump)
    """A bastion to reach ``host`` through (like ``ProxyJump``)."""

    @property
    def target(self) -> str:
        """``user@host:port`` as given (for messages)."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{user}{host}{port}"

    def resolved(self, config_path: Path | None = None) -> SSHHost:
        """Apply ``~/.ssh/config`` (HostName, User, Port, IdentityFile, ProxyJump)."""
        path = config_path or Path.home() / ".ssh" / "config"
        found: dict[str, object] = {}
        if path.exists():
            import paramiko  # client-side only: nodes never resolve hosts

            config = paramiko.SSHConfig.from_path(str(path))
            found = dict(config.lookup(self.host))
        hostname = str(found.get("hostname", self.host))
        user = self.user or _str(found.get("user")) or getpass.getuser()
        port = self.port or int(str(found.get("port", 22)))
        identity = self.identity_file
        if identity is None and "identityfile" in found:
            files = found["identityfile"]
            if isinstance(files, list) and files:
                identity = os.path.expanduser(str(files[0]))
        jump = self.jump
        if jump is None and found.get("proxyjump"):
            jump = parse_host(str(found["proxyjump"]).split(",")[0])
        if jump is not None:
            jump = jump.resolved(config_path)
        return evolve(self, host=hostname, user=user, port=port, identity_file=identity, jump=jump)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_host(value: str | SSHHost) -> SSHHost:
    """``"user@host:port"`` (any part but host optional; ``[::1]:22`` for IPv6) → SSHHost."""
    if isinstance(value, SSHHost):
        return value
    if not isinstance(value, str):
        raise ConfigurationError(
            "hosts", f"{value!r} is not a host", 'Use "user@host:port" or sky.SSHHost(...)'
        )
    match = _TARGET.fullmatch(value.strip())
    if match is None:
        raise ConfigurationError(
            "hosts", f"{value!r} is not user@host:port", 'Use e.g. "ubuntu@10.0.0.5:22"'
        )
    port = int(match["port"]) if match["port"] else None
    try:
        return SSHHost(host=match["ipv6"] or match["host"], user=match["user"], port=port)
    except ConfigurationError as error:  # the user wrote a string: name the list it was in
        raise ConfigurationError("hosts", f"{value!r}: {error.problem}", error.fix) from None
